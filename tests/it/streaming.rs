//! The bucketed path (`--max-memory`, docs/streaming.md): the same output
//! files as the in-memory path, byte for byte, with several buckets and
//! their borders, also when the input is read and the tables written in
//! batches (`--outputs transcripts,cells`), which must never hold all
//! rows; `--resume` after a kill; a full `--tmp-dir`.

use std::path::{Path, PathBuf};
use std::process::Output;

#[cfg(unix)]
use crate::common::seggpu_with_file_limit;
use crate::common::segment::{
    merscope_crop_input, segment_cpu, small_batches, xenium_crop_input, BATCH_ROWS, WRITE_ROWS,
};
use crate::common::{assert_failure, assert_success, data_path, demo_model, seggpu};
use seggpu::io::table::READ_AHEAD;
use seggpu::output::WRITE_AHEAD;

/// Outputs whose bytes do not depend on the command line (the AnnData and
/// SpatialData stores record it under `uns/seggpu/command_line`, the report
/// and the log the timings too).
const SAME_FILES: &[&str] = &[
    "segger_transcripts.parquet",
    "cells.parquet",
    "segger_transcripts.csv",
    "cells.csv",
    "cell_boundaries.parquet",
    "cell_boundaries.geojson",
];

/// The store folders, compared file by file except the command line.
const SAME_STORES: &[&str] = &["cells.anndata.zarr", "segmentation.zarr"];

fn log(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("segmentation_log.json")).unwrap()).unwrap()
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Asserts that the outputs of `a` and `b` are the same bytes.
fn assert_same_outputs(a: &Path, b: &Path) {
    let mut compared = 0;
    for name in SAME_FILES {
        let (x, y) = (a.join(name), b.join(name));
        if !x.exists() {
            continue;
        }
        assert!(
            std::fs::read(&x).unwrap() == std::fs::read(&y).unwrap(),
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
        compared += 1;
    }
    for store in SAME_STORES {
        let (x, y) = (a.join(store), b.join(store));
        if !x.exists() {
            continue;
        }
        let files = files_under(&x);
        assert_eq!(files, files_under(&y), "{store} holds other files");
        for f in files {
            if f.to_string_lossy().contains("command_line") {
                continue;
            }
            assert!(
                std::fs::read(x.join(&f)).unwrap() == std::fs::read(y.join(&f)).unwrap(),
                "{store}/{} differs",
                f.display()
            );
            compared += 1;
        }
    }
    assert!(compared >= 2, "nothing was compared under {}", a.display());
}

/// Whether any spill folder is left in `dir`.
fn spill_left(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| {
        d.any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".seggpu-spill-")
        })
    })
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs `input` in memory and bucketed (one tile per bucket) and compares.
fn in_memory_and_bucketed_agree(input: &[&str], extra: &[&str], least_buckets: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let memory = tmp.path().join("memory");
    assert_success(&segment_cpu(input, &memory, extra));
    let bucketed = tmp.path().join("bucketed");
    let mut flags = extra.to_vec();
    flags.extend(["--max-memory", "2G", "--bucket-tiles", "1"]);
    assert_success(&segment_cpu(input, &bucketed, &flags));
    assert_same_outputs(&memory, &bucketed);
    let facts = &log(&bucketed)["streaming"];
    println!("{facts}");
    assert!(
        facts["buckets"].as_u64().unwrap() >= least_buckets,
        "{facts}"
    );
    assert!(facts["recompute_factor"].as_f64().unwrap() > 1.0, "{facts}");
    assert_eq!(
        log(&bucketed)["result"]["counts"],
        log(&memory)["result"]["counts"]
    );
    assert!(log(&bucketed)["peak_rss_bytes"].as_u64().unwrap_or(1) > 0);
    assert!(!spill_left(&bucketed), "the spill folder is removed");
}

#[test]
fn the_demo_gives_the_same_outputs_bucketed() {
    in_memory_and_bucketed_agree(
        &["--demo", "--demo-cells", "300"],
        &["--tile-size", "100"],
        6,
    );
}

#[test]
fn the_real_xenium_crop_gives_the_same_outputs_bucketed() {
    let input = xenium_crop_input();
    in_memory_and_bucketed_agree(
        &strs(&input),
        &[
            "--tile-size",
            "60",
            "--outputs",
            "transcripts,cells,polygons",
        ],
        10,
    );
}

#[test]
fn the_real_merscope_crop_gives_the_same_outputs_bucketed() {
    let input = merscope_crop_input();
    in_memory_and_bucketed_agree(
        &strs(&input),
        &[
            "--tile-size",
            "60",
            "--outputs",
            "transcripts,cells,polygons",
        ],
        50,
    );
}

/// Scores the statistics sort at once: far fewer than the inputs hold, so
/// that the scores are walked in many groups and some bins value by value.
const SORT_GROUP: usize = 700;
/// Spill files open at once: fewer than the buckets, so that the results
/// are merged through intermediate files (twice over 49 buckets or more).
const OPEN_FILES: usize = 7;
/// Id keys the id check holds before it partitions them on disk.
const ID_RUN: usize = 1500;

/// Runs `input` in memory and with `--max-memory` reading and writing in
/// batches (`--outputs transcripts,cells`, one tile per bucket, small
/// batches) and compares; the batched run must never have held more rows
/// than the reader's batches (the one worked on and those decoded ahead)
/// and the writer's (the rows waiting and the batches being encoded).
fn in_memory_and_batched_agree(input: &[&str], extra: &[&str], least_buckets: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let mut flags = extra.to_vec();
    flags.extend(["--outputs", "transcripts,cells"]);
    let memory = tmp.path().join("memory");
    assert_success(&segment_cpu(input, &memory, &flags));
    let batched = tmp.path().join("batched");
    let run = seggpu()
        .arg("segment")
        .args(input)
        .arg("--out")
        .arg(&batched)
        .args(["--backend", "cpu", "--quiet"])
        .args(&flags)
        .args(["--max-memory", "2G", "--bucket-tiles", "1"])
        .env(seggpu::io::table::BATCH_ROWS_ENV, BATCH_ROWS.to_string())
        .env(
            seggpu::pipeline::stream::WRITE_ROWS_ENV,
            WRITE_ROWS.to_string(),
        )
        .env(
            seggpu::pipeline::stream::SORT_GROUP_ENV,
            SORT_GROUP.to_string(),
        )
        .env(
            seggpu::pipeline::stream::OPEN_FILES_ENV,
            OPEN_FILES.to_string(),
        )
        .env(seggpu::io::ID_RUN_ENV, ID_RUN.to_string())
        .output()
        .expect("run seggpu");
    assert_success(&run);
    assert_same_outputs(&memory, &batched);
    // The score statistics (and the knee of --score-cut auto) from the
    // sorted groups equal those of sorting every score at once.
    for key in ["scores", "score_cut", "fragments"] {
        assert_eq!(
            log(&batched)["result"][key],
            log(&memory)["result"][key],
            "{key}"
        );
    }
    let facts = &log(&batched)["streaming"];
    println!("{facts}");
    assert!(
        facts["buckets"].as_u64().unwrap() >= least_buckets,
        "{facts}"
    );
    assert_eq!(
        log(&batched)["result"]["counts"],
        log(&memory)["result"]["counts"]
    );
    assert_eq!(log(&batched)["membership"], log(&memory)["membership"]);
    let rows = log(&batched)["result"]["counts"]["read"].as_u64().unwrap();
    let held = facts["largest_rows_held"].as_u64().unwrap();
    // The batch being worked on and those the reader thread decodes ahead;
    // the rows waiting to be written and the batches the writer encodes.
    let bound = ((1 + READ_AHEAD) * BATCH_ROWS + (1 + WRITE_AHEAD) * WRITE_ROWS) as u64;
    assert!(
        rows > 2 * bound,
        "{rows} rows are too few to tell batches from the whole input"
    );
    assert!(
        held <= bound,
        "{held} rows were held at once, more than the reader's and the writer's batches ({bound})"
    );
    // No structure holds an item per input row: the largest is a batch, a
    // bucket's records, a sorted group of scores or the fragment nodes.
    let items = facts["largest_items_held"].as_u64().unwrap();
    let kept = log(&batched)["result"]["counts"]["kept"].as_u64().unwrap();
    let fragment_transcripts = log(&batched)["result"]["fragments"]["fragment_transcripts"]
        .as_u64()
        .unwrap_or(0);
    let records = facts["largest_bucket_records"].as_u64().unwrap();
    let allowed = records
        .max(bound)
        .max(SORT_GROUP as u64)
        .max(fragment_transcripts);
    assert!(
        items <= allowed,
        "{items} items held at once, more than a bucket ({records} records), a batch ({bound}), a sorted group ({SORT_GROUP}) or the fragment transcripts ({fragment_transcripts})"
    );
    if least_buckets >= 10 {
        assert!(
            items < kept,
            "{items} items held at once for {kept} kept transcripts in {} buckets",
            facts["buckets"]
        );
    }
    assert!(!spill_left(&batched), "the spill folder is removed");
    assert!(!nuclei_left(&batched), "the nuclei's polygons are removed");
    // The memory at the end of every phase, nuclei read first.
    if cfg!(target_os = "linux") {
        let phases = facts["rss_by_phase"].as_array().expect("rss_by_phase");
        let names: Vec<&str> = phases
            .iter()
            .map(|p| p["phase"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "read nuclei",
                "read+spill",
                "score",
                "assign+fragments",
                "transcripts+cells"
            ]
        );
        for p in phases {
            assert!(p["rss_bytes"].as_u64().unwrap() <= p["peak_rss_bytes"].as_u64().unwrap());
        }
    }
}

#[test]
fn a_simulated_sample_is_read_and_written_in_batches_with_the_same_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = crate::common::simulated_xenium(tmp.path(), "input", 300);
    let args = xenium_args(&input, &demo_model());
    let args = strs(&args);
    in_memory_and_batched_agree(&args, &["--tile-size", "100", "--score-cut", "auto"], 4);
}

#[test]
fn the_real_xenium_crop_is_read_and_written_in_batches_with_the_same_outputs() {
    let input = xenium_crop_input();
    in_memory_and_batched_agree(&strs(&input), &["--tile-size", "60"], 10);
}

#[test]
fn the_real_merscope_crop_is_read_and_written_in_batches_with_the_same_csv_outputs() {
    let input = merscope_crop_input();
    in_memory_and_batched_agree(
        &strs(&input),
        &["--tile-size", "60", "--table-format", "csv"],
        50,
    );
}

/// Whether a folder named `prefix…` is left in `dir`.
fn scratch_left(dir: &Path, prefix: &str) -> bool {
    std::fs::read_dir(dir)
        .is_ok_and(|mut d| d.any(|e| e.unwrap().file_name().to_string_lossy().starts_with(prefix)))
}

/// Whether a spill folder of the batched flow's cell points is left in `dir`.
fn cell_points_left(dir: &Path) -> bool {
    scratch_left(dir, ".seggpu-cell-points-")
}

/// Whether the batched flow's spilled nucleus polygons are left in `dir`.
fn nuclei_left(dir: &Path) -> bool {
    scratch_left(dir, ".seggpu-nuclei-")
}

/// The report: the same page but for its stage seconds.
const REPORT: &str = "segmentation_report.html";

/// The report without its section of stage seconds (which differ from run
/// to run).
fn without_stage_seconds(page: &[u8]) -> Vec<u8> {
    let page = String::from_utf8(page.to_vec()).expect("the report is UTF-8");
    let start = page
        .find("<section id=\"stages\">")
        .expect("the report has its stages section");
    let end = start
        + page[start..]
            .find("</section>")
            .expect("the stages section ends");
    format!("{}{}", &page[..start], &page[end..]).into_bytes()
}

/// Runs `input` with `--outputs outputs` in memory, with `--max-memory`
/// holding every row (the test hook, so the command line is the batched
/// run's) and reading and writing in batches (one tile per bucket, small
/// batches, many files of cell points): the batched run's files are those of the in-memory run (the
/// stores but for the recorded command line) and every file of the
/// rows-held run byte for byte (the h5ad included); `expect` must be among
/// them.
fn per_cell_outputs_agree(
    input: &[&str],
    extra: &[&str],
    outputs: &str,
    expect: &[&str],
    least_buckets: u64,
) {
    let tmp = tempfile::tempdir().unwrap();
    let mut flags = extra.to_vec();
    flags.extend(["--outputs", outputs]);
    let memory = tmp.path().join("memory");
    assert_success(&segment_cpu(input, &memory, &flags));
    flags.extend(["--max-memory", "2G", "--bucket-tiles", "1"]);
    let run = |out: &Path, rows_held: bool| {
        let mut command = seggpu();
        command
            .arg("segment")
            .args(input)
            .arg("--out")
            .arg(out)
            .args(["--backend", "cpu", "--quiet"])
            .args(&flags);
        small_batches(&mut command, rows_held);
        assert_success(&command.output().expect("run seggpu"));
    };
    // One output folder for both, moved aside after each run: the command
    // line names it.
    let out = tmp.path().join("out");
    let held = tmp.path().join("held");
    run(&out, true);
    std::fs::rename(&out, &held).unwrap();
    let batched = tmp.path().join("batched");
    run(&out, false);
    std::fs::rename(&out, &batched).unwrap();
    assert!(
        log(&held)["streaming"]["largest_rows_held"].is_null(),
        "the hook holds every row"
    );
    for name in expect {
        assert!(memory.join(name).exists(), "{name} is written");
    }
    assert_same_outputs(&memory, &batched);
    // The outputs, not the staging lock; the log records timings.
    let outputs_under = |dir: &Path| -> Vec<PathBuf> {
        files_under(dir)
            .into_iter()
            .filter(|f| !f.starts_with(".seggpu.lock") && !f.ends_with("segmentation_log.json"))
            .collect()
    };
    let files = outputs_under(&batched);
    assert_eq!(files, outputs_under(&held), "the runs wrote other files");
    let mut compared = 0;
    for f in &files {
        let read = |dir: &Path| {
            let bytes = std::fs::read(dir.join(f)).unwrap();
            if f.ends_with(REPORT) {
                without_stage_seconds(&bytes)
            } else {
                bytes
            }
        };
        assert!(
            read(&held) == read(&batched),
            "{} differs between the rows-held and the batched run",
            f.display()
        );
        compared += 1;
    }
    assert!(compared > expect.len(), "{compared} files compared");
    assert_eq!(log(&batched)["outputs"], log(&memory)["outputs"]);
    assert_eq!(
        log(&batched)["result"]["counts"],
        log(&memory)["result"]["counts"]
    );
    let facts = &log(&batched)["streaming"];
    println!("{facts}");
    assert!(
        facts["buckets"].as_u64().unwrap() >= least_buckets,
        "{facts}"
    );
    let held_rows = facts["largest_rows_held"].as_u64().unwrap();
    // As in_memory_and_batched_agree, with a writer thread for each of the
    // transcripts table and the SpatialData points.
    let bound = ((1 + READ_AHEAD) * BATCH_ROWS + (1 + 2 * WRITE_AHEAD) * WRITE_ROWS) as u64;
    assert!(
        held_rows <= bound,
        "{held_rows} rows were held at once, more than the reader's and the writer's batches ({bound})"
    );
    assert!(!spill_left(&batched), "the spill folder is removed");
    assert!(!cell_points_left(&batched), "the cell points are removed");
    assert!(!nuclei_left(&batched), "the nuclei's polygons are removed");
}

#[test]
fn the_anndata_is_written_in_batches_with_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = crate::common::simulated_xenium(tmp.path(), "input", 300);
    let args = xenium_args(&input, &demo_model());
    per_cell_outputs_agree(
        &strs(&args),
        &["--tile-size", "100"],
        "transcripts,cells,anndata",
        &["cells.anndata.zarr", "cells.h5ad"],
        4,
    );
}

#[test]
fn the_polygons_of_the_real_xenium_crop_are_written_in_batches_with_the_same_bytes() {
    per_cell_outputs_agree(
        &strs(&xenium_crop_input()),
        &["--tile-size", "60"],
        "cells,polygons",
        &["cell_boundaries.parquet", "cell_boundaries.geojson"],
        10,
    );
}

#[test]
fn the_spatialdata_of_the_real_merscope_crop_is_written_in_batches_with_the_same_bytes() {
    per_cell_outputs_agree(
        &strs(&merscope_crop_input()),
        &["--tile-size", "60", "--table-format", "csv"],
        "transcripts,spatialdata",
        &["segmentation.zarr", "segger_transcripts.csv"],
        50,
    );
}

#[test]
fn every_output_is_written_in_batches_with_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = crate::common::simulated_xenium(tmp.path(), "input", 300);
    let args = xenium_args(&input, &demo_model());
    per_cell_outputs_agree(
        &strs(&args),
        &["--tile-size", "100"],
        "transcripts,cells,polygons,anndata,spatialdata,report",
        &[
            "segger_transcripts.parquet",
            "cell_boundaries.parquet",
            "cells.h5ad",
            "segmentation.zarr",
            REPORT,
        ],
        4,
    );
}

#[test]
fn the_report_with_nucleus_outlines_is_written_in_batches_with_the_same_page() {
    per_cell_outputs_agree(
        &strs(&xenium_crop_input()),
        &["--tile-size", "60"],
        "transcripts,cells,report",
        &["segger_transcripts.parquet", REPORT],
        10,
    );
}

#[test]
fn reading_in_batches_stops_with_the_errors_of_the_in_memory_path() {
    // The Xenium crop with the MERSCOPE model: genes the model does not know.
    let mut input = xenium_crop_input();
    let model = input
        .last_mut()
        .expect("the crop's flags end with its model");
    *model = data_path("merscope_mouse_brain_model.safetensors")
        .display()
        .to_string();
    let input = strs(&input);
    let tmp = tempfile::tempdir().unwrap();
    let flags = ["--outputs", "transcripts,cells"];
    let memory = segment_cpu(&input, &tmp.path().join("memory"), &flags);
    assert_failure(&memory, "not in the model's vocabulary");
    let mut batched_flags = flags.to_vec();
    batched_flags.extend(["--max-memory", "2G"]);
    let batched = segment_cpu(&input, &tmp.path().join("batched"), &batched_flags);
    assert_failure(&batched, "not in the model's vocabulary");
    assert_eq!(
        String::from_utf8_lossy(&memory.stderr),
        String::from_utf8_lossy(&batched.stderr)
    );
    assert!(!spill_left(&tmp.path().join("batched")));
}

/// A simulated Xenium folder for the runs below.
fn simulated(dir: &Path) -> PathBuf {
    crate::common::simulated_xenium(dir, "input", 150)
}

fn xenium_args(input: &Path, model: &Path) -> Vec<String> {
    vec![
        "--xenium".into(),
        input.to_str().unwrap().into(),
        "--model".into(),
        model.to_str().unwrap().into(),
    ]
}

#[test]
fn overlapped_tiles_within_a_bucket_give_the_same_outputs() {
    // The in-memory run on the CPU scores tile after tile (--overlap
    // auto); the bucketed one builds each bucket's next tile while the
    // backend scores the current one.
    let tmp = tempfile::tempdir().unwrap();
    let input = crate::common::simulated_xenium(tmp.path(), "input", 300);
    let args = xenium_args(&input, &demo_model());
    let args = strs(&args);
    let flags = ["--tile-size", "60", "--outputs", "transcripts,cells"];
    let memory = tmp.path().join("memory");
    assert_success(&segment_cpu(&args, &memory, &flags));
    let overlapped = tmp.path().join("overlapped");
    let run = seggpu()
        .arg("segment")
        .args(&args)
        .arg("--out")
        .arg(&overlapped)
        .args(["--backend", "cpu", "--quiet"])
        .args(flags)
        .args([
            "--max-memory",
            "2G",
            "--bucket-tiles",
            "2",
            "--overlap",
            "on",
        ])
        .output()
        .expect("run seggpu");
    assert_success(&run);
    assert_same_outputs(&memory, &overlapped);
    let facts = &log(&overlapped)["streaming"];
    println!("{facts}");
    assert_eq!(facts["bucket_tiles"], 2, "{facts}");
    assert!(facts["buckets"].as_u64().unwrap() >= 2, "{facts}");
}

#[test]
fn a_run_killed_half_way_resumes_to_the_same_outputs() {
    killed_half_way_and_resumed("transcripts,cells,polygons");
}

#[test]
fn a_run_reading_in_batches_killed_half_way_resumes_to_the_same_outputs() {
    killed_half_way_and_resumed("transcripts,cells");
}

/// Flags that give the small simulated sample several one-tile buckets.
fn one_tile_buckets(outputs: &str) -> [&str; 8] {
    [
        "--tile-size",
        "100",
        "--max-memory",
        "2G",
        "--bucket-tiles",
        "1",
        "--outputs",
        outputs,
    ]
}

/// `segment` on the CPU stopped by the test hook after `steps` bucket steps.
fn segment_killed_after(
    args: &[&str],
    out: &Path,
    flags: &[&str],
    steps: impl AsRef<std::ffi::OsStr>,
) -> Output {
    seggpu()
        .arg("segment")
        .args(args)
        .arg("--out")
        .arg(out)
        .args(["--backend", "cpu", "--quiet"])
        .args(flags)
        .env(seggpu::pipeline::stream::ABORT_AFTER_ENV, steps)
        .output()
        .expect("run seggpu")
}

fn killed_half_way_and_resumed(outputs: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated(tmp.path());
    let model = demo_model();
    let args = xenium_args(&input, &model);
    let args = strs(&args);
    let flags = one_tile_buckets(outputs);
    let whole = tmp.path().join("whole");
    assert_success(&segment_cpu(&args, &whole, &flags));
    let buckets = log(&whole)["streaming"]["buckets"].as_u64().unwrap();
    assert!(buckets >= 4, "{buckets} buckets");
    // Score and fragment steps are one per bucket each; stop half way.
    let half = buckets.to_string();
    let out = tmp.path().join("resumed");
    let killed = segment_killed_after(&args, &out, &flags, half);
    assert!(!killed.status.success(), "the hook stops the run");
    assert!(
        !out.join("segger_transcripts.parquet").exists(),
        "no output of the killed run"
    );
    assert!(spill_left(&out), "the killed run leaves its buckets");
    let mut resume = flags.to_vec();
    resume.push("--resume");
    assert_success(&segment_cpu(&args, &out, &resume));
    let reused = log(&out)["streaming"]["bucket_steps_reused"]
        .as_u64()
        .unwrap();
    assert_eq!(reused, buckets, "the finished score buckets are reused");
    assert_same_outputs(&whole, &out);
    assert!(!spill_left(&out));

    // Without --resume the leftovers of a killed run are not reused.
    let fresh = tmp.path().join("fresh");
    let killed = segment_killed_after(&args, &fresh, &flags, "1");
    assert!(!killed.status.success());
    assert_success(&segment_cpu(&args, &fresh, &flags));
    assert_eq!(log(&fresh)["streaming"]["bucket_steps_reused"], 0);
    assert_same_outputs(&whole, &fresh);
}

#[test]
fn a_run_killed_with_the_next_bucket_loading_resumes_from_the_finished_ones() {
    // Each bucket's records are loaded on a thread while the bucket before
    // is scored; a kill after some score steps finds the next bucket loaded
    // (or loading) ahead, which must not count as finished.
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated(tmp.path());
    let model = demo_model();
    let args = xenium_args(&input, &model);
    let args = strs(&args);
    let flags = one_tile_buckets("transcripts,cells");
    let whole = tmp.path().join("whole");
    assert_success(&segment_cpu(&args, &whole, &flags));
    let facts = &log(&whole)["streaming"];
    let buckets = facts["buckets"].as_u64().unwrap();
    assert!(buckets >= 4, "{buckets} buckets");
    // Every score and fragment step but the first of each stage had its
    // bucket loaded ahead.
    assert_eq!(facts["buckets_loaded_ahead"], 2 * (buckets - 1), "{facts}");
    let finished = buckets / 2;
    let out = tmp.path().join("resumed");
    let killed = segment_killed_after(&args, &out, &flags, finished.to_string());
    assert!(!killed.status.success(), "the hook stops the run");
    assert!(spill_left(&out), "the killed run leaves its buckets");
    let mut resume = flags.to_vec();
    resume.push("--resume");
    assert_success(&segment_cpu(&args, &out, &resume));
    let facts = &log(&out)["streaming"];
    assert_eq!(
        facts["bucket_steps_reused"], finished,
        "only the buckets scored before the kill are reused: {facts}"
    );
    assert_same_outputs(&whole, &out);
    assert!(!spill_left(&out));
}

#[cfg(unix)]
#[test]
fn a_full_tmp_dir_is_a_clear_error_and_leaves_nothing() {
    full_tmp_dir(
        &[
            "--outputs",
            "transcripts,cells,polygons,anndata,spatialdata,report",
        ],
        16,
    );
}

#[cfg(unix)]
#[test]
fn a_full_tmp_dir_reading_in_batches_is_a_clear_error_and_leaves_nothing() {
    // 16 blocks: the nuclei's polygons, the first file spilled, do not fit.
    let stderr = full_tmp_dir(&["--outputs", "transcripts,cells"], 16);
    assert!(stderr.contains("polygons.bin"), "{stderr}");
    // 256 blocks hold the polygons (150 nuclei, about 30 vertices of 16
    // bytes each), not the records of the transcripts.
    let stderr = full_tmp_dir(&["--outputs", "transcripts,cells"], 256);
    assert!(!stderr.contains("polygons.bin"), "{stderr}");
}

/// A run whose files may not exceed `blocks` blocks fails naming the spill
/// file and `--tmp-dir`, leaving no output and no spill folder; returns its
/// stderr.
#[cfg(unix)]
fn full_tmp_dir(outputs: &[&str], blocks: u32) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated(tmp.path());
    let out = tmp.path().join("out");
    let spill = tmp.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    let run = seggpu_with_file_limit(blocks)
        .args(["segment", "--xenium"])
        .arg(&input)
        .arg("--model")
        .arg(demo_model())
        .arg("--out")
        .arg(&out)
        .arg("--tmp-dir")
        .arg(&spill)
        .args(["--max-memory", "2G", "--backend", "cpu", "--quiet"])
        .args(outputs)
        .output()
        .expect("run seggpu under a file size limit");
    assert_failure(&run, "cannot write spill file");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--tmp-dir"), "{stderr}");
    assert!(!spill_left(&spill), "the spill folder is removed");
    assert!(!nuclei_left(&spill), "the nuclei's polygons are removed");
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| n.to_string_lossy().starts_with(".seggpu")),
        "outputs left: {left:?}"
    );
    stderr.into_owned()
}

#[test]
fn a_budget_too_small_for_one_tile_is_refused_before_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = segment_cpu(
        &["--demo", "--demo-cells", "60"],
        &out,
        &["--max-memory", "1M"],
    );
    assert_failure(&run, "--max-memory");
    assert!(!out.join("segger_transcripts.parquet").exists());
    let bad = seggpu()
        .args(["segment", "--demo", "--out"])
        .arg(tmp.path().join("bad"))
        .args(["--max-memory", "lots"])
        .output()
        .unwrap();
    assert_failure(&bad, "not a size");
    let alone = seggpu()
        .args(["segment", "--demo", "--out"])
        .arg(tmp.path().join("alone"))
        .args(["--resume"])
        .output()
        .unwrap();
    assert_failure(&alone, "--max-memory");
}

#[test]
fn repeated_ids_checked_in_partitions_on_disk_give_the_in_memory_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bd = crate::common::one_nucleus_csv(tmp.path());
    let model = demo_model().display().to_string();
    // Ids 5 and 7 repeat; 5, the smaller, is named with its first rows.
    for (name, id) in [("numbers.csv", "{}"), ("texts.csv", "t{:02}")] {
        let mut csv = String::from("transcript_id,x_location,y_location,feature_name\n");
        for row in 1..=60usize {
            let v = match row {
                31 | 50 => 5,
                44 => 7,
                r => r + 100,
            };
            let v = if row == 12 { 7 } else { v };
            let v = if row == 11 { 5 } else { v };
            let text = id
                .replace("{}", &v.to_string())
                .replace("{:02}", &format!("{v:02}"));
            csv.push_str(&format!("{text},{row},{row},A\n"));
        }
        let tx = crate::common::write_file(tmp.path(), name, csv);
        let input = [
            "--preset",
            "xenium",
            "--transcripts",
            tx.to_str().unwrap(),
            "--boundaries",
            bd.to_str().unwrap(),
            "--model",
            &model,
        ];
        let flags = ["--outputs", "transcripts,cells"];
        let memory = segment_cpu(&input, &tmp.path().join("memory"), &flags);
        let expected = if name == "numbers.csv" {
            "id 5 "
        } else {
            "id t05 "
        };
        assert_failure(
            &memory,
            &format!("{expected}appears more than once (rows 11, 31, 50)"),
        );
        let out = tmp.path().join("batched");
        let batched = seggpu()
            .arg("segment")
            .args(input)
            .arg("--out")
            .arg(&out)
            .args(["--backend", "cpu", "--quiet", "--max-memory", "2G"])
            .args(flags)
            .env(seggpu::io::ID_RUN_ENV, "4")
            .output()
            .expect("run seggpu");
        assert_eq!(
            String::from_utf8_lossy(&memory.stderr),
            String::from_utf8_lossy(&batched.stderr)
        );
        let left: Vec<_> = std::fs::read_dir(&out)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.iter()
                .all(|n| !n.to_string_lossy().starts_with(".seggpu-ids")),
            "{left:?}"
        );
    }
}
