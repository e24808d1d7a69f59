//! The per-cell outputs of `seggpu segment` read back: the AnnData's X equals
//! the counts of `segger_transcripts.parquet` (in `cells.anndata.zarr` and in
//! the SpatialData table), every output lists the same cells, every polygon
//! is valid, degenerate cells get fallback polygons, `--table-format csv` and
//! `--outputs` write what they say.

use std::collections::BTreeMap;
use std::path::Path;

use geo::{Area, Validation};
use seggpu::output::zarr::read_array;

use crate::common::segment::{segment_cpu, simulated_input, xenium_crop_input};
use crate::common::tables::{primitives, read_parquet, strings};
use crate::common::{assert_success, demo_model, seggpu, write_file};

fn segment<S: AsRef<std::ffi::OsStr>>(input: &[S], out: &Path, extra: &[&str]) {
    assert_success(&segment_cpu(input, out, extra));
}

fn simulated(dir: &Path, cells: usize) -> std::path::PathBuf {
    let input = dir.join("input");
    let run = seggpu()
        .args([
            "simulate",
            "--cells",
            &cells.to_string(),
            "--seed",
            "5",
            "--out",
        ])
        .arg(&input)
        .output()
        .expect("run seggpu");
    assert_success(&run);
    input
}

fn log(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("segmentation_log.json")).unwrap()).unwrap()
}

/// (cell, gene) → count, from the transcripts table, for the cells of
/// cells.parquet with at least max(1, min_transcripts) transcripts; and
/// those cells in order.
fn expected_counts(out: &Path, min: u64) -> (Vec<String>, BTreeMap<(String, String), u64>) {
    let cells = read_parquet(&out.join("cells.parquet"));
    let ids = strings(&cells, "id");
    let n = primitives::<arrow::datatypes::UInt64Type>(&cells, "n_transcripts");
    let kept: Vec<String> = ids
        .into_iter()
        .zip(n)
        .filter(|(_, n)| *n >= min.max(1))
        .map(|(id, _)| id)
        .collect();
    let set: std::collections::HashSet<&String> = kept.iter().collect();
    let tx = read_parquet(&out.join("segger_transcripts.parquet"));
    let mut counts = BTreeMap::new();
    for (cell, gene) in strings(&tx, "segger_cell_id")
        .into_iter()
        .zip(strings(&tx, "gene"))
    {
        if set.contains(&cell) {
            *counts.entry((cell, gene)).or_insert(0) += 1;
        }
    }
    (kept, counts)
}

/// Reads X, obs names and var names of the AnnData in group `root` of
/// `store` and checks X against `expected`.
fn check_anndata(
    store: &Path,
    root: &str,
    cells: &[String],
    expected: &BTreeMap<(String, String), u64>,
) {
    let obs: Vec<String> = read_array(store, &format!("{root}/obs/_index")).unwrap();
    let var: Vec<String> = read_array(store, &format!("{root}/var/_index")).unwrap();
    let indptr: Vec<i64> = read_array(store, &format!("{root}/X/indptr")).unwrap();
    let indices: Vec<i32> = read_array(store, &format!("{root}/X/indices")).unwrap();
    let data: Vec<f32> = read_array(store, &format!("{root}/X/data")).unwrap();
    assert_eq!(obs, cells, "{}: obs = the output cells", store.display());
    assert_eq!(indptr.len(), obs.len() + 1);
    let mut got = BTreeMap::new();
    for (i, cell) in obs.iter().enumerate() {
        for k in indptr[i] as usize..indptr[i + 1] as usize {
            assert!(data[k] > 0.0 && data[k].fract() == 0.0, "X holds counts");
            let key = (cell.clone(), var[indices[k] as usize].clone());
            assert!(got.insert(key, data[k] as u64).is_none(), "entry twice");
        }
    }
    assert_eq!(
        &got,
        expected,
        "{}{root}: X = counts of segger_transcripts",
        store.display()
    );
}

/// Reads X, obs and var names of `cells.h5ad` back (pure-Rust HDF5
/// reader) and checks X against `expected`.
fn check_h5ad(path: &Path, cells: &[String], expected: &BTreeMap<(String, String), u64>) {
    let file = hdf5_pure::File::open(path).unwrap();
    let obs = file.dataset("obs/_index").unwrap().read_string().unwrap();
    let var = file.dataset("var/_index").unwrap().read_string().unwrap();
    let indptr = file.dataset("X/indptr").unwrap().read_i64().unwrap();
    let indices = file.dataset("X/indices").unwrap().read_i32().unwrap();
    let data = file.dataset("X/data").unwrap().read_f32().unwrap();
    assert_eq!(obs, cells, "h5ad obs = the output cells");
    let mut got = BTreeMap::new();
    for (i, cell) in obs.iter().enumerate() {
        for k in indptr[i] as usize..indptr[i + 1] as usize {
            got.insert(
                (cell.clone(), var[indices[k] as usize].clone()),
                data[k] as u64,
            );
        }
    }
    assert_eq!(&got, expected, "h5ad X = counts of segger_transcripts");
}

/// Decodes every polygon of a GeoParquet file, checks it is valid and
/// returns (cell_id, area) per row.
fn check_polygons(path: &Path) -> Vec<(String, f64)> {
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(path).unwrap())
            .unwrap();
    use parquet::file::reader::FileReader;
    let geo = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "geo").cloned())
        .and_then(|k| k.value)
        .expect("geo metadata");
    let geo: serde_json::Value = serde_json::from_str(&geo).unwrap();
    assert_eq!(
        geo,
        serde_json::json!({"version": "1.1.0", "primary_column": "geometry",
            "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": null}}})
    );
    let table = read_parquet(path);
    let names: Vec<String> = table
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        ["cell_id", "kind", "n_transcripts", "area", "geometry"]
    );
    let ids = strings(&table, "cell_id");
    let areas = primitives::<arrow::datatypes::Float64Type>(&table, "area");
    let wkb = table
        .column_by_name("geometry")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .unwrap()
        .clone();
    for (i, id) in ids.iter().enumerate() {
        let parts = seggpu::io::geometry::parse_wkb(wkb.value(i)).unwrap();
        assert_eq!(parts.len(), 1, "{id}: one part");
        assert_eq!(parts[0].holes, 0, "{id}: no hole");
        let ring = &parts[0].exterior;
        assert!(
            ring.len() >= 4 && ring[0] == ring[ring.len() - 1],
            "{id}: closed ring of ≥ 4"
        );
        let polygon = geo::Polygon::new(
            ring.iter().map(|p| (p[0], p[1])).collect::<Vec<_>>().into(),
            vec![],
        );
        assert!(polygon.is_valid(), "{id}: invalid polygon {ring:?}");
        assert!((polygon.unsigned_area() - areas[i]).abs() <= 1e-9 * areas[i].max(1.0));
    }
    ids.into_iter().zip(areas).collect()
}

#[test]
fn anndata_x_equals_the_transcript_counts_and_every_output_lists_the_same_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated(tmp.path(), 80);
    let out = tmp.path().join("out");
    segment(&simulated_input(&input), &out, &[]);
    let min = log(&out)["outputs"]["min_transcripts"].as_u64().unwrap();
    assert_eq!(
        Some(min),
        log(&out)["parameters"]["fragments"]["min_transcripts"].as_u64()
    );
    let (cells, expected) = expected_counts(&out, min);
    assert!(cells.len() > 50, "{} cells", cells.len());
    check_anndata(&out.join("cells.anndata.zarr"), "", &cells, &expected);
    check_h5ad(&out.join("cells.h5ad"), &cells, &expected);
    let sd = out.join("segmentation.zarr");
    check_anndata(&sd, "/tables/table", &cells, &expected);

    let polygons = check_polygons(&out.join("cell_boundaries.parquet"));
    let ids: Vec<String> = polygons.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, cells, "polygons list the output cells");
    let shapes = check_polygons(&sd.join("shapes/cell_boundaries/shapes.parquet"));
    assert_eq!(shapes, polygons, "the store's shapes are the polygons");
    let areas: Vec<f64> = read_array(&sd, "/tables/table/obs/cell_area").unwrap();
    let polygon_areas: Vec<f64> = polygons.iter().map(|(_, a)| *a).collect();
    assert_eq!(areas, polygon_areas, "obs.cell_area is the polygon area");

    let geojson: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("cell_boundaries.geojson")).unwrap())
            .unwrap();
    let features = geojson["features"].as_array().unwrap();
    let geojson_ids: Vec<&str> = features
        .iter()
        .map(|f| f["properties"]["cell_id"].as_str().unwrap())
        .collect();
    assert_eq!(geojson_ids, cells, "GeoJSON lists the output cells");

    // SpatialData linkage: region, region key and instance key.
    let attrs = |key: &str| -> String {
        read_array::<String>(&sd, &format!("/tables/table/uns/spatialdata_attrs/{key}")).unwrap()[0]
            .clone()
    };
    assert_eq!(attrs("region"), "cell_boundaries");
    assert_eq!(attrs("region_key"), "region");
    assert_eq!(attrs("instance_key"), "cell_id");
    let instance: Vec<String> = read_array(&sd, "/tables/table/obs/cell_id").unwrap();
    assert_eq!(instance, cells);
    let points = read_parquet(&sd.join("points/transcripts/points.parquet/part.0.parquet"));
    assert_eq!(
        points.num_rows(),
        read_parquet(&out.join("segger_transcripts.parquet")).num_rows()
    );
    assert_eq!(log(&out)["outputs"]["cells"], cells.len());
}

#[test]
fn real_xenium_crop_anndata_equals_its_transcript_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    segment(
        &xenium_crop_input(),
        &out,
        &["--outputs", "transcripts,cells,polygons,anndata"],
    );
    let min = log(&out)["parameters"]["fragments"]["min_transcripts"]
        .as_u64()
        .unwrap();
    let (cells, expected) = expected_counts(&out, min);
    assert!(cells.len() > 100, "{} cells", cells.len());
    check_anndata(&out.join("cells.anndata.zarr"), "", &cells, &expected);
    let polygons = check_polygons(&out.join("cell_boundaries.parquet"));
    assert_eq!(polygons.len(), cells.len());
    assert!(!out.join("segmentation.zarr").exists(), "not asked for");
}

/// Three isolated nuclei whose transcripts are degenerate (all at one
/// point; two transcripts; collinear): each gets its nucleus polygon, and
/// the outputs stay valid.
#[test]
fn degenerate_cells_get_their_nucleus_polygon() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tx = String::from("transcript_id,x_location,y_location,z_location,feature_name,qv\n");
    let mut id = 0;
    let mut add = |x: f64, y: f64, gene: &str| {
        id += 1;
        tx.push_str(&format!("{id},{x},{y},1.0,{gene},30\n"));
    };
    for _ in 0..6 {
        add(5.0, 5.0, "ADI001"); // all at one point
    }
    add(104.0, 104.0, "ADI002"); // two transcripts
    add(106.0, 105.0, "ADI003");
    for i in 0..7 {
        add(202.0 + i as f64, 202.0 + i as f64, "ADI004"); // collinear
    }
    let transcripts = write_file(tmp.path(), "transcripts.csv", tx);
    let mut nuclei = String::from("cell_id,vertex_x,vertex_y\n");
    for (cell, o) in [("a", 0.0), ("b", 100.0), ("c", 200.0)] {
        for (dx, dy) in [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)] {
            nuclei.push_str(&format!("{cell},{},{}\n", o + dx, o + dy));
        }
    }
    let boundaries = write_file(tmp.path(), "nuclei.csv", nuclei);
    let out = tmp.path().join("out");
    segment(
        &[
            "--preset",
            "xenium",
            "--transcripts",
            transcripts.to_str().unwrap(),
            "--boundaries",
            boundaries.to_str().unwrap(),
            "--model",
            demo_model().to_str().unwrap(),
        ],
        &out,
        &[
            "--score-cut",
            "0",
            "--min-transcripts",
            "1",
            "--no-fragments",
        ],
    );
    let polygons = check_polygons(&out.join("cell_boundaries.parquet"));
    assert_eq!(
        polygons,
        vec![
            ("a".to_string(), 100.0),
            ("b".to_string(), 100.0),
            ("c".to_string(), 100.0)
        ],
        "each degenerate cell has its nucleus square"
    );
    assert_eq!(
        log(&out)["outputs"]["polygon_sources"],
        serde_json::json!({"bounding_box": 0, "nucleus": 3, "transcripts": 0})
    );
    let (cells, expected) = expected_counts(&out, 1);
    check_anndata(&out.join("cells.anndata.zarr"), "", &cells, &expected);
    check_h5ad(&out.join("cells.h5ad"), &cells, &expected);
}

#[test]
fn csv_tables_and_a_subset_of_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated(tmp.path(), 20);
    let out = tmp.path().join("out");
    segment(
        &simulated_input(&input),
        &out,
        &["--table-format", "csv", "--outputs", "transcripts,cells"],
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cells.csv",
            "segger_transcripts.csv",
            "segmentation_log.json"
        ]
    );
    let csv = std::fs::read_to_string(out.join("segger_transcripts.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.ends_with("segger_cell_id,score,assignment,filter_reason"),
        "{header}"
    );
    let rows = log(&out)["result"]["counts"]["read"].as_u64().unwrap();
    assert_eq!(csv.lines().count() as u64, rows + 1);
    let bad = seggpu()
        .args([
            "segment",
            "--demo",
            "--outputs",
            "transcripts,nonsense",
            "--out",
        ])
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    crate::common::assert_failure(&bad, "nonsense");
    assert!(!tmp.path().join("bad").exists());
}
