//! `segment --xenium-ranger`: the Xenium Ranger import folder read back and
//! held to the rules Xenium Ranger's `import-segmentation` imposes, written
//! here from those rules and not from the writer: every `transcript_id`
//! exists in the input (once per input row), `cell` is `cell-<N>` or empty
//! exactly where `is_noise` is true, the CSV's cells and the polygons are the
//! same set, each polygon a single closed valid ring of ≥ 4 coordinates in a
//! GeometryCollection with an integer `cell`, and the cells are the output
//! cells of the run (cells.parquet rows with ≥ max(1, min_transcripts)
//! transcripts), each holding exactly its transcripts of
//! `segger_transcripts.parquet`. The checker is shown to catch broken files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;

use geo::{Area, Validation};
use seggpu::io::table::READ_AHEAD;
use seggpu::output::WRITE_AHEAD;

use crate::common::segment::{
    segment_cpu, small_batches, xenium_crop_input, BATCH_ROWS, WRITE_ROWS,
};
use crate::common::tables::{primitives, read_parquet, strings, transcript_ids};
use crate::common::{
    assert_failure, assert_success, data_path, demo_model, one_nucleus_csv, write_file,
};

/// `seggpu segment INPUT --out OUT --backend cpu --quiet --xenium-ranger EXTRA`.
fn segment<S: AsRef<std::ffi::OsStr>>(input: &[S], out: &Path, extra: &[&str]) -> Output {
    segment_cpu(input, out, &[&["--xenium-ranger"], extra].concat())
}

/// The `<N>` of `cell-<N>` (N ≥ 1, no sign, no leading zero).
fn cell_number(cell: &str) -> Option<u64> {
    let digits = cell.strip_prefix("cell-")?;
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    plain.then(|| digits.parse().ok()).flatten()
}

/// Lines of a CSV without quoting (none of these files needs any), header first.
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Whether the first row of `rows` starts with `names`.
fn header_starts(rows: &[Vec<String>], names: &[&str]) -> bool {
    rows.first()
        .is_some_and(|h| h.len() >= names.len() && h.iter().zip(names).all(|(a, b)| a == b))
}

/// The rule violations of `out/xenium_ranger` for a run on the transcript
/// ids `input_ids` with `min_transcripts`; empty when it passes.
fn violations(out: &Path, input_ids: &[u64], min_transcripts: u64) -> Vec<String> {
    let dir = out.join("xenium_ranger");
    let mut bad = Vec::new();

    // transcript_assignment.csv: one row per input transcript.
    let rows = csv_rows(&dir.join("transcript_assignment.csv"));
    if !header_starts(&rows, &["transcript_id", "cell", "is_noise"]) {
        bad.push(format!("assignment header {:?}", rows.first()));
        return bad;
    }
    let input: BTreeSet<u64> = input_ids.iter().copied().collect();
    let mut seen = BTreeSet::new();
    let mut csv_cell_of: HashMap<u64, Option<u64>> = HashMap::new();
    for (line, row) in rows.iter().enumerate().skip(1) {
        let Some(id) = row.first().and_then(|t| t.parse::<u64>().ok()) else {
            bad.push(format!(
                "line {}: transcript_id {:?} not an integer",
                line + 1,
                row.first()
            ));
            continue;
        };
        if !input.contains(&id) {
            bad.push(format!("transcript_id {id} not in the input"));
        }
        if !seen.insert(id) {
            bad.push(format!("transcript_id {id} twice"));
        }
        let (cell, noise) = (
            row.get(1).map_or("", String::as_str),
            row.get(2).map_or("", String::as_str),
        );
        let number = match (cell, noise) {
            ("", "true") => None,
            (c, "false") => match cell_number(c) {
                Some(n) => Some(n),
                None => {
                    bad.push(format!("transcript {id}: cell {c:?} is not cell-<N>"));
                    None
                }
            },
            (c, n) => {
                bad.push(format!("transcript {id}: cell {c:?} with is_noise {n:?}"));
                None
            }
        };
        csv_cell_of.insert(id, number);
    }
    if seen.len() != input.len() {
        bad.push(format!(
            "{} transcripts in the CSV, {} in the input",
            seen.len(),
            input.len()
        ));
    }
    let csv_cells: BTreeSet<u64> = csv_cell_of.values().flatten().copied().collect();

    // viz_polygons.geojson: a GeometryCollection of single valid polygons.
    let text = std::fs::read_to_string(dir.join("viz_polygons.geojson")).unwrap();
    let json: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            bad.push(format!("geojson does not parse: {e}"));
            return bad;
        }
    };
    if json["type"] != "GeometryCollection" {
        bad.push(format!("geojson type {}", json["type"]));
    }
    let mut polygon_cells = BTreeSet::new();
    for (k, g) in json["geometries"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(cell) = g["cell"].as_u64().filter(|&n| n >= 1) else {
            bad.push(format!(
                "geometry {k}: cell {} is not an integer ≥ 1",
                g["cell"]
            ));
            continue;
        };
        if !polygon_cells.insert(cell) {
            bad.push(format!("cell {cell}: two polygons"));
        }
        if g["type"] != "Polygon" {
            bad.push(format!("cell {cell}: type {}", g["type"]));
        }
        let rings = g["coordinates"].as_array().cloned().unwrap_or_default();
        if rings.len() != 1 {
            bad.push(format!("cell {cell}: {} rings, expected one", rings.len()));
            continue;
        }
        let ring: Vec<(f64, f64)> = rings[0]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        if ring.len() < 4 || ring.len() != rings[0].as_array().map_or(0, Vec::len) {
            bad.push(format!(
                "cell {cell}: ring of {} finite coordinates",
                ring.len()
            ));
            continue;
        }
        if ring[0] != ring[ring.len() - 1] {
            bad.push(format!("cell {cell}: ring not closed"));
        }
        let polygon = geo::Polygon::new(ring.into(), vec![]);
        if !polygon.is_valid() || polygon.unsigned_area() <= 0.0 {
            bad.push(format!("cell {cell}: invalid polygon"));
        }
    }
    for n in csv_cells.difference(&polygon_cells) {
        bad.push(format!("cell-{n} of the CSV has no polygon"));
    }
    for n in polygon_cells.difference(&csv_cells) {
        bad.push(format!("polygon {n} has no transcript in the CSV"));
    }

    // cell_id_map.csv and the run's own tables.
    let map_rows = csv_rows(&dir.join("cell_id_map.csv"));
    if !header_starts(&map_rows, &["cell", "segger_cell_id", "kind"]) {
        bad.push(format!("cell_id_map header {:?}", map_rows.first()));
        return bad;
    }
    let mut segger_of: BTreeMap<u64, String> = BTreeMap::new();
    for row in &map_rows[1..] {
        match cell_number(&row[0]) {
            Some(n) if segger_of.insert(n, row[1].clone()).is_none() => {}
            _ => bad.push(format!("cell_id_map: bad or repeated {:?}", row[0])),
        }
    }
    if segger_of.keys().copied().collect::<BTreeSet<_>>() != polygon_cells {
        bad.push("cell_id_map and the polygons list different cells".into());
    }
    let cells = read_parquet(&out.join("cells.parquet"));
    let want: BTreeSet<String> = strings(&cells, "id")
        .into_iter()
        .zip(primitives::<arrow::datatypes::UInt64Type>(
            &cells,
            "n_transcripts",
        ))
        .filter(|(_, n)| *n >= min_transcripts.max(1))
        .map(|(id, _)| id)
        .collect();
    let mapped: BTreeSet<String> = segger_of.values().cloned().collect();
    if mapped != want || mapped.len() != segger_of.len() {
        bad.push(format!(
            "cell_id_map lists {} seggpu cells, cells.parquet has {} with ≥ {} transcripts",
            mapped.len(),
            want.len(),
            min_transcripts.max(1)
        ));
    }
    let number_of: HashMap<&String, u64> = segger_of.iter().map(|(n, id)| (id, *n)).collect();
    let tx = read_parquet(&out.join("segger_transcripts.parquet"));
    for (id, segger) in transcript_ids(&tx)
        .into_iter()
        .zip(strings(&tx, "segger_cell_id"))
    {
        let expected = number_of.get(&segger).copied();
        if csv_cell_of.get(&id) != Some(&expected) {
            bad.push(format!(
                "transcript {id} (seggpu {segger}): CSV cell {:?}, expected {expected:?}",
                csv_cell_of.get(&id)
            ));
        }
    }

    // README.txt: the command, on this folder's files, in microns.
    let readme = std::fs::read_to_string(dir.join("README.txt")).unwrap_or_default();
    let abs = std::path::absolute(&dir).unwrap();
    for needle in [
        "xeniumranger import-segmentation".to_string(),
        "--units microns".to_string(),
        format!(
            "--transcript-assignment {}",
            abs.join("transcript_assignment.csv").display()
        ),
        format!(
            "--viz-polygons {}",
            abs.join("viz_polygons.geojson").display()
        ),
    ] {
        if !readme.contains(&needle) {
            bad.push(format!("README.txt lacks {needle:?}"));
        }
    }
    bad
}

fn assert_passes(out: &Path, input_ids: &[u64], min_transcripts: u64) {
    let bad = violations(out, input_ids, min_transcripts);
    assert!(
        bad.is_empty(),
        "{} violations, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}

/// The demo run of two tests: a small simulated sample with a
/// min_transcripts of 100, so that some cells with transcripts are dropped.
fn demo_run(out: &Path) -> Vec<u64> {
    let run = segment(
        &["--demo", "--demo-cells", "120", "--min-transcripts", "100"],
        out,
        &["--outputs", "transcripts,cells"],
    );
    assert_success(&run);
    transcript_ids(&read_parquet(&out.join("demo_input/transcripts.parquet")))
}

#[test]
fn the_demo_folder_follows_the_xenium_ranger_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let ids = demo_run(&out);
    assert_passes(&out, &ids, 100);

    // The rules had something to bite on: filtered rows, and cells with
    // transcripts dropped by min_transcripts (fragments: the crop's test).
    let tx = read_parquet(&out.join("segger_transcripts.parquet"));
    let filtered = strings(&tx, "assignment")
        .iter()
        .filter(|a| *a == "filtered")
        .count();
    assert!(filtered > 0, "the demo has filtered transcripts");
    let cells = read_parquet(&out.join("cells.parquet"));
    let n = primitives::<arrow::datatypes::UInt64Type>(&cells, "n_transcripts");
    assert!(
        n.iter().any(|&n| (1..100).contains(&n)),
        "some cells dropped"
    );
    let readme = std::fs::read_to_string(out.join("xenium_ranger/README.txt")).unwrap();
    assert!(readme.contains("--demo"), "{readme}");
}

#[test]
fn the_xenium_crop_folder_follows_the_xenium_ranger_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = segment(
        &xenium_crop_input(),
        &out,
        &["--outputs", "transcripts,cells"],
    );
    assert_success(&run);
    let ids = transcript_ids(&read_parquet(&data_path(
        "xenium_breast_spatialdata/points.parquet",
    )));
    assert_passes(&out, &ids, 5);
    let map = csv_rows(&out.join("xenium_ranger/cell_id_map.csv"));
    assert!(map.iter().any(|r| r[2] == "fragment"), "fragments listed");
    let readme = std::fs::read_to_string(out.join("xenium_ranger/README.txt")).unwrap();
    assert!(readme.contains("--xenium-bundle XENIUM_BUNDLE"), "{readme}");
}

#[test]
fn the_checks_catch_broken_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let ids = demo_run(&out);
    let dir = out.join("xenium_ranger");
    let geojson = dir.join("viz_polygons.geojson");
    let csv = dir.join("transcript_assignment.csv");
    let (good_json, good_csv) = (
        std::fs::read(&geojson).unwrap(),
        std::fs::read(&csv).unwrap(),
    );
    let polygons: serde_json::Value = serde_json::from_slice(&good_json).unwrap();

    let broken =
        |what: &str, json: Option<serde_json::Value>, csv_text: Option<String>, expect: &str| {
            std::fs::write(
                &geojson,
                json.map_or(good_json.clone(), |j| j.to_string().into_bytes()),
            )
            .unwrap();
            std::fs::write(&csv, csv_text.map_or(good_csv.clone(), String::into_bytes)).unwrap();
            let bad = violations(&out, &ids, 100);
            assert!(bad.iter().any(|b| b.contains(expect)), "{what}: {bad:?}");
        };
    let mut j = polygons.clone();
    j["geometries"].as_array_mut().unwrap().pop();
    broken("a polygon left out", Some(j), None, "has no polygon");
    let mut j = polygons.clone();
    j["geometries"][0]["coordinates"] =
        serde_json::json!([[[0.0, 0.0], [2.0, 2.0], [2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]]);
    broken("a bow tie", Some(j), None, "invalid polygon");
    let mut j = polygons.clone();
    j["geometries"][0]["cell"] = serde_json::json!("1");
    broken("a text cell id", Some(j), None, "is not an integer");
    let mut j = polygons.clone();
    j["type"] = serde_json::json!("FeatureCollection");
    broken("a FeatureCollection", Some(j), None, "geojson type");
    let text = String::from_utf8(good_csv.clone()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let first = lines[1].replacen(&ids[0].to_string(), "7", 1);
    lines[1] = &first;
    broken(
        "an unknown id",
        None,
        Some(lines.join("\n")),
        "not in the input",
    );
    let noisy = text.replacen(",false,", ",true,", 1);
    broken("a cell marked noise", None, Some(noisy), "with is_noise");
    std::fs::write(&geojson, &good_json).unwrap();
    std::fs::write(&csv, &good_csv).unwrap();
    assert_passes(&out, &ids, 100);
}

#[test]
fn inputs_without_xenium_transcript_ids_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // In memory, and with --max-memory reading in batches (the id pass).
    let refused = |name: &str, input: Vec<String>, extra: &[&str], expect: &str| {
        let batched = [extra, &["--max-memory", "1G"]].concat();
        for (name, extra) in [
            (name.to_string(), extra),
            (format!("{name}_batched"), &batched),
        ] {
            let out = tmp.path().join(&name);
            let run = segment(&input, &out, extra);
            assert_failure(&run, "--xenium-ranger");
            assert_failure(&run, expect);
            let left: Vec<PathBuf> = std::fs::read_dir(&out)
                .map(|d| d.map(|e| e.unwrap().path()).collect())
                .unwrap_or_default();
            assert!(
                left.iter().all(|p| p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))),
                "{name}: outputs left {left:?}"
            );
        }
    };
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    refused(
        "merscope",
        vec![
            "--preset".into(),
            "merscope".into(),
            "--transcripts".into(),
            s(data_path("merscope_mouse_brain_mini/vizgen_transcripts.gz")),
            "--boundaries".into(),
            s(data_path("merscope_mouse_brain_mini/z0_polygons.gz")),
            "--model".into(),
            s(data_path("merscope_mouse_brain_model.safetensors")),
        ],
        &[],
        "--preset merscope",
    );
    // Refused before training: were training first, the missing --init
    // model would be the error instead.
    refused(
        "merscope_train",
        vec![
            "--preset".into(),
            "merscope".into(),
            "--transcripts".into(),
            s(data_path("merscope_mouse_brain_mini/vizgen_transcripts.gz")),
            "--boundaries".into(),
            s(data_path("merscope_mouse_brain_mini/z0_polygons.gz")),
        ],
        &["--train", "--init", "/nonexistent/init.safetensors"],
        "--preset merscope",
    );
    refused(
        "row_index",
        xenium_crop_input(),
        &["--id-col", "none"],
        "no transcript id column",
    );
    for (name, ids) in [("text_ids", ["t1", "t2"]), ("decimal_ids", ["1.5", "2.5"])] {
        let transcripts = write_file(
            tmp.path(),
            &format!("{name}.csv"),
            format!(
                "transcript_id,x,y,feature_name\n{},1,1,A\n{},2,2,A\n",
                ids[0], ids[1]
            ),
        );
        refused(
            name,
            vec![
                "--preset".into(),
                "spatialdata".into(),
                "--transcripts".into(),
                s(transcripts),
                "--boundaries".into(),
                s(one_nucleus_csv(tmp.path())),
                "--model".into(),
                s(demo_model()),
            ],
            &[],
            "Xenium transcript ids are integers",
        );
    }
}

/// Xenium Ranger fails on a cell without a transcript of qv ≥ 20 (proseg
/// #66): below the default `--qv-min 20` such cells can occur, and the run
/// says how many.
#[test]
fn cells_without_a_q20_transcript_are_counted_in_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tx = String::from("transcript_id,x_location,y_location,z_location,feature_name,qv\n");
    for i in 0..8 {
        let (x, y) = (2.0 + (i % 4) as f64, 2.0 + (i / 4) as f64 * 3.0);
        tx.push_str(&format!("{},{x},{y},1.0,ADI00{},10\n", i + 1, 1 + i % 4));
    }
    let transcripts = write_file(tmp.path(), "transcripts.csv", tx);
    let nuclei = write_file(
        tmp.path(),
        "nuclei.csv",
        "cell_id,vertex_x,vertex_y\na,0,0\na,10,0\na,10,10\na,0,10\n",
    );
    // In memory, and reading and writing in batches.
    for (name, extra) in [("out", &[][..]), ("batched", &["--max-memory", "1G"])] {
        let out = tmp.path().join(name);
        let run = crate::common::seggpu()
            .arg("segment")
            .args(["--preset", "xenium", "--transcripts"])
            .arg(&transcripts)
            .arg("--boundaries")
            .arg(&nuclei)
            .arg("--model")
            .arg(demo_model())
            .arg("--out")
            .arg(&out)
            .args(["--backend", "cpu", "--xenium-ranger", "--outputs", "cells"])
            .args([
                "--qv-min",
                "0",
                "--score-cut",
                "0",
                "--min-transcripts",
                "1",
            ])
            .args(extra)
            .output()
            .expect("run seggpu");
        let stderr = assert_success(&run);
        assert!(
            stderr.contains("1 of 1 cells have no transcript of qv >= 20"),
            "{name}: {stderr}"
        );
        let log: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("segmentation_log.json")).unwrap())
                .unwrap();
        assert_eq!(
            log["streaming"]["largest_rows_held"].is_u64(),
            name == "batched",
            "{name} read in batches"
        );
    }
}

/// The files of the folder whose bytes do not name the output folder.
const DATA_FILES: &[&str] = &[
    "transcript_assignment.csv",
    "viz_polygons.geojson",
    "cell_id_map.csv",
];

/// Runs `input` with `--xenium-ranger` in memory, then with `--max-memory`
/// (one tile per bucket, small batches, many point files) holding every
/// row (the test hook) and reading and writing in batches, in the same
/// output folder (README.txt names it): the batched run's folder is the
/// rows-held run's byte for byte and its data files are the in-memory
/// run's; the batched run held no more rows than two batches. Returns the
/// batched output folder and its stderr.
fn batched_folder_agrees(
    tmp: &Path,
    input: &[String],
    extra: &[&str],
    least_buckets: u64,
) -> (PathBuf, String) {
    // Not --quiet: the q20 warning is compared.
    let command = |out: &Path, extra: &[&str]| {
        let mut command = crate::common::seggpu();
        command
            .arg("segment")
            .args(input)
            .arg("--out")
            .arg(out)
            .args(["--backend", "cpu", "--xenium-ranger"])
            .args(extra);
        command
    };
    let memory = tmp.join("memory");
    let memory_stderr = assert_success(&command(&memory, extra).output().expect("run seggpu"));
    let mut flags = extra.to_vec();
    flags.extend(["--max-memory", "2G", "--bucket-tiles", "1"]);
    let run = |out: &Path, rows_held: bool| {
        let mut command = command(out, &flags);
        small_batches(&mut command, rows_held);
        assert_success(&command.output().expect("run seggpu"))
    };
    // The batched run stays in `out`, which its README.txt names.
    let (batched, held) = (tmp.join("out"), tmp.join("held"));
    run(&batched, true);
    std::fs::rename(&batched, &held).unwrap();
    let stderr = run(&batched, false);

    let log = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("segmentation_log.json")).unwrap()).unwrap()
    };
    let facts = &log(&batched)["streaming"];
    println!("{facts}");
    assert!(
        log(&held)["streaming"]["largest_rows_held"].is_null(),
        "the hook holds every row"
    );
    let rows = log(&batched)["result"]["counts"]["read"].as_u64().unwrap();
    // The reader's batch and those it decodes ahead, the written batch and
    // those the transcripts table's writer thread encodes.
    let bound = ((1 + READ_AHEAD) * BATCH_ROWS + (1 + WRITE_AHEAD) * WRITE_ROWS) as u64;
    let held_rows = facts["largest_rows_held"].as_u64().unwrap();
    assert!(rows > 2 * bound, "{rows} rows are too few to tell batches");
    assert!(
        held_rows <= bound,
        "{held_rows} rows held at once, more than the reader's and the writer's batches ({bound})"
    );
    assert!(
        facts["buckets"].as_u64().unwrap() >= least_buckets,
        "{facts}"
    );
    assert_eq!(log(&batched)["outputs"], log(&memory)["outputs"]);
    let folder = |dir: &Path| dir.join("xenium_ranger");
    let mut names: Vec<String> = std::fs::read_dir(folder(&batched))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "README.txt",
            "cell_id_map.csv",
            "transcript_assignment.csv",
            "viz_polygons.geojson"
        ]
    );
    for name in &names {
        let read = |dir: &Path| std::fs::read(folder(dir).join(name)).unwrap();
        assert!(
            read(&held) == read(&batched),
            "{name} differs between the rows-held and the batched run"
        );
        if DATA_FILES.contains(&name.as_str()) {
            assert!(
                read(&memory) == read(&batched),
                "{name} differs between the in-memory and the batched run"
            );
        }
    }
    // The q20 warning counts the same cells.
    let q20 = |stderr: &str| {
        stderr
            .lines()
            .find(|l| l.contains("qv >= 20"))
            .map(|l| l[l.find("--xenium-ranger").unwrap_or(0)..].to_string())
    };
    assert_eq!(q20(&stderr), q20(&memory_stderr));
    let left: Vec<String> = std::fs::read_dir(&batched)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".seggpu-"))
        .collect();
    assert!(left.is_empty(), "spill folders left: {left:?}");
    (batched, stderr)
}

/// The real crop below the default `--qv-min` with small cells: some have
/// no transcript of qv ≥ 20, which both runs count alike.
#[test]
fn the_xenium_crop_folder_is_written_in_batches_with_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (batched, stderr) = batched_folder_agrees(
        tmp.path(),
        &xenium_crop_input(),
        &[
            "--tile-size",
            "60",
            "--qv-min",
            "0",
            "--min-transcripts",
            "3",
            "--outputs",
            "transcripts,cells",
        ],
        10,
    );
    assert!(
        stderr.contains("cells have no transcript of qv >= 20"),
        "the q20 check has cells to count: {stderr}"
    );
    let ids = transcript_ids(&read_parquet(&data_path(
        "xenium_breast_spatialdata/points.parquet",
    )));
    assert_passes(&batched, &ids, 3);
}

/// The demo-sized simulated Xenium folder, with cells dropped by
/// `--min-transcripts` (numbered around).
#[test]
fn a_simulated_folder_is_written_in_batches_with_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = crate::common::simulated_xenium(tmp.path(), "input", 300);
    let input = crate::common::segment::simulated_input(&input);
    let (batched, _) = batched_folder_agrees(
        tmp.path(),
        &input,
        &[
            "--tile-size",
            "100",
            "--min-transcripts",
            "100",
            "--outputs",
            "transcripts,cells",
        ],
        4,
    );
    let ids = transcript_ids(&read_parquet(&tmp.path().join("input/transcripts.parquet")));
    assert_passes(&batched, &ids, 100);
    let cells = read_parquet(&batched.join("cells.parquet"));
    let n = primitives::<arrow::datatypes::UInt64Type>(&cells, "n_transcripts");
    assert!(
        n.iter().any(|&n| (1..100).contains(&n)),
        "some cells dropped"
    );
}
