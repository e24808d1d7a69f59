//! `cells.h5ad`: the AnnData as HDF5, readable by `anndata.read_h5ad`,
//! written by `hdf5-pure` (pure Rust: no libhdf5, no build step, so the
//! README's commands need only the Rust toolchain). The same writer as the
//! zarr AnnData ([`super::anndata::AnnData::write_to`]) fills a tree here,
//! which becomes the file at the end; strings are variable-length UTF-8.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use hdf5_pure::{AttrValue, FileBuilder};
use serde_json::Value;

use super::zarr::{Column, ColumnFile, Fixed, Sink, ZarrType, COLUMN_BLOCK};

/// Values of one HDF5 dataset.
#[derive(Debug, Clone)]
pub enum H5Data {
    /// float32.
    F32(Vec<f32>),
    /// float64.
    F64(Vec<f64>),
    /// int64.
    I64(Vec<i64>),
    /// int32.
    I32(Vec<i32>),
    /// int8.
    I8(Vec<i8>),
    /// Variable-length UTF-8 strings.
    Str(Vec<String>),
}

/// Attributes of a group or dataset.
type Attrs = Vec<(String, AttrValue)>;

/// A dataset: name, values, shape, attributes, and for one whose values
/// are appended later its chunk length.
type Dataset = (String, H5Data, Vec<u64>, Attrs, Option<u64>);

#[derive(Default)]
struct Node {
    attrs: Attrs,
    datasets: Vec<Dataset>,
    groups: BTreeMap<String, Node>,
}

/// An h5ad file being built in memory, but for its [`Column`]s: those are
/// created empty (chunked, extensible) and their values appended a block
/// at a time once the file is written.
#[derive(Default)]
pub struct H5adFile {
    root: Node,
    appended: Vec<Appended>,
}

/// A column's values to append after the file is written: its dataset
/// path, and the values as little-endian bytes in memory or in a file.
struct Appended {
    path: String,
    values: AppendedValues,
}

enum AppendedValues {
    F32(Held),
    F64(Held),
    I8(Held),
    I32(Held),
    I64(Held),
}

enum Held {
    Memory(Vec<u8>),
    File(ColumnFile),
}

/// Values per chunk of an appended dataset (fewer for a shorter column:
/// a chunk takes its whole size on disk). At most 0xFFFF: hdf5-pure
/// encodes a larger chunk length in 4 bytes where libhdf5 expects the
/// fewest (3), and h5py then refuses the dataset.
const APPEND_CHUNK: u64 = 1 << 15;

/// The values of `held` (little-endian `T`), a block at a time.
fn each_block<T: Fixed>(held: &Held, mut block: impl FnMut(&[T]) -> Result<()>) -> Result<()> {
    match held {
        Held::Memory(bytes) => {
            let mut values = Vec::new();
            for part in bytes.chunks(COLUMN_BLOCK * T::BYTES) {
                values.clear();
                values.extend(part.chunks_exact(T::BYTES).map(T::get));
                block(&values)?;
            }
            Ok(())
        }
        Held::File(file) => Column::<T>::File(file).each_block(COLUMN_BLOCK, block),
    }
}

fn attrs(value: &Value) -> Result<Attrs> {
    let Some(map) = value.as_object() else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(k, v)| {
            let a = match v {
                Value::String(s) => AttrValue::String(s.clone()),
                Value::Bool(b) => AttrValue::I8(i8::from(*b)),
                Value::Number(n) => AttrValue::I64(
                    n.as_i64()
                        .ok_or_else(|| anyhow!("h5ad attribute {k}: {n} is not an integer"))?,
                ),
                Value::Array(items) if items.iter().all(Value::is_string) => {
                    AttrValue::StringArray(
                        items
                            .iter()
                            .filter_map(|i| i.as_str().map(str::to_string))
                            .collect(),
                    )
                }
                Value::Array(items) => AttrValue::I64Array(
                    items
                        .iter()
                        .map(|i| {
                            i.as_i64()
                                .ok_or_else(|| anyhow!("h5ad attribute {k}: {i} is not an integer"))
                        })
                        .collect::<Result<_>>()?,
                ),
                other => return Err(anyhow!("h5ad attribute {k}: {other} is not supported")),
            };
            Ok((k.clone(), a))
        })
        .collect()
}

impl H5adFile {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    fn node(&mut self, path: &[&str]) -> &mut Node {
        let mut node = &mut self.root;
        for part in path {
            node = node.groups.entry(part.to_string()).or_default();
        }
        node
    }

    /// Dataset `node` (`/a/b`) of `data`, `shape` and `attributes`;
    /// `chunk`: see [`Dataset`].
    fn add_dataset(
        &mut self,
        node: &str,
        data: H5Data,
        shape: Vec<u64>,
        attributes: &Value,
        chunk: Option<u64>,
    ) -> Result<()> {
        let a = attrs(attributes)?;
        let parts = split(node);
        let (name, parent) = parts
            .split_last()
            .ok_or_else(|| anyhow!("h5ad: a dataset needs a name"))?;
        self.node(parent)
            .datasets
            .push((name.to_string(), data, shape, a, chunk));
        Ok(())
    }

    /// Writes the file to `path`, then appends the columns' values.
    pub fn write(mut self, path: &Path) -> Result<()> {
        let appended = std::mem::take(&mut self.appended);
        self.write_tree(path)?;
        if appended.is_empty() {
            return Ok(());
        }
        let cannot = |e: hdf5_pure::Error| anyhow!("cannot write {}: {e}", path.display());
        let file = hdf5_pure::File::open_rw_with_options(
            path,
            hdf5_pure::FileAccessProperties::new()
                .with_memory_strategy(hdf5_pure::MemoryStrategy::Bounded)
                .with_sync_policy(hdf5_pure::SyncPolicy::OnClose),
        )
        .map_err(cannot)?;
        for column in &appended {
            let mut dataset = file.dataset(&column.path).map_err(cannot)?;
            match &column.values {
                AppendedValues::F32(held) => {
                    each_block::<f32>(held, |v| dataset.append(v).map_err(cannot))?
                }
                AppendedValues::F64(held) => {
                    each_block::<f64>(held, |v| dataset.append(v).map_err(cannot))?
                }
                AppendedValues::I8(held) => {
                    each_block::<i8>(held, |v| dataset.append(v).map_err(cannot))?
                }
                AppendedValues::I32(held) => {
                    each_block::<i32>(held, |v| dataset.append(v).map_err(cannot))?
                }
                AppendedValues::I64(held) => {
                    each_block::<i64>(held, |v| dataset.append(v).map_err(cannot))?
                }
            }
        }
        file.close().map_err(cannot)
    }

    fn write_tree(self, path: &Path) -> Result<()> {
        let mut file = FileBuilder::new();
        for (k, v) in self.root.attrs {
            file.set_attr(&k, v);
        }
        for (name, data, shape, a, chunk) in &self.root.datasets {
            let d = file.create_dataset(name);
            fill(d, data, shape, a, *chunk);
        }
        for (name, node) in self.root.groups {
            let mut g = file.create_group(&name);
            build(&mut g, node);
            file.add_group(g.finish());
        }
        file.write(path)
            .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
    }
}

fn fill(
    d: &mut hdf5_pure::DatasetBuilder,
    data: &H5Data,
    shape: &[u64],
    a: &[(String, AttrValue)],
    chunk: Option<u64>,
) {
    match data {
        H5Data::F32(v) => d.with_f32_data(v),
        H5Data::F64(v) => d.with_f64_data(v),
        H5Data::I64(v) => d.with_i64_data(v),
        H5Data::I32(v) => d.with_i32_data(v),
        H5Data::I8(v) => d.with_i8_data(v),
        H5Data::Str(v) => {
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            d.with_vlen_strings(&refs)
        }
    };
    d.with_shape(shape);
    if let Some(chunk) = chunk {
        d.with_maxshape(&[hdf5_pure::MaxExtent::Unlimited])
            .with_chunks(&[chunk]);
    }
    for (k, v) in a {
        d.set_attr(k, v.clone());
    }
}

fn build(g: &mut hdf5_pure::GroupBuilder, node: Node) {
    for (k, v) in node.attrs {
        g.set_attr(&k, v);
    }
    for (name, data, shape, a, chunk) in &node.datasets {
        let d = g.create_dataset(name);
        fill(d, data, shape, a, *chunk);
    }
    for (name, child) in node.groups {
        let mut sub = g.create_group(&name);
        build(&mut sub, child);
        g.add_group(sub.finish());
    }
}

fn split(node: &str) -> Vec<&str> {
    node.split('/').filter(|p| !p.is_empty()).collect()
}

impl Sink for H5adFile {
    fn group(&mut self, node: &str, attributes: Value) -> Result<()> {
        let a = attrs(&attributes)?;
        let parts = split(node);
        self.node(&parts).attrs = a;
        Ok(())
    }

    fn array<T: ZarrType>(
        &mut self,
        node: &str,
        shape: &[u64],
        data: &[T],
        attributes: Value,
    ) -> Result<()> {
        self.add_dataset(node, T::h5(data), shape.to_vec(), &attributes, None)
    }

    fn column<T: Fixed>(
        &mut self,
        node: &str,
        column: &Column<'_, T>,
        attributes: Value,
    ) -> Result<()> {
        let held = match column {
            Column::Memory(values) => {
                let mut bytes = Vec::with_capacity(values.len() * T::BYTES);
                for &v in values.iter() {
                    v.put(&mut bytes);
                }
                Held::Memory(bytes)
            }
            Column::File(file) => Held::File((*file).clone()),
        };
        let values = match T::NAME {
            "float32" => AppendedValues::F32(held),
            "float64" => AppendedValues::F64(held),
            "int8" => AppendedValues::I8(held),
            "int32" => AppendedValues::I32(held),
            "int64" => AppendedValues::I64(held),
            other => return Err(anyhow!("h5ad: no appended dataset of {other}")),
        };
        let chunk = column.len().clamp(1, APPEND_CHUNK);
        self.add_dataset(node, T::h5(&[]), vec![0], &attributes, Some(chunk))?;
        self.appended.push(Appended {
            path: split(node).join("/"),
            values,
        });
        Ok(())
    }
}
