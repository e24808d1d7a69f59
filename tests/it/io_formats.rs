//! The dtype and format matrix of docs/contract.md §2, on small files written here:
//! id, gene, cell-id, coordinate and flag column types in parquet; CSV,
//! gzip CSV without a telling name, TSV; CosMx per-FOV cell ids; WKB, WKT
//! and vertex-table nuclei; the command-line flags.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, DictionaryArray, Float32Array,
    Float64Array, Int32Array, Int64Array, LargeBinaryArray, LargeStringArray, StringArray,
    StringViewArray, UInt64Array, UInt8Array,
};
use arrow::datatypes::{DataType, Int32Type, Int8Type, UInt32Type};
use clap::Parser;
use seggpu::io::{read_nuclei, read_transcripts, FilterReason, InputArgs, Preset, TranscriptKey};
use seggpu::model::BdFeatureMode;

use crate::common::tables::write_parquet;
use crate::common::{assert_close, one_transcript_csv, write_file};

fn write_gz(path: &Path, text: &str) {
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap();
}

/// A square nucleus as a WKB polygon.
fn wkb_square(x: f64, y: f64, side: f64) -> Vec<u8> {
    let mut b = vec![1u8];
    b.extend(3u32.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    b.extend(5u32.to_le_bytes());
    for (px, py) in [
        (x, y),
        (x + side, y),
        (x + side, y + side),
        (x, y + side),
        (x, y),
    ] {
        b.extend(px.to_le_bytes());
        b.extend(py.to_le_bytes());
    }
    b
}

/// Xenium-like boundaries (vertex table) for cells "a", "b" (any tests
/// that only read transcripts still need a boundaries file to resolve).
fn some_boundaries(dir: &Path) -> PathBuf {
    write_file(
        dir,
        "nuclei.csv",
        "cell_id,vertex_x,vertex_y\na,0,0\na,2,0\na,2,2\na,0,2\nb,10,10\nb,12,10\nb,12,12\n",
    )
}

fn xenium_args(tx: PathBuf, bd: PathBuf) -> InputArgs {
    InputArgs {
        preset: Some(Preset::Xenium),
        transcripts: Some(tx),
        boundaries: Some(bd),
        ..InputArgs::default()
    }
}

/// Six Xenium rows with the given id, gene, cell, x and flag columns.
fn xenium_file(
    dir: &Path,
    name: &str,
    id: ArrayRef,
    gene: ArrayRef,
    cell: ArrayRef,
    x: ArrayRef,
    flag: ArrayRef,
) -> PathBuf {
    let p = dir.join(name);
    write_parquet(
        &p,
        vec![
            ("transcript_id", id),
            ("cell_id", cell),
            ("overlaps_nucleus", flag),
            ("feature_name", gene),
            ("x_location", x),
            (
                "y_location",
                Arc::new(Float32Array::from(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])),
            ),
            (
                "z_location",
                Arc::new(Float64Array::from(vec![0.5, 0.5, 0.5, 0.5, 0.5, 0.5])),
            ),
            (
                "qv",
                Arc::new(Float32Array::from(vec![
                    Some(30.0f32),
                    Some(10.0),
                    None,
                    Some(f32::NAN),
                    Some(20.0),
                    Some(40.0),
                ])),
            ),
        ],
    );
    p
}

const GENES: [&str; 6] = ["B", "A", "NegControlProbe_1", "B", "C", "A"];

fn gene_columns() -> Vec<ArrayRef> {
    let dict8: DictionaryArray<Int8Type> = GENES.iter().copied().collect();
    let dict32: DictionaryArray<UInt32Type> = DictionaryArray::new(
        arrow::array::UInt32Array::from(vec![1, 0, 3, 1, 2, 0]),
        Arc::new(LargeStringArray::from(vec![
            "A",
            "B",
            "C",
            "NegControlProbe_1",
            "unused",
        ])),
    );
    vec![
        Arc::new(StringArray::from(GENES.to_vec())),
        Arc::new(LargeStringArray::from(GENES.to_vec())),
        Arc::new(StringViewArray::from(GENES.to_vec())),
        Arc::new(BinaryArray::from(
            GENES.iter().map(|g| g.as_bytes()).collect::<Vec<_>>(),
        )),
        Arc::new(LargeBinaryArray::from(
            GENES.iter().map(|g| g.as_bytes()).collect::<Vec<_>>(),
        )),
        Arc::new(dict8),
        Arc::new(dict32),
    ]
}

#[test]
fn io_gene_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let bd = some_boundaries(dir.path());
    for (k, gene) in gene_columns().into_iter().enumerate() {
        let t = gene.data_type().clone();
        let p = xenium_file(
            dir.path(),
            &format!("genes{k}.parquet"),
            Arc::new(UInt64Array::from(vec![10, 11, 12, 13, 14, 15])),
            gene,
            Arc::new(StringArray::from(vec!["a"; 6])),
            Arc::new(Float32Array::from(vec![1.0f32; 6])),
            Arc::new(UInt8Array::from(vec![0u8; 6])),
        );
        let tr = read_transcripts(&xenium_args(p, bd.clone()).resolve().unwrap()).unwrap();
        assert_eq!(tr.gene_names, ["A", "B", "C", "NegControlProbe_1"], "{t}");
        let names: Vec<&str> = tr
            .gene
            .iter()
            .map(|&g| tr.gene_names[g as usize].as_str())
            .collect();
        assert_eq!(names, GENES, "{t}");
        let out = tr.passthrough.iter().find(|(n, _)| n == "gene").unwrap();
        assert_eq!(out.1.data_type(), &DataType::Utf8);
        assert_eq!(
            out.1
                .as_string::<i32>()
                .iter()
                .flatten()
                .collect::<Vec<_>>(),
            GENES
        );
        // Filters: control (row 2), qv 10 (row 1) and NaN (row 3); null qv
        // (row 2 is control anyway) and 20 (row 4, ≥ 20) pass.
        assert_eq!(
            tr.filter,
            [
                None,
                Some(FilterReason::Qv),
                Some(FilterReason::Control),
                Some(FilterReason::Qv),
                None,
                None
            ],
            "{t}"
        );
    }
}

#[test]
fn io_id_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let bd = some_boundaries(dir.path());
    let cases: Vec<(ArrayRef, DataType, TranscriptKey)> = vec![
        (
            Arc::new(UInt64Array::from(vec![u64::MAX, 1, 2, 3, 4, 5])),
            DataType::UInt64,
            TranscriptKey::U64(u64::MAX),
        ),
        (
            Arc::new(Int64Array::from(vec![-7i64, 1, 2, 3, 4, 5])),
            DataType::Int64,
            TranscriptKey::I64(-7),
        ),
        (
            Arc::new(Int32Array::from(vec![-7, 1, 2, 3, 4, 5])),
            DataType::Int32,
            TranscriptKey::I64(-7),
        ),
        (
            Arc::new(Float64Array::from(vec![2.8e14, 1.0, 2.0, 3.0, 4.0, 5.0])),
            DataType::Float64,
            TranscriptKey::F64(2.8e14),
        ),
        (
            Arc::new(StringArray::from(vec![
                "tx9", "tx1", "tx2", "tx3", "tx4", "tx5",
            ])),
            DataType::Utf8,
            TranscriptKey::Str("tx9".into()),
        ),
        (
            Arc::new(LargeStringArray::from(vec!["007", "1", "2", "3", "4", "5"])),
            DataType::Utf8,
            TranscriptKey::Str("007".into()),
        ),
    ];
    for (k, (id, out_type, first)) in cases.into_iter().enumerate() {
        let p = xenium_file(
            dir.path(),
            &format!("ids{k}.parquet"),
            id,
            Arc::new(StringArray::from(GENES.to_vec())),
            Arc::new(StringArray::from(vec!["a"; 6])),
            Arc::new(Float32Array::from(vec![1.0f32; 6])),
            Arc::new(UInt8Array::from(vec![0u8; 6])),
        );
        let tr = read_transcripts(&xenium_args(p, bd.clone()).resolve().unwrap()).unwrap();
        assert_eq!(tr.id_key[0], first);
        assert_eq!(tr.passthrough[0].0, "transcript_id");
        assert_eq!(tr.passthrough[0].1.data_type(), &out_type);
        assert_eq!(tr.passthrough[0].1.len(), 6);
    }
    assert_eq!(TranscriptKey::F64(2.8e14).to_string(), "280000000000000");
}

#[test]
fn io_cell_coordinate_and_flag_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let bd = some_boundaries(dir.path());
    let want = vec![
        Some("5".to_string()),
        None,
        None,
        None,
        Some("7".into()),
        None,
    ];
    // Row 0 nuclear in cell 5; row 1 flagged but UNASSIGNED / -1 / ""; row 2
    // not flagged; row 3 flagged with a null cell; row 4 nuclear in cell 7.
    let text = [
        Some("5"),
        Some("UNASSIGNED"),
        Some("5"),
        None,
        Some("7"),
        Some("7"),
    ];
    let mut blank = text;
    blank[1] = Some("");
    let number = [Some(5), Some(-1), Some(5), None, Some(7), Some(7)];
    let cells: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(text.to_vec())),
        Arc::new(Int32Array::from(number.to_vec())),
        Arc::new(Int64Array::from_iter(number.map(|c| c.map(i64::from)))),
        Arc::new(Float64Array::from_iter(number.map(|c| c.map(f64::from)))),
        Arc::new(LargeStringArray::from(blank.to_vec())),
        Arc::new(text.into_iter().collect::<DictionaryArray<Int32Type>>()),
    ];
    let flags: Vec<ArrayRef> = vec![
        Arc::new(UInt8Array::from(vec![1u8, 1, 0, 1, 1, 0])),
        Arc::new(BooleanArray::from(vec![
            true, true, false, true, true, false,
        ])),
        Arc::new(Int64Array::from(vec![1i64, 1, 0, 1, 1, 0])),
        Arc::new(StringArray::from(vec!["1", "1", "0", "1", "1", "0"])),
    ];
    let xs: Vec<ArrayRef> = vec![
        Arc::new(Float32Array::from(vec![1.5f32, 2.0, 3.0, 4.0, 5.0, 6.0])),
        Arc::new(Float64Array::from(vec![1.5, 2.0, 3.0, 4.0, 5.0, 6.0])),
        Arc::new(Int32Array::from(vec![1, 2, 3, 4, 5, 6])),
        Arc::new(Int64Array::from(vec![
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(5),
            None,
        ])),
    ];
    let mut k = 0;
    for cell in &cells {
        for flag in &flags {
            for x in &xs {
                k += 1;
                let p = xenium_file(
                    dir.path(),
                    &format!("c{k}.parquet"),
                    Arc::new(UInt64Array::from(vec![1, 2, 3, 4, 5, 6])),
                    Arc::new(StringArray::from(vec!["A"; 6])),
                    cell.clone(),
                    x.clone(),
                    flag.clone(),
                );
                let tr = read_transcripts(&xenium_args(p, bd.clone()).resolve().unwrap()).unwrap();
                let what = format!(
                    "{} / {} / {}",
                    cell.data_type(),
                    flag.data_type(),
                    x.data_type()
                );
                assert_eq!(tr.nuclear_cell.as_ref().unwrap(), &want, "{what}");
                assert_eq!(tr.x[1], 2.0, "{what}");
                // x passthrough keeps its type.
                assert_eq!(tr.passthrough[1].1.data_type(), x.data_type(), "{what}");
                // A null x is a bad coordinate.
                let bad = x.null_count() > 0;
                assert_eq!(
                    tr.filter[5] == Some(FilterReason::BadCoordinates),
                    bad,
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn io_csv_gzip_without_extension_and_tsv() {
    let dir = tempfile::tempdir().unwrap();
    let bd = some_boundaries(dir.path());
    let text =
        "transcript_id,cell_id,overlaps_nucleus,feature_name,x_location,y_location,z_location,qv\n\
                18446744073709551615,a,1,A,1.5,2.5,3.5,30\n\
                2,UNASSIGNED,0,BLANK_0001,nan,2,3,30\n\
                3,b,1,B,1,2,,10\n";
    // gzip under a name that says nothing.
    let gz = dir.path().join("transcripts.data");
    write_gz(&gz, text);
    let tr = read_transcripts(&xenium_args(gz, bd.clone()).resolve().unwrap()).unwrap();
    assert_eq!(tr.x.len(), 3);
    assert_eq!(tr.id_key[0], TranscriptKey::U64(u64::MAX));
    assert_eq!(tr.passthrough[0].1.data_type(), &DataType::UInt64);
    assert_eq!(
        tr.nuclear_cell.as_ref().unwrap(),
        &vec![Some("a".to_string()), None, Some("b".to_string())]
    );
    assert_eq!(
        tr.filter,
        [
            None,
            Some(FilterReason::BadCoordinates),
            Some(FilterReason::BadCoordinates)
        ]
    );
    assert_eq!((tr.x[0], tr.y[0], tr.z[0]), (1.5, 2.5, 3.5));

    // Plain CSV with float ids; TSV with text ids.
    let csv = write_file(
        dir.path(),
        "t.csv",
        text.replace("18446744073709551615", "1.5e3"),
    );
    let tr = read_transcripts(&xenium_args(csv, bd.clone()).resolve().unwrap()).unwrap();
    assert_eq!(tr.id_key[0], TranscriptKey::F64(1500.0));
    assert_eq!(tr.passthrough[0].1.data_type(), &DataType::Float64);
    let tsv = write_file(
        dir.path(),
        "t.tsv",
        text.replace("18446744073709551615", "txA")
            .replace(',', "\t"),
    );
    let tr = read_transcripts(&xenium_args(tsv.clone(), bd.clone()).resolve().unwrap()).unwrap();
    assert_eq!(tr.id_key[0], TranscriptKey::Str("txA".into()));
    assert_eq!(tr.passthrough[0].1.data_type(), &DataType::Utf8);
    // The same TSV, gzip-compressed, named .tsv.gz.
    let tsvgz = dir.path().join("t.tsv.gz");
    write_gz(&tsvgz, &std::fs::read_to_string(&tsv).unwrap());
    let tr = read_transcripts(&xenium_args(tsvgz, bd).resolve().unwrap()).unwrap();
    assert_eq!(tr.x.len(), 3);
}

#[test]
fn io_cosmx_csv_fov_cell_ids_and_polygons() {
    let dir = tempfile::tempdir().unwrap();
    let tx = dir.path().join("sample_tx_file.csv.gz");
    write_gz(
        &tx,
        "\"fov\",\"cell_ID\",\"x_global_px\",\"y_global_px\",\"x_local_px\",\"y_local_px\",\"z\",\"target\",\"CellComp\"\n\
         1,0,100,200,1,1,0,\"Snap25\",\"None\"\n\
         1,5,110,210,1,1,2,\"Fth1\",\"Nuclear\"\n\
         2,5,120,220,1,1,3,\"NegPrb1\",\"Nuclear\"\n\
         2,0,130,230,1,1,1,\"Pbx1\",\"Nuclear\"\n\
         2,5,140,240,1,1,1,\"Pbx1\",\"Membrane\"\n",
    );
    let bd = write_file(dir.path(), "sample-polygons.csv", "fov,cellID,cell,x_local_px,y_local_px,x_global_px,y_global_px\n\
         1,5,c_1_1_5,0,0,100,200\n1,5,c_1_1_5,0,0,200,200\n1,5,c_1_1_5,0,0,200,300\n1,5,c_1_1_5,0,0,100,300\n\
         2,5,c_1_2_5,0,0,100,200\n2,5,c_1_2_5,0,0,150,200\n2,5,c_1_2_5,0,0,150,250\n");
    let args = InputArgs {
        transcripts: Some(tx),
        boundaries: Some(bd),
        ..InputArgs::default()
    };
    let spec = args.resolve().unwrap();
    assert_eq!(spec.preset, Preset::Cosmx);
    let tr = read_transcripts(&spec).unwrap();
    assert_eq!(
        tr.nuclear_cell.as_ref().unwrap(),
        &vec![
            None,
            Some("1_5".to_string()),
            Some("2_5".to_string()),
            None,
            None
        ]
    );
    assert_close("x in µm", tr.x[1], 110.0 * 0.12028, 1e-12);
    assert_eq!(tr.z[1], 2.0);
    assert_eq!(tr.filter[2], Some(FilterReason::Control));
    assert_eq!(
        tr.passthrough[0].1.data_type(),
        &DataType::UInt64,
        "row index ids"
    );
    let nuclei = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    assert_eq!(nuclei.ids, ["1_5", "2_5"]);
    // 100 × 100 px at 0.12028 µm/px.
    let a = (100.0f64 * 0.12028).powi(2);
    assert_close("area in µm²", nuclei.features[0][0].into(), a, 1e-3 * a);
    assert_close(
        "centroid x in µm",
        nuclei.centroid[0][0],
        150.0 * 0.12028,
        1e-9,
    );
}

#[test]
fn io_geoparquet_wkb_multipolygon_duplicates_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    let tx = write_file(dir.path(), "points.csv", "x,y,feature_name\n1,1,A\n");
    // cell 3: MultiPolygon (1 × 1 and 3 × 3 squares); cell 1 twice (a 2 × 2
    // and a 4 × 4); cell 2 degenerate; cell 4 null geometry; cell 10 fine.
    let mut multi = vec![1u8];
    multi.extend(6u32.to_le_bytes());
    multi.extend(2u32.to_le_bytes());
    multi.extend(wkb_square(0.0, 0.0, 1.0));
    multi.extend(wkb_square(10.0, 10.0, 3.0));
    let mut line = vec![1u8];
    line.extend(3u32.to_le_bytes());
    line.extend(1u32.to_le_bytes());
    line.extend(3u32.to_le_bytes());
    for p in [[0.0f64, 0.0], [1.0, 1.0], [2.0, 2.0]] {
        line.extend(p[0].to_le_bytes());
        line.extend(p[1].to_le_bytes());
    }
    let geoms: Vec<Option<Vec<u8>>> = vec![
        Some(multi),
        Some(wkb_square(0.0, 0.0, 2.0)),
        Some(line),
        None,
        Some(wkb_square(20.0, 0.0, 4.0)),
        Some(wkb_square(50.0, 50.0, 1.0)),
    ];
    let geoms = LargeBinaryArray::from_iter(geoms.iter().map(|g| g.as_deref()));
    let bd = dir.path().join("shapes.parquet");
    write_parquet(
        &bd,
        vec![
            ("geometry", Arc::new(geoms) as ArrayRef),
            (
                "cell_id",
                Arc::new(Int32Array::from(vec![3, 1, 2, 4, 1, 10])),
            ),
        ],
    );
    let spec = InputArgs {
        preset: Some(Preset::Spatialdata),
        transcripts: Some(tx),
        boundaries: Some(bd),
        boundary_offset_x: 100.0,
        ..InputArgs::default()
    }
    .resolve()
    .unwrap();
    let n = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    println!("notes: {:?}", n.notes);
    assert_eq!(n.ids, ["1", "10", "3"], "bytewise order");
    assert_eq!(n.features[0][0], 16.0, "largest of the duplicates");
    assert_eq!(n.features[2][0], 9.0, "largest part of the multipolygon");
    assert_close("centroid x with the offset", n.centroid[2][0], 111.5, 1e-12);
    let skipped: Vec<(&str, &str)> = n
        .skipped
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(skipped[0], ("2", "zero area"));
    assert_eq!(skipped[1], ("4", "null geometry"));
    let notes = n.notes.join("\n");
    assert!(notes.contains("multipolygon"), "{notes}");
    assert!(notes.contains("several polygons"), "{notes}");
}

#[test]
fn io_merscope_wkt_geometry_csv() {
    let dir = tempfile::tempdir().unwrap();
    let tx = write_file(dir.path(), "detected_transcripts.csv", ",barcode_id,global_x,global_y,global_z,x,y,fov,gene,transcript_id,cell_id\n0,1,1.5,2.5,3,0,0,0,Gad1,ENSMUST1,-1\n1,1,2.5,3.5,0,0,0,0,Blank-1,ENSMUST2,-1\n");
    let bd = write_file(
        dir.path(),
        "cell_boundaries.csv",
        "ID,EntityID,ZIndex,Geometry\n\
         0,99,0,\"MULTIPOLYGON (((0 0, 4 0, 4 4, 0 4, 0 0)))\"\n\
         1,99,1,\"MULTIPOLYGON (((0 0, 5 0, 5 5, 0 5, 0 0)))\"\n\
         2,100,0,\"POLYGON ((10 10, 12 10, 12 12, 10 10))\"\n",
    );
    let spec = InputArgs {
        transcripts: Some(tx),
        boundaries: Some(bd),
        ..InputArgs::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(spec.preset, Preset::Merscope);
    let tr = read_transcripts(&spec).unwrap();
    assert_eq!(
        tr.id_key,
        [TranscriptKey::U64(0), TranscriptKey::U64(1)],
        "row index, not transcript_id"
    );
    assert_eq!(tr.filter, [None, Some(FilterReason::Control)]);
    assert_eq!(tr.z, [3.0, 0.0]);
    let n = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    assert_eq!(n.ids, ["100", "99"]);
    assert_eq!(n.features[1][0], 25.0, "largest z-plane polygon");
    assert_eq!(n.features[0][0], 2.0);
}

#[test]
fn io_vertex_table_open_rings_and_string_ids() {
    let dir = tempfile::tempdir().unwrap();
    let tx = one_transcript_csv(dir.path());
    let bd = dir.path().join("nb.parquet");
    // "b" open ring, "a" closed, "c" two vertices, rows as Xenium writes them.
    write_parquet(
        &bd,
        vec![
            (
                "cell_id",
                Arc::new(StringArray::from(vec![
                    "b", "b", "b", "a", "a", "a", "a", "a", "c", "c",
                ])) as ArrayRef,
            ),
            (
                "vertex_x",
                Arc::new(Float32Array::from(vec![
                    0.0f32, 3.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 5.0, 6.0,
                ])),
            ),
            (
                "vertex_y",
                Arc::new(Float32Array::from(vec![
                    0.0f32, 0.0, 3.0, 0.0, 0.0, 1.0, 1.0, 0.0, 5.0, 5.0,
                ])),
            ),
        ],
    );
    let spec = xenium_args(tx, bd).resolve().unwrap();
    let n = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    assert_eq!(n.ids, ["a", "b"]);
    assert_eq!(n.features[0], [1.0, 1.0, 1.0, 2.0]);
    assert_eq!(n.features[1][0], 4.5);
    assert_eq!(n.polygons[1].exterior().0.len(), 4, "closed");
    assert_eq!(
        n.skipped,
        [(
            "c".to_string(),
            "fewer than 3 distinct vertices (2)".to_string()
        )]
    );
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    input: InputArgs,
}

#[test]
fn io_command_line_flags() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    let dir = tempfile::tempdir().unwrap();
    let tx = write_file(dir.path(), "t.csv", "gx,gy,g,q\n1,1,A,5\n");
    let bd = some_boundaries(dir.path());
    let cli = Cli::try_parse_from([
        "x",
        "--transcripts",
        tx.to_str().unwrap(),
        "--boundaries",
        bd.to_str().unwrap(),
        "--preset",
        "merscope",
        "--x-col",
        "gx",
        "--y-col",
        "gy",
        "--gene-col",
        "g",
        "--z-col",
        "none",
        "--qv-col",
        "q",
        "--qv-min",
        "3",
        "--control-prefix",
        "Z",
        "--control-prefix",
        "Y",
        "--boundary-y-scale",
        "-1",
        "--boundary-offset-x",
        "-2.5",
    ])
    .unwrap();
    let spec = cli.input.resolve().unwrap();
    assert_eq!(spec.boundary_scale, [1.0, -1.0]);
    assert_eq!(spec.boundary_offset, [-2.5, 0.0]);
    assert_eq!(spec.control_prefixes, ["Blank-", "BLANK", "Z", "Y"]);
    let tr = read_transcripts(&spec).unwrap();
    assert_eq!(tr.z, [0.0]);
    assert_eq!(tr.filter, [None]);
    assert_eq!(
        tr.passthrough
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["transcript_id", "x", "y", "gene", "qv"]
    );
    let n = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    assert_eq!(n.ids, ["a", "b"]);
    assert_eq!(n.centroid[0], [-1.5, -1.0]);
    assert!(n.centroid[1][1] < -10.0);
}
