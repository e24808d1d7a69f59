//! `segmentation.zarr`: a SpatialData store (container format 0.2, Zarr
//! v3) with `points/transcripts` (every input row with its assignment),
//! `shapes/cell_boundaries` (the cell polygons, indexed by cell id) and
//! `tables/table` (the AnnData, annotating the shapes by `obs.cell_id`,
//! with `region` categorical and `uns/spatialdata_attrs`, the two things
//! spatialdata needs to link them; proseg's writer learnt both).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, DictionaryArray, UInt32Array};
use arrow::datatypes::UInt32Type;
use serde_json::{json, Value};

use super::anndata::{self, AnnData, REGION};
use super::cells::OutputCells;
use super::zarr::ZarrStore;
use super::CellRow;
use crate::io::Transcripts;
use crate::pipeline::Segmentation;

/// Name of the points element.
pub const POINTS: &str = "transcripts";
/// Name of the table element.
pub const TABLE: &str = "table";

/// An identity transformation of `axes` to the `global` coordinate system.
fn identity(axes: &[&str]) -> Value {
    let list: Vec<Value> = axes
        .iter()
        .map(|a| json!({"name": a, "type": "space", "unit": "unit"}))
        .collect();
    json!([{
        "type": "identity",
        "input": {"name": axes.concat(), "axes": list},
        "output": {"name": "global", "axes": list},
    }])
}

/// Writes the store at `path` (which must not exist) from a run held in memory.
pub fn write(
    path: &Path,
    passthrough: &[(String, ArrayRef)],
    result: &Segmentation,
    transcripts: &Transcripts,
    cells: &OutputCells,
    table: &AnnData,
) -> Result<()> {
    let columns = points_columns(
        super::transcript_columns(passthrough, result),
        &transcripts.gene,
        &transcripts.gene_names,
    )?;
    let (store, part) = create(path, &column_names(&columns))?;
    super::write_parquet(&part, columns)?;
    finish(store, &result.cells, cells, table)
}

/// The names of `columns`.
pub fn column_names(columns: &[(String, ArrayRef)]) -> Vec<&str> {
    columns.iter().map(|(n, _)| n.as_str()).collect()
}

/// The columns of the points element: those of the transcripts table with
/// `gene` as a categorical (codes `gene` into `gene_names`).
pub fn points_columns(
    mut columns: Vec<(String, ArrayRef)>,
    gene: &[u32],
    gene_names: &[String],
) -> Result<Vec<(String, ArrayRef)>> {
    let gene: ArrayRef = Arc::new(DictionaryArray::<UInt32Type>::try_new(
        UInt32Array::from(gene.to_vec()),
        Arc::new(arrow::array::StringArray::from_iter_values(gene_names)),
    )?);
    for (name, column) in columns.iter_mut() {
        if name == "gene" {
            *column = gene.clone();
        }
    }
    Ok(columns)
}

/// Creates the store at `path` (which must not exist) with its groups, the
/// points element's for a table of the columns named `columns`; returns
/// the store and the path its points parquet file is to be written to.
pub fn create(path: &Path, columns: &[&str]) -> Result<(ZarrStore, PathBuf)> {
    let store = ZarrStore::create(path, json!({"spatialdata_attrs": {"version": "0.2"}}))?;
    for element in ["points", "shapes", "tables"] {
        store.group(&format!("/{element}"), json!({}))?;
    }
    let axes: Vec<&str> = ["x", "y", "z"]
        .into_iter()
        .filter(|a| columns.contains(a))
        .collect();
    store.group(
        &format!("/points/{POINTS}"),
        json!({
            "encoding-type": "ngff:points",
            "axes": axes,
            "coordinateTransformations": identity(&axes),
            "spatialdata_attrs": {"feature_key": "gene", "version": "0.2"},
        }),
    )?;
    let parts = path.join("points").join(POINTS).join("points.parquet");
    std::fs::create_dir(&parts).with_context(|| format!("cannot create {}", parts.display()))?;
    Ok((store, parts.join("part.0.parquet")))
}

/// The pandas metadata of the shapes' columns: the cell id as the index.
fn pandas_metadata(columns: &[(String, ArrayRef)]) -> Value {
    json!({
        "index_columns": ["cell_id"],
        "column_indexes": [],
        "columns": columns.iter().map(|(name, array)| {
            let (pandas_type, numpy_type) = match array.data_type() {
                arrow::datatypes::DataType::Utf8 => ("unicode", "object"),
                arrow::datatypes::DataType::UInt64 => ("uint64", "uint64"),
                arrow::datatypes::DataType::Float64 => ("float64", "float64"),
                _ => ("bytes", "object"),
            };
            json!({
                "name": name, "field_name": name, "pandas_type": pandas_type,
                "numpy_type": numpy_type, "metadata": null,
            })
        }).collect::<Vec<_>>(),
    })
}

/// Writes the shapes and the table into a store made by [`create`] whose
/// points are written; `rows` are the rows of `cells.parquet`.
pub fn finish(
    mut store: ZarrStore,
    rows: &[CellRow],
    cells: &OutputCells,
    table: &AnnData,
) -> Result<()> {
    let path = store.path().to_path_buf();
    // Shapes: the GeoParquet columns, the cell id as the pandas index.
    store.group(
        &format!("/shapes/{REGION}"),
        json!({
            "encoding-type": "ngff:shapes",
            "axes": ["x", "y"],
            "coordinateTransformations": identity(&["x", "y"]),
            "spatialdata_attrs": {"version": "0.3"},
        }),
    )?;
    super::boundaries::write_polygon_parquet(
        &path.join("shapes").join(REGION).join("shapes.parquet"),
        rows,
        cells,
        Some(pandas_metadata),
    )?;

    // The table.
    let root = format!("/tables/{TABLE}");
    table.write_to(
        &mut store,
        &root,
        json!({
            "spatialdata-encoding-type": "ngff:regions_table",
            "region": REGION,
            "region_key": "region",
            "instance_key": "cell_id",
            "version": "0.2",
        }),
    )?;
    anndata::write_spatialdata_attrs(&mut store, &root)
}
