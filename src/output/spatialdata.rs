//! `segmentation.zarr`: a SpatialData store (container format 0.2, Zarr
//! v3) with `points/transcripts` (every input row with its assignment),
//! `shapes/cell_boundaries` (the cell polygons, indexed by cell id) and
//! `tables/table` (the AnnData, annotating the shapes by `obs.cell_id`,
//! with `region` categorical and `uns/spatialdata_attrs`, the two things
//! spatialdata needs to link them; proseg's writer learnt both).

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use arrow::array::{ArrayRef, DictionaryArray, UInt32Array};
use arrow::datatypes::UInt32Type;
use parquet::file::metadata::KeyValue;
use serde_json::{json, Value};

use super::anndata::{self, AnnData, REGION};
use super::cells::OutputCells;
use super::zarr::ZarrStore;
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

/// Writes the store at `path` (which must not exist).
pub fn write(
    path: &Path,
    passthrough: &[(String, ArrayRef)],
    result: &Segmentation,
    transcripts: &Transcripts,
    cells: &OutputCells,
    table: &AnnData,
) -> Result<()> {
    let mut store = ZarrStore::create(path, json!({"spatialdata_attrs": {"version": "0.2"}}))?;
    for element in ["points", "shapes", "tables"] {
        store.group(&format!("/{element}"), json!({}))?;
    }

    // Points: the transcripts table, gene as a categorical.
    let mut columns = super::transcript_columns(passthrough, result);
    let gene = DictionaryArray::<UInt32Type>::try_new(
        UInt32Array::from(transcripts.gene.clone()),
        Arc::new(arrow::array::StringArray::from_iter_values(
            transcripts.gene_names.iter(),
        )),
    )?;
    for (name, column) in columns.iter_mut() {
        if name == "gene" {
            *column = Arc::new(gene.clone());
        }
    }
    let axes: Vec<&str> = ["x", "y", "z"]
        .into_iter()
        .filter(|a| columns.iter().any(|(n, _)| n == a))
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
    std::fs::create_dir(&parts)?;
    super::write_parquet(&parts.join("part.0.parquet"), columns)?;

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
    let shape_columns = super::boundaries::boundary_columns(result, cells)?;
    let pandas = json!({
        "index_columns": ["cell_id"],
        "column_indexes": [],
        "columns": shape_columns.iter().map(|(name, array)| {
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
    });
    super::write_parquet_with(
        &path.join("shapes").join(REGION).join("shapes.parquet"),
        shape_columns,
        vec![
            KeyValue::new(
                "geo".to_string(),
                super::boundaries::geo_metadata().to_string(),
            ),
            KeyValue::new("pandas".to_string(), pandas.to_string()),
        ],
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
