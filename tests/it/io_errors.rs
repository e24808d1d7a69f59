//! Bad input gives one clear error naming the file, the column and what
//! was expected; nothing panics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, ListArray, StringArray};
use arrow::datatypes::{Field, Int32Type, Schema};
use arrow::record_batch::RecordBatch;
use seggpu::io::{read_nuclei, read_transcripts, InputArgs, Preset};
use seggpu::model::BdFeatureMode;

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn boundaries(dir: &Path) -> PathBuf {
    let p = dir.join("nuclei.csv");
    std::fs::write(&p, "cell_id,vertex_x,vertex_y\na,0,0\na,2,0\na,2,2\n").unwrap();
    p
}

fn args(tx: &Path, bd: &Path) -> InputArgs {
    InputArgs {
        preset: Some(Preset::Xenium),
        transcripts: Some(tx.to_path_buf()),
        boundaries: Some(bd.to_path_buf()),
        ..InputArgs::default()
    }
}

/// The full error chain of reading the transcripts.
fn tx_error(a: &InputArgs) -> String {
    match a.resolve().and_then(|s| read_transcripts(&s)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            println!("error: {e:#}");
            format!("{e:#}")
        }
    }
}

fn bd_error(a: &InputArgs) -> String {
    match a
        .resolve()
        .and_then(|s| read_nuclei(&s, BdFeatureMode::Props))
    {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            println!("error: {e:#}");
            format!("{e:#}")
        }
    }
}

#[test]
fn io_error_missing_column_names_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bd = boundaries(dir.path());
    let tx = dir.path().join("transcripts.parquet");
    write_parquet(
        &tx,
        vec![
            (
                "x_location",
                Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
            ),
            ("y_location", Arc::new(Float64Array::from(vec![1.0]))),
            ("gene", Arc::new(StringArray::from(vec!["A"]))),
        ],
    );
    let e = tx_error(&args(&tx, &bd));
    assert!(
        e.contains("transcripts.parquet") && e.contains("`feature_name`"),
        "{e}"
    );
    assert!(
        e.contains("x_location, y_location, gene"),
        "lists the columns: {e}"
    );
    // An explicit column that is missing.
    let e = tx_error(&InputArgs {
        gene_col: Some("gene".into()),
        qv_col: Some("quality".into()),
        ..args(&tx, &bd)
    });
    assert!(
        e.contains("transcripts.parquet") && e.contains("`quality`"),
        "{e}"
    );
    // Boundaries without vertex columns or geometry.
    let bad_bd = dir.path().join("nb.csv");
    std::fs::write(&bad_bd, "cell_id,px,py\na,0,0\n").unwrap();
    let e = bd_error(&args(&tx, &bad_bd));
    assert!(e.contains("nb.csv") && e.contains("`vertex_x`"), "{e}");
    let e = bd_error(&InputArgs {
        boundary_id_col: Some("nucleus".into()),
        ..args(&tx, &bad_bd)
    });
    assert!(e.contains("nb.csv") && e.contains("`nucleus`"), "{e}");
}

#[test]
fn io_error_wrong_column_types() {
    let dir = tempfile::tempdir().unwrap();
    let bd = boundaries(dir.path());
    let tx = dir.path().join("t.parquet");
    write_parquet(
        &tx,
        vec![
            (
                "x_location",
                Arc::new(StringArray::from(vec!["1.0"])) as ArrayRef,
            ),
            ("y_location", Arc::new(Float64Array::from(vec![1.0]))),
            ("feature_name", Arc::new(StringArray::from(vec!["A"]))),
        ],
    );
    let e = tx_error(&args(&tx, &bd));
    assert!(
        e.contains("t.parquet") && e.contains("`x_location`") && e.contains("expected numbers"),
        "{e}"
    );
    let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)])]);
    write_parquet(
        &tx,
        vec![
            (
                "x_location",
                Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
            ),
            ("y_location", Arc::new(Float64Array::from(vec![1.0]))),
            ("feature_name", Arc::new(list)),
        ],
    );
    let e = tx_error(&args(&tx, &bd));
    assert!(
        e.contains("`feature_name`") && e.contains("expected gene names"),
        "{e}"
    );
    // A null gene.
    write_parquet(
        &tx,
        vec![
            (
                "x_location",
                Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef,
            ),
            ("y_location", Arc::new(Float64Array::from(vec![1.0, 2.0]))),
            (
                "feature_name",
                Arc::new(StringArray::from(vec![Some("A"), None])),
            ),
        ],
    );
    let e = tx_error(&args(&tx, &bd));
    assert!(e.contains("`feature_name`") && e.contains("row 2"), "{e}");
    // Text in a numeric CSV column.
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "x_location,y_location,feature_name\n1,oops,A\n").unwrap();
    let e = tx_error(&args(&csv, &bd));
    assert!(
        e.contains("t.csv") && e.contains("`y_location`") && e.contains("oops"),
        "{e}"
    );
    // Null ids.
    write_parquet(
        &tx,
        vec![
            (
                "transcript_id",
                Arc::new(Int32Array::from(vec![Some(1), None])) as ArrayRef,
            ),
            ("x_location", Arc::new(Float64Array::from(vec![1.0, 2.0]))),
            ("y_location", Arc::new(Float64Array::from(vec![1.0, 2.0]))),
            ("feature_name", Arc::new(StringArray::from(vec!["A", "B"]))),
        ],
    );
    let e = tx_error(&args(&tx, &bd));
    assert!(e.contains("`transcript_id`") && e.contains("row 2"), "{e}");
    // A geometry column that is not WKB or WKT.
    let g = dir.path().join("g.parquet");
    write_parquet(
        &g,
        vec![
            ("cell_id", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
            ("geometry", Arc::new(Float64Array::from(vec![1.0]))),
        ],
    );
    let e = bd_error(&args(&csv, &g));
    assert!(
        e.contains("g.parquet") && e.contains("`geometry`") && e.contains("WKB"),
        "{e}"
    );
}

#[test]
fn io_error_empty_transcripts() {
    let dir = tempfile::tempdir().unwrap();
    let bd = boundaries(dir.path());
    let header_only = dir.path().join("t.csv");
    std::fs::write(&header_only, "x_location,y_location,feature_name\n").unwrap();
    let e = tx_error(&args(&header_only, &bd));
    assert!(e.contains("t.csv") && e.contains("no transcripts"), "{e}");
    let zero = dir.path().join("zero.parquet");
    std::fs::write(&zero, b"").unwrap();
    let e = tx_error(&args(&zero, &bd));
    assert!(e.contains("zero.parquet") && e.contains("empty"), "{e}");
    let pq = dir.path().join("empty.parquet");
    write_parquet(
        &pq,
        vec![
            (
                "x_location",
                Arc::new(Float64Array::from(Vec::<f64>::new())) as ArrayRef,
            ),
            (
                "y_location",
                Arc::new(Float64Array::from(Vec::<f64>::new())),
            ),
            (
                "feature_name",
                Arc::new(StringArray::from(Vec::<&str>::new())),
            ),
        ],
    );
    let e = tx_error(&args(&pq, &bd));
    assert!(
        e.contains("empty.parquet") && e.contains("no transcripts"),
        "{e}"
    );
    let fake = dir.path().join("fake.parquet");
    std::fs::write(&fake, "x,y\n1,2\n").unwrap();
    let e = tx_error(&args(&fake, &bd));
    assert!(e.contains("fake.parquet") && e.contains("PAR1"), "{e}");
}

#[test]
fn io_error_boundaries_without_one_valid_polygon() {
    let dir = tempfile::tempdir().unwrap();
    let tx = dir.path().join("t.csv");
    std::fs::write(&tx, "x_location,y_location,feature_name\n1,1,A\n").unwrap();
    let bd = dir.path().join("nb.csv");
    std::fs::write(
        &bd,
        "cell_id,vertex_x,vertex_y\na,0,0\na,1,1\na,0,0\nb,0,0\nb,1,1\nb,2,2\n",
    )
    .unwrap();
    let e = bd_error(&args(&tx, &bd));
    assert!(
        e.contains("nb.csv") && e.contains("without one valid polygon"),
        "{e}"
    );
    assert!(
        e.contains("a: fewer than 3 distinct") && e.contains("b: zero area"),
        "{e}"
    );
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "cell_id,vertex_x,vertex_y\n").unwrap();
    let e = bd_error(&args(&tx, &empty));
    assert!(
        e.contains("empty.csv") && e.contains("without one valid polygon"),
        "{e}"
    );
    let wkt = dir.path().join("w.csv");
    std::fs::write(&wkt, "cell_id,geometry\n1,POINT (1 2)\n2,POLYGON EMPTY\n").unwrap();
    let e = bd_error(&args(&tx, &wkt));
    assert!(
        e.contains("without one valid polygon") && e.contains("not a polygon"),
        "{e}"
    );
}

#[test]
fn io_error_resolve() {
    let e = format!("{:#}", InputArgs::default().resolve().unwrap_err());
    assert!(e.contains("--xenium") && e.contains("--transcripts"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let tx = dir.path().join("t.csv");
    std::fs::write(&tx, "a,b,c\n1,1,A\n").unwrap();
    let e = format!(
        "{:#}",
        InputArgs {
            transcripts: Some(tx.clone()),
            ..InputArgs::default()
        }
        .resolve()
        .unwrap_err()
    );
    assert!(e.contains("--boundaries"), "{e}");
    let bd = boundaries(dir.path());
    let e = format!(
        "{:#}",
        InputArgs {
            transcripts: Some(tx.clone()),
            boundaries: Some(bd.clone()),
            ..InputArgs::default()
        }
        .resolve()
        .unwrap_err()
    );
    assert!(
        e.contains("t.csv") && e.contains("--preset") && e.contains("a, b, c"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        InputArgs {
            transcripts: Some(dir.path().join("missing.parquet")),
            boundaries: Some(bd.clone()),
            ..InputArgs::default()
        }
        .resolve()
        .unwrap_err()
    );
    assert!(
        e.contains("missing.parquet") && e.contains("no such file"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        InputArgs {
            xenium: Some(dir.path().to_path_buf()),
            ..InputArgs::default()
        }
        .resolve()
        .unwrap_err()
    );
    assert!(e.contains("transcripts.parquet"), "{e}");
    let e = format!(
        "{:#}",
        InputArgs {
            pixel_size: Some(-1.0),
            ..args(&tx, &bd)
        }
        .resolve()
        .unwrap_err()
    );
    assert!(e.contains("--pixel-size"), "{e}");
}
