//! A thin layer over `zarrs` for the Zarr v3 stores seggpu writes: groups
//! with attributes, and one-chunk arrays of numbers or strings, with the
//! metadata spelled as zarr-python 3 / anndata 0.12 / spatialdata 0.7 write
//! it (uncompressed: the stores are small next to the transcripts table).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use zarrs::array::{Array, Element};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::Group;

/// A Zarr v3 store on disk being written.
pub struct ZarrStore {
    store: Arc<FilesystemStore>,
    path: std::path::PathBuf,
}

/// A data type of an array this writer knows (zarr and h5ad).
pub trait ZarrType: Element {
    /// The Zarr v3 `data_type` name.
    const NAME: &'static str;
    /// The fill value in the metadata.
    fn fill() -> Value;
    /// The values as HDF5 data.
    fn h5(data: &[Self]) -> super::h5ad::H5Data;
}

macro_rules! zarr_number {
    ($t:ty, $name:literal, $fill:expr, $h5:ident) => {
        impl ZarrType for $t {
            const NAME: &'static str = $name;
            fn fill() -> Value {
                json!($fill)
            }
            fn h5(data: &[Self]) -> super::h5ad::H5Data {
                super::h5ad::H5Data::$h5(data.to_vec())
            }
        }
    };
}
zarr_number!(f32, "float32", "NaN", F32);
zarr_number!(f64, "float64", "NaN", F64);
zarr_number!(i64, "int64", 0, I64);
zarr_number!(i32, "int32", 0, I32);
zarr_number!(i8, "int8", 0, I8);

impl ZarrType for String {
    const NAME: &'static str = "string";
    fn fill() -> Value {
        json!("")
    }
    fn h5(data: &[Self]) -> super::h5ad::H5Data {
        super::h5ad::H5Data::Str(data.to_vec())
    }
}

/// A number type of the large 1-D arrays ([`Column`]): little-endian bytes
/// in a file, appended to an HDF5 dataset in blocks.
pub trait Fixed: ZarrType + hdf5_pure::H5Element + Copy {
    /// Bytes of one value.
    const BYTES: usize;
    /// Appends the value's little-endian bytes.
    fn put(self, out: &mut Vec<u8>);
    /// The value of `BYTES` little-endian bytes.
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! fixed {
    ($t:ty) => {
        impl Fixed for $t {
            const BYTES: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                let mut b = [0u8; std::mem::size_of::<$t>()];
                b.copy_from_slice(bytes);
                <$t>::from_le_bytes(b)
            }
        }
    };
}
fixed!(f32);
fixed!(f64);
fixed!(i8);
fixed!(i32);
fixed!(i64);

/// Values handed to a writer per block, so that an array larger than
/// memory can be written: most of [`COLUMN_BLOCK`] values at a time.
pub const COLUMN_BLOCK: usize = 1 << 18;

/// The values of a 1-D array that may be too large to hold: in memory, or
/// in a file of little-endian values ([`ColumnFile`]).
pub enum Column<'a, T> {
    /// Held.
    Memory(&'a [T]),
    /// Spilled.
    File(&'a ColumnFile),
}

/// A file of little-endian values of one type, and how many.
#[derive(Debug, Clone)]
pub struct ColumnFile {
    /// The file.
    pub path: std::path::PathBuf,
    /// Values in it.
    pub len: u64,
}

impl<T: Fixed> Column<'_, T> {
    /// Number of values.
    pub fn len(&self) -> u64 {
        match self {
            Column::Memory(v) => v.len() as u64,
            Column::File(f) => f.len,
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `block` on consecutive blocks of at most `size` values, in order.
    pub fn each_block(&self, size: usize, mut block: impl FnMut(&[T]) -> Result<()>) -> Result<()> {
        match self {
            Column::Memory(values) => values.chunks(size.max(1)).try_for_each(block),
            Column::File(file) => {
                use std::io::Read;
                let cannot = || format!("cannot read {}", file.path.display());
                let mut reader = std::fs::File::open(&file.path).with_context(cannot)?;
                let mut left = file.len as usize;
                let mut bytes = Vec::new();
                let mut values = Vec::new();
                while left > 0 {
                    let n = left.min(size.max(1));
                    bytes.resize(n * T::BYTES, 0);
                    reader.read_exact(&mut bytes).with_context(cannot)?;
                    values.clear();
                    values.extend(bytes.chunks_exact(T::BYTES).map(T::get));
                    block(&values)?;
                    left -= n;
                }
                Ok(())
            }
        }
    }
}

/// Writes values to a [`ColumnFile`] as they come.
pub struct ColumnWriter<T> {
    file: ColumnFile,
    out: std::io::BufWriter<std::fs::File>,
    bytes: Vec<u8>,
    _type: std::marker::PhantomData<T>,
}

impl<T: Fixed> ColumnWriter<T> {
    /// Creates `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let out = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ColumnWriter {
            file: ColumnFile {
                path: path.to_path_buf(),
                len: 0,
            },
            out: std::io::BufWriter::new(out),
            bytes: Vec::new(),
            _type: std::marker::PhantomData,
        })
    }

    /// Appends `value`.
    pub fn push(&mut self, value: T) -> Result<()> {
        use std::io::Write;
        self.bytes.clear();
        value.put(&mut self.bytes);
        self.file.len += 1;
        self.out
            .write_all(&self.bytes)
            .with_context(|| format!("cannot write {}", self.file.path.display()))
    }

    /// Flushes and closes the file.
    pub fn finish(mut self) -> Result<ColumnFile> {
        use std::io::Write;
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.file.path.display()))?;
        Ok(self.file)
    }
}

/// Where the AnnData writer puts groups and arrays: a zarr store or an
/// h5ad file being built.
pub trait Sink {
    /// Group `node` (`/a/b`) with `attributes` (a JSON object).
    fn group(&mut self, node: &str, attributes: Value) -> Result<()>;
    /// Array `node` of `shape` (C order) with `data` and `attributes`.
    fn array<T: ZarrType>(
        &mut self,
        node: &str,
        shape: &[u64],
        data: &[T],
        attributes: Value,
    ) -> Result<()>;
    /// 1-D array `node` with the values of `column` and `attributes`,
    /// never held whole by the writer.
    fn column<T: Fixed>(
        &mut self,
        node: &str,
        column: &Column<'_, T>,
        attributes: Value,
    ) -> Result<()>;
}

impl Sink for ZarrStore {
    fn group(&mut self, node: &str, attributes: Value) -> Result<()> {
        ZarrStore::group(self, node, attributes)
    }
    fn array<T: ZarrType>(
        &mut self,
        node: &str,
        shape: &[u64],
        data: &[T],
        attributes: Value,
    ) -> Result<()> {
        ZarrStore::array(self, node, shape, data, attributes)
    }
    fn column<T: Fixed>(
        &mut self,
        node: &str,
        column: &Column<'_, T>,
        attributes: Value,
    ) -> Result<()> {
        ZarrStore::column(self, node, column, attributes)
    }
}

impl ZarrStore {
    /// Creates the store folder `path` (it must not exist yet) with a root
    /// group carrying `attributes`.
    pub fn create(path: &Path, attributes: Value) -> Result<Self> {
        std::fs::create_dir(path).with_context(|| format!("cannot create {}", path.display()))?;
        let store = Arc::new(
            FilesystemStore::new(path)
                .with_context(|| format!("cannot open {} as a zarr store", path.display()))?,
        );
        let s = ZarrStore {
            store,
            path: path.to_path_buf(),
        };
        s.group("/", attributes)?;
        Ok(s)
    }

    /// The store folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, node: &str) -> String {
        format!("cannot write {}{node}", self.path.display())
    }

    /// Writes group `node` (`/a/b`) with `attributes` (a JSON object).
    pub fn group(&self, node: &str, attributes: Value) -> Result<()> {
        let metadata = json!({
            "zarr_format": 3,
            "node_type": "group",
            "attributes": attributes,
        });
        let metadata = serde_json::from_value::<zarrs::metadata::v3::GroupMetadataV3>(metadata)
            .with_context(|| self.err(node))?;
        Group::new_with_metadata(self.store.clone(), node, metadata.into())
            .with_context(|| self.err(node))?
            .store_metadata()
            .with_context(|| self.err(node))?;
        Ok(())
    }

    /// Writes array `node` of `shape` (C order, one chunk) with `data` and
    /// `attributes`.
    pub fn array<T: ZarrType>(
        &self,
        node: &str,
        shape: &[u64],
        data: &[T],
        attributes: Value,
    ) -> Result<()> {
        let array = self.array_node::<T>(node, shape, attributes)?;
        if shape.iter().all(|&n| n > 0) {
            array
                .store_array_subset_elements(&array.subset_all(), data)
                .with_context(|| self.err(node))?;
        }
        array.store_metadata().with_context(|| self.err(node))?;
        Ok(())
    }

    /// Writes 1-D array `node` (one chunk) with the values of `column`,
    /// a block at a time: the chunk of the uncompressed little-endian
    /// `bytes` codec is the values' bytes, so it is written as they come.
    pub fn column<T: Fixed>(
        &self,
        node: &str,
        column: &Column<'_, T>,
        attributes: Value,
    ) -> Result<()> {
        use std::io::Write;
        let array = self.array_node::<T>(node, &[column.len()], attributes)?;
        if !column.is_empty() {
            let chunk = self.path.join(array.chunk_key(&[0]).as_str());
            let folder = chunk.parent().unwrap_or(&self.path);
            std::fs::create_dir_all(folder).with_context(|| self.err(node))?;
            let file = std::fs::File::create(&chunk).with_context(|| self.err(node))?;
            let mut out = std::io::BufWriter::new(file);
            let mut bytes = Vec::new();
            column.each_block(COLUMN_BLOCK, |values| {
                bytes.clear();
                for &v in values {
                    v.put(&mut bytes);
                }
                out.write_all(&bytes).with_context(|| self.err(node))
            })?;
            out.flush().with_context(|| self.err(node))?;
        }
        array.store_metadata().with_context(|| self.err(node))?;
        Ok(())
    }

    /// Array `node` of `shape` (C order, one chunk, not yet stored).
    fn array_node<T: ZarrType>(
        &self,
        node: &str,
        shape: &[u64],
        attributes: Value,
    ) -> Result<Array<FilesystemStore>> {
        let codecs = if T::NAME == "string" {
            json!([{"name": "vlen-utf8", "configuration": {}}])
        } else if std::mem::size_of::<T>() == 1 {
            json!([{"name": "bytes"}])
        } else {
            json!([{"name": "bytes", "configuration": {"endian": "little"}}])
        };
        let chunks: Vec<u64> = shape.iter().map(|&n| n.max(1)).collect();
        let metadata = json!({
            "zarr_format": 3,
            "node_type": "array",
            "shape": shape,
            "data_type": T::NAME,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": T::fill(),
            "codecs": codecs,
            "attributes": attributes,
        });
        let metadata = serde_json::from_value::<zarrs::metadata::v3::ArrayMetadataV3>(metadata)
            .with_context(|| self.err(node))?;
        Array::new_with_metadata(self.store.clone(), node, metadata.into())
            .with_context(|| self.err(node))
    }
}

/// Reads a whole array of a store (for tests and checks).
pub fn read_array<T: zarrs::array::ElementOwned>(store: &Path, node: &str) -> Result<Vec<T>> {
    let store = Arc::new(FilesystemStore::new(store)?);
    let array = Array::open(store, node).with_context(|| format!("cannot open array {node}"))?;
    Ok(array.retrieve_array_subset_elements::<T>(&array.subset_all())?)
}
