//! Cell polygons as GeoParquet 1.1 (`cell_boundaries.parquet`) and GeoJSON
//! (`cell_boundaries.geojson`). Coordinates are µm in the transcripts'
//! frame, so the CRS is null (not longitude/latitude).

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, BinaryArray, Float64Array, StringArray, UInt64Array};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;

use super::cells::{OutputCells, POLYGON_BLOCK};
use super::polygons::CellPolygon;
use super::CellRow;

/// The `geo` file metadata of GeoParquet 1.1 for one WKB polygon column.
pub fn geo_metadata() -> serde_json::Value {
    serde_json::json!({
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "crs": null
            }
        }
    })
}

/// WKB (little-endian) of `polygons`.
fn polygon_wkb(polygons: &[CellPolygon]) -> Result<Vec<Vec<u8>>> {
    polygons
        .iter()
        .map(|p| {
            let mut bytes = Vec::new();
            wkb::writer::write_polygon(&mut bytes, &p.polygon, &Default::default())
                .map_err(|e| anyhow::anyhow!("cannot encode a polygon as WKB: {e}"))?;
            Ok(bytes)
        })
        .collect()
}

/// The columns `cell_id`, `kind`, `n_transcripts`, `area`, `geometry` of
/// the output cells `first..` with `polygons`; `rows` are the rows of
/// `cells.parquet`.
fn boundary_columns(
    rows: &[CellRow],
    cells: &OutputCells,
    first: usize,
    polygons: &[CellPolygon],
) -> Result<Vec<(String, ArrayRef)>> {
    let wkb = polygon_wkb(polygons)?;
    let here = first..first + polygons.len();
    let index = &cells.index[here.clone()];
    Ok(vec![
        (
            "cell_id".into(),
            Arc::new(StringArray::from_iter_values(
                index.iter().map(|&c| rows[c].id.as_str()),
            )),
        ),
        (
            "kind".into(),
            Arc::new(StringArray::from_iter_values(
                index.iter().map(|&c| rows[c].kind),
            )),
        ),
        (
            "n_transcripts".into(),
            Arc::new(UInt64Array::from_iter_values(
                index.iter().map(|&c| rows[c].n_transcripts),
            )),
        ),
        (
            "area".into(),
            Arc::new(Float64Array::from_iter_values(here.map(|i| cells.area(i)))),
        ),
        (
            "geometry".into(),
            Arc::new(BinaryArray::from_iter_values(wkb.iter())),
        ),
    ])
}

/// The pandas metadata of a table's columns.
pub type PandasMetadata = fn(&[(String, ArrayRef)]) -> serde_json::Value;

/// Writes the polygons of the output cells as GeoParquet to `path`, a row
/// group per block of [`POLYGON_BLOCK`] cells, with file `metadata`
/// besides `geo`; `pandas` gives the pandas metadata of the columns.
pub fn write_polygon_parquet(
    path: &Path,
    rows: &[CellRow],
    cells: &OutputCells,
    pandas: Option<PandasMetadata>,
) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut file = Some(BufWriter::new(file));
    let mut writer: Option<ArrowWriter<BufWriter<std::fs::File>>> = None;
    let cannot = || format!("cannot write {}", path.display());
    let mut write = |columns: Vec<(String, ArrayRef)>| -> Result<()> {
        let schema = super::schema_of(&columns);
        let batch = RecordBatch::try_new(
            schema.clone(),
            columns.iter().map(|(_, a)| a.clone()).collect(),
        )
        .with_context(cannot)?;
        if writer.is_none() {
            let mut metadata = vec![KeyValue::new("geo".to_string(), geo_metadata().to_string())];
            if let Some(pandas) = pandas {
                metadata.push(KeyValue::new(
                    "pandas".to_string(),
                    pandas(&columns).to_string(),
                ));
            }
            let properties = super::parquet_properties(POLYGON_BLOCK, metadata)?;
            let Some(out) = file.take() else {
                anyhow::bail!("internal: {} opened twice", path.display());
            };
            writer =
                Some(ArrowWriter::try_new(out, schema, Some(properties)).with_context(cannot)?);
        }
        match writer.as_mut() {
            Some(w) => w.write(&batch).with_context(cannot),
            None => anyhow::bail!("internal: no writer for {}", path.display()),
        }
    };
    if cells.is_empty() {
        write(boundary_columns(rows, cells, 0, &[])?)?;
    }
    cells.each_block(|first, polygons| write(boundary_columns(rows, cells, first, polygons)?))?;
    if let Some(w) = writer {
        w.close()
            .with_context(|| format!("cannot finish {}", path.display()))?;
    }
    Ok(())
}

/// Writes `cell_boundaries.parquet`.
pub fn write_geoparquet(path: &Path, rows: &[CellRow], cells: &OutputCells) -> Result<()> {
    write_polygon_parquet(path, rows, cells, None)
}

/// Writes `cell_boundaries.geojson`: a FeatureCollection, one Polygon
/// feature per output cell with properties `cell_id`, `kind`,
/// `n_transcripts` and `area`.
pub fn write_geojson(path: &Path, rows: &[CellRow], cells: &OutputCells) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::new(file);
    let cannot = || format!("cannot write {}", path.display());
    w.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[\n")
        .with_context(cannot)?;
    cells.each_block(|first, polygons| {
        for (k, polygon) in polygons.iter().enumerate() {
            let i = first + k;
            let row = &rows[cells.index[i]];
            let ring: Vec<[f64; 2]> = polygon
                .polygon
                .exterior()
                .coords()
                .map(|p| [p.x, p.y])
                .collect();
            let feature = serde_json::json!({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "cell_id": row.id,
                    "kind": row.kind,
                    "n_transcripts": row.n_transcripts,
                    "area": cells.area(i),
                }
            });
            if i > 0 {
                w.write_all(b",\n").with_context(cannot)?;
            }
            serde_json::to_writer(&mut w, &feature).with_context(cannot)?;
        }
        Ok(())
    })?;
    w.write_all(b"\n]}\n").with_context(cannot)?;
    w.flush().with_context(cannot)?;
    Ok(())
}
