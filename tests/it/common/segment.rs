//! `seggpu segment` as the output tests run it: on the CPU, quiet, with
//! the input flags of a simulated folder or of the real Xenium crop.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use super::{data_path, demo_model, seggpu};

/// `seggpu segment INPUT --out OUT --backend cpu --quiet EXTRA`.
pub fn segment_cpu<S: AsRef<OsStr>>(input: &[S], out: &Path, extra: &[&str]) -> Output {
    seggpu()
        .arg("segment")
        .args(input)
        .arg("--out")
        .arg(out)
        .args(["--backend", "cpu", "--quiet"])
        .args(extra)
        .output()
        .expect("run seggpu")
}

/// A Xenium folder (`seggpu simulate`) with the built-in demo model.
pub fn simulated_input(folder: &Path) -> Vec<String> {
    vec![
        "--xenium".into(),
        folder.display().to_string(),
        "--model".into(),
        demo_model().display().to_string(),
    ]
}

/// The real Xenium crop of `tests/data` (SpatialData export) with its model.
pub fn xenium_crop_input() -> Vec<String> {
    let path = |p: &str| data_path(p).display().to_string();
    vec![
        "--preset".into(),
        "spatialdata".into(),
        "--transcripts".into(),
        path("xenium_breast_spatialdata/points.parquet"),
        "--boundaries".into(),
        path("xenium_breast_spatialdata/sd_nucleus_boundaries.parquet"),
        "--model".into(),
        path("xenium_breast_model.safetensors"),
    ]
}

/// The real MERSCOPE crop of `tests/data` (polygons with negated y) with its model.
pub fn merscope_crop_input() -> Vec<String> {
    let path = |p: &str| data_path(p).display().to_string();
    vec![
        "--transcripts".into(),
        path("merscope_mouse_brain_mini/vizgen_transcripts.gz"),
        "--boundaries".into(),
        path("merscope_mouse_brain_mini/z0_polygons.gz"),
        "--boundary-y-scale".into(),
        "-1".into(),
        "--model".into(),
        path("merscope_mouse_brain_model.safetensors"),
    ]
}

/// Rows per reader batch and per written batch, and cells per file of
/// spilled cell points, in the tests' batched runs: far fewer than the
/// inputs hold, so that many batches and point files are crossed.
pub const BATCH_ROWS: usize = 1000;
pub const WRITE_ROWS: usize = 2048;
pub const CELLS_PER_FILE: usize = 7;

/// Sets the test-only size overrides of the batched flow on `command`
/// ([`BATCH_ROWS`], [`WRITE_ROWS`], [`CELLS_PER_FILE`]) and, with
/// `rows_held`, the rows-held flow instead of the batched one.
pub fn small_batches(command: &mut std::process::Command, rows_held: bool) {
    command
        .env(seggpu::io::table::BATCH_ROWS_ENV, BATCH_ROWS.to_string())
        .env(
            seggpu::pipeline::stream::WRITE_ROWS_ENV,
            WRITE_ROWS.to_string(),
        )
        .env(
            seggpu::output::aggregate::CELLS_PER_FILE_ENV,
            CELLS_PER_FILE.to_string(),
        );
    if rows_held {
        command.env(seggpu::pipeline::run::ROWS_HELD_ENV, "1");
    }
}
