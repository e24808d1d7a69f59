//! The memory budget (docs/streaming.md, "Budget"): an input whose
//! estimated in-memory footprint exceeds the default budget runs the
//! bucketed path without `--max-memory`, smaller ones stay in memory; the
//! budget picks the tile size (recorded in the log) without changing a
//! byte of the outputs; a budget too small for the smallest tile is refused
//! before anything is scored, naming a `--max-memory` that fits, and that
//! value does fit.

use std::path::Path;
use std::process::Output;

use crate::common::{assert_failure, assert_success, demo_model, seggpu, simulated_xenium};
use seggpu::pipeline::budget::AVAILABLE_MEMORY_ENV;

fn log(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("segmentation_log.json")).unwrap()).unwrap()
}

/// `seggpu segment` on `input` (CPU, warnings shown) with `available`
/// bytes of available memory for the default budget.
fn segment(input: &Path, out: &Path, available: u64, extra: &[&str]) -> Output {
    seggpu()
        .args(["segment", "--xenium"])
        .arg(input)
        .arg("--model")
        .arg(demo_model())
        .arg("--out")
        .arg(out)
        .args(["--backend", "cpu", "--outputs", "transcripts,cells"])
        .args(extra)
        .env(AVAILABLE_MEMORY_ENV, available.to_string())
        .output()
        .expect("run seggpu")
}

/// Asserts that both tables of `a` and `b` are the same bytes.
fn assert_same_tables(a: &Path, b: &Path) {
    for name in ["segger_transcripts.parquet", "cells.parquet"] {
        assert!(
            std::fs::read(a.join(name)).unwrap() == std::fs::read(b.join(name)).unwrap(),
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn an_input_larger_than_the_default_budget_runs_bucketed_and_a_small_one_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated_xenium(tmp.path(), "input", 300);
    // 44,855 rows × 320 bytes ≈ 14.4 MB in memory. 20 MB available: a
    // 10 MB default budget, which 20 µm tiles with a 5 µm margin fit.
    let flags = ["--tile-size", "20", "--margin", "5"];
    let memory = tmp.path().join("memory");
    let run = segment(&input, &memory, 1 << 40, &flags);
    let stderr = assert_success(&run);
    assert!(!stderr.contains("bucketed"), "{stderr}");
    assert!(log(&memory).get("streaming").is_none(), "stays in memory");

    let bucketed = tmp.path().join("bucketed");
    let run = segment(&input, &bucketed, 20_000_000, &flags);
    let stderr = assert_success(&run);
    assert!(
        stderr.contains("more than the default budget of 10 MB")
            && stderr.contains("running the bucketed path"),
        "{stderr}"
    );
    let facts = &log(&bucketed)["streaming"];
    println!("{facts}");
    assert_eq!(facts["max_memory"], 10_000_000, "{facts}");
    assert!(
        facts["max_memory_source"]
            .as_str()
            .unwrap()
            .starts_with("default: 50% of the 20 MB"),
        "{facts}"
    );
    assert!(facts["buckets"].as_u64().unwrap() >= 2, "{facts}");
    assert_same_tables(&memory, &bucketed);
}

#[test]
fn the_budget_picks_the_tile_size_and_the_outputs_stay_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated_xenium(tmp.path(), "input", 300);
    let memory = tmp.path().join("memory");
    assert_success(&segment(&input, &memory, 1 << 40, &[]));
    assert_eq!(log(&memory)["parameters"]["tile_size"], 400.0);

    let mut sizes = Vec::new();
    for budget in ["150M", "1G"] {
        let out = tmp.path().join(budget);
        assert_success(&segment(&input, &out, 1 << 40, &["--max-memory", budget]));
        let log = log(&out);
        let facts = &log["streaming"];
        println!("{budget}: {facts}");
        let size = facts["tile_size"].as_f64().unwrap();
        assert_eq!(log["parameters"]["tile_size"], size, "the log records it");
        assert_eq!(log["result"]["tiles"]["size"], size);
        assert!(
            facts["tile_size_reason"]
                .as_str()
                .unwrap()
                .starts_with("--max-memory: "),
            "{facts}"
        );
        assert!(facts["recompute_factor"].as_f64().unwrap() >= 1.0);
        assert_same_tables(&memory, &out);
        sizes.push(size);
    }
    assert!(
        sizes[0] < sizes[1],
        "a smaller budget picks a smaller tile: {sizes:?}"
    );

    // --tile-size overrides the choice.
    let given = tmp.path().join("given");
    assert_success(&segment(
        &input,
        &given,
        1 << 40,
        &["--max-memory", "1G", "--tile-size", "60"],
    ));
    let facts = &log(&given)["streaming"];
    assert_eq!(facts["tile_size"], 60.0, "{facts}");
    assert_eq!(facts["tile_size_reason"], "--tile-size", "{facts}");
    assert_same_tables(&memory, &given);
}

/// The `--max-memory` value a refusal names as fitting.
fn fitting_budget(run: &Output) -> String {
    let stderr = String::from_utf8_lossy(&run.stderr);
    let (before, _) = stderr
        .split_once(" or more fits it")
        .unwrap_or_else(|| panic!("no budget that fits is named: {stderr}"));
    before
        .rsplit_once("--max-memory ")
        .expect("the refusal names --max-memory")
        .1
        .to_string()
}

#[test]
fn a_budget_too_small_for_the_smallest_tile_is_refused_naming_one_that_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated_xenium(tmp.path(), "input", 300);
    for picked_or_given in [&[][..], &["--tile-size", "400"][..]] {
        let out = tmp.path().join("small");
        let mut flags = vec!["--max-memory", "30M"];
        flags.extend(picked_or_given);
        let run = segment(&input, &out, 1 << 40, &flags);
        assert_failure(&run, "is too small");
        assert!(!out.join("segger_transcripts.parquet").exists());
        let fits = fitting_budget(&run);
        let out = tmp.path().join(format!("fits{}", picked_or_given.len()));
        flags[1] = &fits;
        assert_success(&segment(&input, &out, 1 << 40, &flags));
        println!("{fits}: {}", log(&out)["streaming"]);
    }
}

#[test]
fn a_budget_too_small_for_the_nuclei_is_refused_before_reading_the_transcripts() {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated_xenium(tmp.path(), "input", 300);
    let out = tmp.path().join("small");
    let run = segment(&input, &out, 1 << 40, &["--max-memory", "100K"]);
    assert_failure(&run, "nuclei of the sample");
    assert!(!out.join("segger_transcripts.parquet").exists());
    let stderr = String::from_utf8_lossy(&run.stderr);
    let fits = stderr
        .split_once(" or more fits them")
        .and_then(|(before, _)| before.rsplit_once("--max-memory "))
        .unwrap_or_else(|| panic!("no budget that fits the nuclei is named: {stderr}"))
        .1
        .to_string();
    // The budget named holds the nuclei: the run goes on to the next check,
    // the tile's (a tile needs tens of MB).
    let run = segment(
        &input,
        &tmp.path().join("fits"),
        1 << 40,
        &["--max-memory", fits.as_str()],
    );
    assert_failure(&run, "even the smallest tile tried");
    assert!(
        !String::from_utf8_lossy(&run.stderr).contains("nuclei of the sample"),
        "{fits} fits the nuclei"
    );
}
