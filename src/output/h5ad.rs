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

use super::zarr::{Sink, ZarrType};

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

/// A dataset: name, values, shape, attributes.
type Dataset = (String, H5Data, Vec<u64>, Attrs);

#[derive(Default)]
struct Node {
    attrs: Attrs,
    datasets: Vec<Dataset>,
    groups: BTreeMap<String, Node>,
}

/// An h5ad file being built in memory.
#[derive(Default)]
pub struct H5adFile {
    root: Node,
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

    /// Writes the file to `path`.
    pub fn write(self, path: &Path) -> Result<()> {
        let mut file = FileBuilder::new();
        for (k, v) in self.root.attrs {
            file.set_attr(&k, v);
        }
        for (name, data, shape, a) in &self.root.datasets {
            let d = file.create_dataset(name);
            fill(d, data, shape, a);
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
    for (k, v) in a {
        d.set_attr(k, v.clone());
    }
}

fn build(g: &mut hdf5_pure::GroupBuilder, node: Node) {
    for (k, v) in node.attrs {
        g.set_attr(&k, v);
    }
    for (name, data, shape, a) in &node.datasets {
        let d = g.create_dataset(name);
        fill(d, data, shape, a);
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
        let a = attrs(&attributes)?;
        let parts = split(node);
        let (name, parent) = parts
            .split_last()
            .ok_or_else(|| anyhow!("h5ad: a dataset needs a name"))?;
        let parent = self.node(parent);
        parent
            .datasets
            .push((name.to_string(), T::h5(data), shape.to_vec(), a));
        Ok(())
    }
}
