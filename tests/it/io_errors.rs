//! Bad input gives one clear error naming the file, the column and what
//! was expected; nothing panics.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, ListArray, StringArray};
use arrow::datatypes::Int32Type;
use seggpu::io::{read_nuclei, read_transcripts, InputArgs, Preset};
use seggpu::model::BdFeatureMode;

use crate::common::tables::write_parquet;
use crate::common::{one_nucleus_csv, one_transcript_csv, write_file};

fn floats(values: &[f64]) -> ArrayRef {
    Arc::new(Float64Array::from(values.to_vec()))
}

/// Transcript columns: `x_location` as given, `y_location` (ones) and the
/// gene column.
fn transcript_columns(
    x: ArrayRef,
    gene_column: &'static str,
    gene: ArrayRef,
) -> Vec<(&'static str, ArrayRef)> {
    let y = floats(&vec![1.0; x.len()]);
    vec![("x_location", x), ("y_location", y), (gene_column, gene)]
}

fn args(tx: &Path, bd: &Path) -> InputArgs {
    InputArgs {
        preset: Some(Preset::Xenium),
        transcripts: Some(tx.to_path_buf()),
        boundaries: Some(bd.to_path_buf()),
        ..InputArgs::default()
    }
}

/// Asserts the error message `e` names every one of `parts`.
fn assert_mentions(e: &str, parts: &[&str]) {
    for part in parts {
        assert!(e.contains(part), "should mention {part}: {e}");
    }
}

/// The full error chain of `result`, which must be an error.
fn error_chain<T>(result: anyhow::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            println!("error: {e:#}");
            format!("{e:#}")
        }
    }
}

fn tx_error(a: &InputArgs) -> String {
    error_chain(a.resolve().and_then(|s| read_transcripts(&s)))
}

fn bd_error(a: &InputArgs) -> String {
    error_chain(
        a.resolve()
            .and_then(|s| read_nuclei(&s, BdFeatureMode::Props)),
    )
}

fn resolve_error(a: InputArgs) -> String {
    error_chain(a.resolve())
}

#[test]
fn io_error_missing_column_names_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bd = one_nucleus_csv(dir.path());
    let tx = dir.path().join("transcripts.parquet");
    write_parquet(
        &tx,
        transcript_columns(
            floats(&[1.0]),
            "gene",
            Arc::new(StringArray::from(vec!["A"])),
        ),
    );
    let e = tx_error(&args(&tx, &bd));
    assert_mentions(&e, &["transcripts.parquet", "`feature_name`"]);
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
    assert_mentions(&e, &["transcripts.parquet", "`quality`"]);
    // Boundaries without vertex columns or geometry.
    let bad_bd = write_file(dir.path(), "nb.csv", "cell_id,px,py\na,0,0\n");
    let e = bd_error(&args(&tx, &bad_bd));
    assert_mentions(&e, &["nb.csv", "`vertex_x`"]);
    let e = bd_error(&InputArgs {
        boundary_id_col: Some("nucleus".into()),
        ..args(&tx, &bad_bd)
    });
    assert_mentions(&e, &["nb.csv", "`nucleus`"]);
}

#[test]
fn io_error_wrong_column_types() {
    let dir = tempfile::tempdir().unwrap();
    let bd = one_nucleus_csv(dir.path());
    let tx = dir.path().join("t.parquet");
    write_parquet(
        &tx,
        transcript_columns(
            Arc::new(StringArray::from(vec!["1.0"])),
            "feature_name",
            Arc::new(StringArray::from(vec!["A"])),
        ),
    );
    let e = tx_error(&args(&tx, &bd));
    assert_mentions(&e, &["t.parquet", "`x_location`", "expected numbers"]);
    let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)])]);
    write_parquet(
        &tx,
        transcript_columns(floats(&[1.0]), "feature_name", Arc::new(list)),
    );
    let e = tx_error(&args(&tx, &bd));
    assert_mentions(&e, &["`feature_name`", "expected gene names"]);
    // A null gene.
    write_parquet(
        &tx,
        transcript_columns(
            floats(&[1.0, 2.0]),
            "feature_name",
            Arc::new(StringArray::from(vec![Some("A"), None])),
        ),
    );
    let e = tx_error(&args(&tx, &bd));
    assert_mentions(&e, &["`feature_name`", "row 2"]);
    // Text in a numeric CSV column.
    let csv = write_file(
        dir.path(),
        "t.csv",
        "x_location,y_location,feature_name\n1,oops,A\n",
    );
    let e = tx_error(&args(&csv, &bd));
    assert_mentions(&e, &["t.csv", "`y_location`", "oops"]);
    // Null ids.
    let mut columns = transcript_columns(
        floats(&[1.0, 2.0]),
        "feature_name",
        Arc::new(StringArray::from(vec!["A", "B"])),
    );
    columns.insert(
        0,
        (
            "transcript_id",
            Arc::new(Int32Array::from(vec![Some(1), None])),
        ),
    );
    write_parquet(&tx, columns);
    let e = tx_error(&args(&tx, &bd));
    assert_mentions(&e, &["`transcript_id`", "row 2"]);
    // A geometry column that is not WKB or WKT.
    let g = dir.path().join("g.parquet");
    write_parquet(
        &g,
        vec![
            ("cell_id", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
            ("geometry", floats(&[1.0])),
        ],
    );
    let e = bd_error(&args(&csv, &g));
    assert_mentions(&e, &["g.parquet", "`geometry`", "WKB"]);
}

#[test]
fn io_error_empty_transcripts() {
    let dir = tempfile::tempdir().unwrap();
    let bd = one_nucleus_csv(dir.path());
    let header_only = write_file(dir.path(), "t.csv", "x_location,y_location,feature_name\n");
    let e = tx_error(&args(&header_only, &bd));
    assert_mentions(&e, &["t.csv", "no transcripts"]);
    let zero = write_file(dir.path(), "zero.parquet", b"");
    let e = tx_error(&args(&zero, &bd));
    assert_mentions(&e, &["zero.parquet", "empty"]);
    let pq = dir.path().join("empty.parquet");
    write_parquet(
        &pq,
        transcript_columns(
            floats(&[]),
            "feature_name",
            Arc::new(StringArray::from(Vec::<&str>::new())),
        ),
    );
    let e = tx_error(&args(&pq, &bd));
    assert_mentions(&e, &["empty.parquet", "no transcripts"]);
    let fake = write_file(dir.path(), "fake.parquet", "x,y\n1,2\n");
    let e = tx_error(&args(&fake, &bd));
    assert_mentions(&e, &["fake.parquet", "PAR1"]);
}

#[test]
fn io_error_boundaries_without_one_valid_polygon() {
    let dir = tempfile::tempdir().unwrap();
    let tx = one_transcript_csv(dir.path());
    let bd = write_file(
        dir.path(),
        "nb.csv",
        "cell_id,vertex_x,vertex_y\na,0,0\na,1,1\na,0,0\nb,0,0\nb,1,1\nb,2,2\n",
    );
    let e = bd_error(&args(&tx, &bd));
    assert_mentions(&e, &["nb.csv", "without one valid polygon"]);
    assert_mentions(&e, &["a: fewer than 3 distinct", "b: zero area"]);
    let empty = write_file(dir.path(), "empty.csv", "cell_id,vertex_x,vertex_y\n");
    let e = bd_error(&args(&tx, &empty));
    assert_mentions(&e, &["empty.csv", "without one valid polygon"]);
    let wkt = write_file(
        dir.path(),
        "w.csv",
        "cell_id,geometry\n1,POINT (1 2)\n2,POLYGON EMPTY\n",
    );
    let e = bd_error(&args(&tx, &wkt));
    assert_mentions(&e, &["without one valid polygon", "not a polygon"]);
}

#[test]
fn io_error_resolve() {
    let e = resolve_error(InputArgs::default());
    assert_mentions(&e, &["--xenium", "--transcripts"]);
    let dir = tempfile::tempdir().unwrap();
    let tx = write_file(dir.path(), "t.csv", "a,b,c\n1,1,A\n");
    let e = resolve_error(InputArgs {
        transcripts: Some(tx.clone()),
        ..InputArgs::default()
    });
    assert_mentions(&e, &["--boundaries"]);
    let bd = one_nucleus_csv(dir.path());
    let e = resolve_error(InputArgs {
        transcripts: Some(tx.clone()),
        boundaries: Some(bd.clone()),
        ..InputArgs::default()
    });
    assert_mentions(&e, &["t.csv", "--preset", "a, b, c"]);
    let e = resolve_error(InputArgs {
        transcripts: Some(dir.path().join("missing.parquet")),
        boundaries: Some(bd.clone()),
        ..InputArgs::default()
    });
    assert_mentions(&e, &["missing.parquet", "no such file"]);
    let e = resolve_error(InputArgs {
        xenium: Some(dir.path().to_path_buf()),
        ..InputArgs::default()
    });
    assert_mentions(&e, &["transcripts.parquet"]);
    let e = resolve_error(InputArgs {
        pixel_size: Some(-1.0),
        ..args(&tx, &bd)
    });
    assert_mentions(&e, &["--pixel-size"]);
}
