//! Property tests (proptest) for the readers and the weights loader: random
//! and mutated bytes, and random tables of plausible cells, must give `Ok`
//! or an error — never a panic. Cases per property: `PROPTEST_CASES`
//! (default 48, a few seconds); a longer run is
//! `PROPTEST_CASES=20000 cargo test --release --test it fuzz::`.

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};

use seggpu::io::{check_membership, read_nuclei, read_transcripts, Preset};
use seggpu::model::{BdFeatureMode, Model};
use seggpu::tensorfile::TensorFile;

use crate::common::{self, input_spec, write_file};

/// The runner of every property: `PROPTEST_CASES` cases (default 48), no
/// regression files written into the repository.
fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Byte edits: (position, new byte) pairs, then an optional truncation.
fn mutations() -> impl Strategy<Value = (Vec<(Index, u8)>, Option<Index>)> {
    (
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..6),
        prop::option::weighted(0.2, any::<Index>()),
    )
}

fn mutate(bytes: &[u8], (edits, cut): &(Vec<(Index, u8)>, Option<Index>)) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    if bytes.is_empty() {
        return bytes;
    }
    for (at, byte) in edits {
        let i = at.index(bytes.len());
        bytes[i] = *byte;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut.index(bytes.len() + 1));
    }
    bytes
}

/// A cell of a CSV table: numbers of every kind, empty, text, ids, quotes.
fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "2",
            "20",
            "1e308",
            "-1e308",
            "1e-320",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1.5",
            "12.0",
            "abc",
            "\"q,u\"",
            "\"",
            "18446744073709551616",
            "9223372036854775807",
            "-9223372036854775808",
            "GENE0001",
            "GENE0002",
            "NegControlProbe_1",
            "BLANK_3",
            "UNASSIGNED",
            "a",
            "b",
            " ",
            "nuclear",
            "Nuclear",
            "true",
            "POLYGON ((0 0, 2 0, 2 2, 0 0))",
        ])
        .prop_map(str::to_owned),
        any::<f64>().prop_map(|v| v.to_string()),
        (-50i64..50).prop_map(|v| v.to_string()),
        "[ -~]{0,6}",
    ]
}

/// A CSV table whose header takes columns from `names` (some repeated, in
/// any order), with rows of random cells and sometimes a ragged row.
fn table(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(names), 1..names.len() + 2),
        prop::collection::vec(prop::collection::vec(cell(), 0..10), 0..12),
    )
        .prop_map(|(header, rows)| {
            let mut text = header.join(",");
            text.push('\n');
            for row in rows {
                // Rows of the header's width mostly; the generated width otherwise.
                let row: Vec<String> = if row.len() >= header.len() && row.len() % 3 != 0 {
                    row[..header.len()].to_vec()
                } else {
                    row
                };
                text.push_str(&row.join(","));
                text.push('\n');
            }
            text
        })
}

const TRANSCRIPT_COLUMNS: &[&str] = &[
    "transcript_id",
    "x_location",
    "y_location",
    "z_location",
    "feature_name",
    "qv",
    "cell_id",
    "overlaps_nucleus",
];

const VERTEX_COLUMNS: &[&str] = &["cell_id", "vertex_x", "vertex_y", "label_id"];

/// Reads the transcripts and the nuclei of the two files and checks
/// membership; any error is fine, a panic fails the property.
fn read_all(preset: Preset, tx: &Path, bd: &Path) {
    let spec = input_spec(preset, tx, bd);
    let transcripts = read_transcripts(&spec);
    let nuclei = read_nuclei(&spec, BdFeatureMode::Props);
    if let (Ok(mut t), Ok(n)) = (transcripts, nuclei) {
        assert_eq!(t.x.len(), t.filter.len(), "one filter entry per row");
        let _ = check_membership(&mut t, &n, &spec);
    }
}

#[test]
fn the_transcripts_reader_never_panics_on_random_tables() {
    let dir = tempfile::tempdir().unwrap();
    let bd = common::one_nucleus_csv(dir.path());
    runner()
        .run(&table(TRANSCRIPT_COLUMNS), |text| {
            let tx = write_file(dir.path(), "t.csv", &text);
            read_all(Preset::Xenium, &tx, &bd);
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_boundaries_reader_never_panics_on_random_vertex_tables() {
    let dir = tempfile::tempdir().unwrap();
    let tx = write_file(
        dir.path(),
        "t.csv",
        "transcript_id,x_location,y_location,feature_name,cell_id,overlaps_nucleus\n\
         1,1,1,A,a,1\n2,3,3,A,b,0\n",
    );
    runner()
        .run(&table(VERTEX_COLUMNS), |text| {
            let bd = write_file(dir.path(), "nuclei.csv", &text);
            read_all(Preset::Xenium, &tx, &bd);
            Ok(())
        })
        .unwrap();
}

/// WKT polygons built from random pieces, some malformed.
fn wkt() -> impl Strategy<Value = String> {
    let coordinate = prop_oneof![
        (-5i32..5).prop_map(|v| v.to_string()),
        Just("nan".to_owned()),
        Just("1e400".to_owned()),
        Just(String::new()),
    ];
    (
        prop::sample::select(vec![
            "POLYGON",
            "MULTIPOLYGON",
            "POINT",
            "LINESTRING",
            "POLYGON Z",
        ]),
        prop::collection::vec((coordinate.clone(), coordinate), 0..7),
        prop::sample::select(vec!["((", "(((", "(", ""]),
        prop::sample::select(vec!["))", ")))", ")", ""]),
    )
        .prop_map(|(kind, points, open, close)| {
            let points: Vec<String> = points.iter().map(|(x, y)| format!("{x} {y}")).collect();
            format!("\"{kind} {open}{}{close}\"", points.join(", "))
        })
}

#[test]
fn the_polygon_reader_never_panics_on_random_wkt() {
    let dir = tempfile::tempdir().unwrap();
    let tx = write_file(
        dir.path(),
        "t.csv",
        "global_x,global_y,gene\n1,1,A\n3,3,A\n",
    );
    let rows = prop::collection::vec((cell(), wkt()), 0..6);
    runner()
        .run(&rows, |rows| {
            let mut text = String::from("EntityID,Geometry\n");
            for (id, geometry) in rows {
                text.push_str(&format!("{id},{geometry}\n"));
            }
            let bd = write_file(dir.path(), "polygons.csv", &text);
            read_all(Preset::Merscope, &tx, &bd);
            Ok(())
        })
        .unwrap();
}

/// A valid transcripts parquet and vertex parquet (made here), whose bytes
/// the mutation properties alter.
fn parquet_inputs(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    use arrow::array::{ArrayRef, Float32Array, StringArray, UInt64Array, UInt8Array};
    use std::sync::Arc;
    let tx = dir.join("base_t.parquet");
    crate::common::tables::write_parquet(
        &tx,
        vec![
            (
                "transcript_id",
                Arc::new(UInt64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
            (
                "x_location",
                Arc::new(Float32Array::from(vec![1.0, 1.5, 3.0, 0.5])),
            ),
            (
                "y_location",
                Arc::new(Float32Array::from(vec![1.0, 0.5, 3.0, 1.5])),
            ),
            (
                "feature_name",
                Arc::new(StringArray::from(vec!["A", "B", "A", "C"])),
            ),
            (
                "qv",
                Arc::new(Float32Array::from(vec![30.0, 10.0, 40.0, 25.0])),
            ),
            (
                "cell_id",
                Arc::new(StringArray::from(vec!["a", "a", "UNASSIGNED", "a"])),
            ),
            (
                "overlaps_nucleus",
                Arc::new(UInt8Array::from(vec![1, 1, 0, 1])),
            ),
        ],
    );
    let bd = dir.join("base_n.parquet");
    crate::common::tables::write_parquet(
        &bd,
        vec![
            (
                "cell_id",
                Arc::new(StringArray::from(vec!["a", "a", "a", "a"])) as ArrayRef,
            ),
            (
                "vertex_x",
                Arc::new(Float32Array::from(vec![0.0, 2.0, 2.0, 0.0])),
            ),
            (
                "vertex_y",
                Arc::new(Float32Array::from(vec![0.0, 0.0, 2.0, 2.0])),
            ),
        ],
    );
    (std::fs::read(tx).unwrap(), std::fs::read(bd).unwrap())
}

#[test]
fn the_readers_never_panic_on_mutated_parquet_and_gzip_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (tx_bytes, bd_bytes) = parquet_inputs(dir.path());
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"x_location,y_location,feature_name,qv\n1,1,A,30\n2,2,B,10\n")
            .unwrap();
        e.finish().unwrap()
    };
    let which = prop::sample::select(vec![0usize, 1, 2]);
    runner()
        .run(&(which, mutations()), |(which, m)| {
            let (mut tx, mut bd) = (tx_bytes.clone(), bd_bytes.clone());
            let mut tx_name = "t.parquet";
            match which {
                0 => tx = mutate(&tx, &m),
                1 => bd = mutate(&bd, &m),
                _ => {
                    tx = mutate(&gz, &m);
                    tx_name = "t.csv.gz";
                }
            }
            let tx = write_file(dir.path(), tx_name, &tx);
            let bd = write_file(dir.path(), "n.parquet", &bd);
            read_all(Preset::Xenium, &tx, &bd);
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_readers_never_panic_on_random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let bd = common::one_nucleus_csv(dir.path());
    let tx_ok = common::one_transcript_csv(dir.path());
    let bytes = prop::collection::vec(any::<u8>(), 0..512);
    let name = prop::sample::select(vec!["r.csv", "r.parquet", "r.csv.gz", "r.bin"]);
    runner()
        .run(&(bytes, name, any::<bool>()), |(bytes, name, as_tx)| {
            let path = write_file(dir.path(), name, &bytes);
            if as_tx {
                read_all(Preset::Xenium, &path, &bd);
            } else {
                read_all(Preset::Xenium, &tx_ok, &path);
            }
            Ok(())
        })
        .unwrap();
}

/// An edit of the safetensors header's JSON: a tensor's shape, dtype or
/// offsets replaced by small random values, or a metadata entry replaced.
#[derive(Debug, Clone)]
enum HeaderEdit {
    Shape(Index, Vec<usize>),
    Dtype(Index, &'static str),
    Offsets(Index, [usize; 2]),
    Metadata(&'static str, String),
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    prop_oneof![
        (any::<Index>(), prop::collection::vec(0usize..100, 0..4))
            .prop_map(|(i, s)| HeaderEdit::Shape(i, s)),
        (
            any::<Index>(),
            prop::sample::select(vec!["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL"])
        )
            .prop_map(|(i, d)| HeaderEdit::Dtype(i, d)),
        (any::<Index>(), any::<[u16; 2]>())
            .prop_map(|(i, [a, b])| HeaderEdit::Offsets(i, [a as usize, b as usize])),
        (
            prop::sample::select(vec![
                "seggpu.genes",
                "seggpu.defaults",
                "seggpu.format",
                "seggpu.bd_features"
            ]),
            prop_oneof![
                cell(),
                Just("[\"A\", \"A\"]".to_owned()),
                Just("{\"k_tx\": 1e30}".to_owned()),
                Just("{\"score_cut\": -0.0, \"dist_bd\": 1e-300}".to_owned()),
                Just("[]".to_owned()),
            ]
        )
            .prop_map(|(k, v)| HeaderEdit::Metadata(k, v)),
    ]
}

/// Applies a header edit to a safetensors file (re-padding the header).
fn edit_header(bytes: &[u8], edit: &HeaderEdit) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let object = header.as_object_mut().unwrap();
    let mut names: Vec<String> = object
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    names.sort();
    match edit {
        HeaderEdit::Shape(i, shape) => {
            object[&names[i.index(names.len())]]["shape"] = shape.clone().into()
        }
        HeaderEdit::Dtype(i, dtype) => {
            object[&names[i.index(names.len())]]["dtype"] = (*dtype).into()
        }
        HeaderEdit::Offsets(i, offsets) => {
            object[&names[i.index(names.len())]]["data_offsets"] = offsets.to_vec().into()
        }
        HeaderEdit::Metadata(key, value) => {
            object["__metadata__"][*key] = value.clone().into();
        }
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Loads weights from bytes; any error is fine, a panic fails the property.
fn load_weights(bytes: Vec<u8>) {
    if let Ok(file) = TensorFile::from_bytes(Path::new("fuzzed.safetensors"), bytes) {
        if let Ok(model) = Model::from_file(&file) {
            // A loaded model is internally consistent.
            assert!(model.genes.len() <= model.arch.vocab);
            assert_eq!(model.tx_embedding.len(), model.arch.vocab * model.arch.emb);
            assert!(model.tx_embedding.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn the_weights_loader_never_panics_on_mutated_files() {
    let bytes = std::fs::read(common::fixture_path("small.model.safetensors")).unwrap();
    let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    runner()
        .run(
            &(
                mutations(),
                prop::collection::vec(header_edit(), 0..3),
                any::<bool>(),
            ),
            |(m, edits, in_header)| {
                let mut file = bytes.clone();
                for edit in &edits {
                    file = edit_header(&file, edit);
                }
                // Byte edits inside the header half of the time.
                let file = if in_header {
                    let head = header_len.min(file.len());
                    let mut head_bytes = mutate(&file[..head], &(m.0.clone(), None));
                    head_bytes.extend_from_slice(&file[head..]);
                    mutate(&head_bytes, &(Vec::new(), m.1))
                } else {
                    mutate(&file, &m)
                };
                load_weights(file);
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn the_weights_loader_never_panics_on_random_bytes() {
    let bytes = prop::collection::vec(any::<u8>(), 0..256);
    // A valid length prefix followed by random JSON-ish text, and pure noise.
    let json = "[ -~]{0,200}".prop_map(|text| {
        let mut file = (text.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(text.as_bytes());
        file
    });
    runner()
        .run(&prop_oneof![bytes, json], |file| {
            load_weights(file);
            Ok(())
        })
        .unwrap();
}

/// What the long run found (a negative column chunk offset, a data page
/// asking for a missing dictionary: the parquet crate asserted), checked
/// over every byte of the footer, set to 0x9f (the value found) or 0xff.
#[test]
fn every_single_byte_change_of_a_parquet_footer_gives_a_result_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (tx_bytes, _) = parquet_inputs(dir.path());
    let bd = common::one_nucleus_csv(dir.path());
    let n = tx_bytes.len();
    let footer = u32::from_le_bytes(tx_bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let mut errors = 0;
    for at in n - 8 - footer..n - 8 {
        let mut bytes = tx_bytes.clone();
        bytes[at] = if at % 2 == 0 { 0x9f } else { 0xff };
        let tx = write_file(dir.path(), "t.parquet", &bytes);
        let spec = input_spec(Preset::Xenium, &tx, &bd);
        errors += usize::from(read_transcripts(&spec).is_err());
    }
    println!("{errors} of {footer} footer edits are errors");
    assert!(errors > 0, "some footer edits must be refused");
}
