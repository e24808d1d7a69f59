//! Cell polygons as GeoParquet 1.1 (`cell_boundaries.parquet`) and GeoJSON
//! (`cell_boundaries.geojson`). Coordinates are µm in the transcripts'
//! frame, so the CRS is null (not longitude/latitude).

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, BinaryArray, Float64Array, StringArray, UInt64Array};
use parquet::file::metadata::KeyValue;

use super::cells::OutputCells;
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

/// WKB (little-endian) of every output cell's polygon.
pub fn polygon_wkb(cells: &OutputCells) -> Result<Vec<Vec<u8>>> {
    cells
        .polygons
        .iter()
        .map(|p| {
            let mut bytes = Vec::new();
            wkb::writer::write_polygon(&mut bytes, &p.polygon, &Default::default())
                .map_err(|e| anyhow::anyhow!("cannot encode a polygon as WKB: {e}"))?;
            Ok(bytes)
        })
        .collect()
}

/// The columns `cell_id`, `kind`, `n_transcripts`, `area`, `geometry`;
/// `rows` are the rows of `cells.parquet`.
pub fn boundary_columns(rows: &[CellRow], cells: &OutputCells) -> Result<Vec<(String, ArrayRef)>> {
    let wkb = polygon_wkb(cells)?;
    Ok(vec![
        (
            "cell_id".into(),
            Arc::new(StringArray::from_iter_values(
                cells.index.iter().map(|&c| rows[c].id.as_str()),
            )),
        ),
        (
            "kind".into(),
            Arc::new(StringArray::from_iter_values(
                cells.index.iter().map(|&c| rows[c].kind),
            )),
        ),
        (
            "n_transcripts".into(),
            Arc::new(UInt64Array::from_iter_values(
                cells.index.iter().map(|&c| rows[c].n_transcripts),
            )),
        ),
        (
            "area".into(),
            Arc::new(Float64Array::from_iter_values(
                (0..cells.len()).map(|i| cells.area(i)),
            )),
        ),
        (
            "geometry".into(),
            Arc::new(BinaryArray::from_iter_values(wkb.iter())),
        ),
    ])
}

/// Writes `cell_boundaries.parquet`.
pub fn write_geoparquet(path: &Path, rows: &[CellRow], cells: &OutputCells) -> Result<()> {
    let metadata = vec![KeyValue::new("geo".to_string(), geo_metadata().to_string())];
    super::write_parquet_with(path, boundary_columns(rows, cells)?, metadata)
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
    for (i, &c) in cells.index.iter().enumerate() {
        let row = &rows[c];
        let ring: Vec<[f64; 2]> = cells.polygons[i]
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
    w.write_all(b"\n]}\n").with_context(cannot)?;
    w.flush().with_context(cannot)?;
    Ok(())
}
