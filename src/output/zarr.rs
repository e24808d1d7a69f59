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
        let array = Array::new_with_metadata(self.store.clone(), node, metadata.into())
            .with_context(|| self.err(node))?;
        if shape.iter().all(|&n| n > 0) {
            array
                .store_array_subset_elements(&array.subset_all(), data)
                .with_context(|| self.err(node))?;
        }
        array.store_metadata().with_context(|| self.err(node))?;
        Ok(())
    }
}

/// Reads a whole array of a store (for tests and checks).
pub fn read_array<T: zarrs::array::ElementOwned>(store: &Path, node: &str) -> Result<Vec<T>> {
    let store = Arc::new(FilesystemStore::new(store)?);
    let array = Array::open(store, node).with_context(|| format!("cannot open array {node}"))?;
    Ok(array.retrieve_array_subset_elements::<T>(&array.subset_all())?)
}
