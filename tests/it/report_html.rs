//! `segmentation_report.html`: written by every `seggpu segment` run, one
//! self-contained file (no network or file references, no scripts) with
//! every plot section, and still written when nothing is assigned.

use std::path::{Path, PathBuf};

use crate::common::tables::{read_parquet, strings};
use crate::common::{assert_success, demo_model, one_nucleus_csv, seggpu, write_file};

const REPORT: &str = "segmentation_report.html";
const SECTIONS: [&str; 7] = [
    "summary",
    "scores",
    "transcripts-per-cell",
    "genes",
    "spatial",
    "stages",
    "parameters",
];

fn simulated(dir: &Path, cells: usize) -> PathBuf {
    let input = dir.join("input");
    assert_success(
        &seggpu()
            .args(["simulate", "--out", input.to_str().unwrap()])
            .args(["--cells", &cells.to_string(), "--seed", "5"])
            .output()
            .unwrap(),
    );
    input
}

/// Segments `input` on the CPU into `out` and returns the report's text.
fn segment(input: &Path, out: &Path, extra: &[&str]) -> String {
    let run = seggpu()
        .args(["segment", "--xenium", input.to_str().unwrap()])
        .args(["--model", demo_model().to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--backend", "cpu", "-q"])
        .args(extra)
        .output()
        .unwrap();
    assert_success(&run);
    std::fs::read_to_string(out.join(REPORT)).expect("the report is written")
}

/// Checks that nothing in the page is fetched from elsewhere and that every
/// section is there.
fn assert_self_contained_with_sections(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    let lower = html.to_ascii_lowercase();
    for external in [
        "http:", "https:", "src=", "href=", "<script", "<link", "@import", "file:",
    ] {
        assert!(!lower.contains(external), "the report contains {external}");
    }
    // The only url() references are to the page's own clip paths.
    assert_eq!(
        lower.matches("url(").count(),
        lower.matches("url(#").count()
    );
    for id in SECTIONS {
        assert!(
            html.contains(&format!("<section id=\"{id}\">")),
            "section {id} missing"
        );
    }
}

/// `n` with thousands separators, as a person would write it.
fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The text of section `id`.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html.find(&format!("<section id=\"{id}\">")).unwrap();
    let end = start + html[start..].find("</section>").unwrap();
    &html[start..end]
}

#[test]
fn report_of_a_small_sample_has_every_plot_and_its_counts() {
    let tmp = tempfile::tempdir().unwrap();
    // Small enough that the map draws every kept transcript.
    let input = simulated(tmp.path(), 100);
    let out = tmp.path().join("out");
    let html = segment(&input, &out, &[]);
    assert_self_contained_with_sections(&html);

    // The counts shown are those of the written tables.
    let rows = read_parquet(&out.join("segger_transcripts.parquet"));
    let assignment = strings(&rows, "assignment");
    let count = |kind: &str| assignment.iter().filter(|a| *a == kind).count();
    let kept = assignment.len() - count("filtered");
    assert!(count("cell") > 0 && count("unassigned") > 0);
    let summary = section(&html, "summary");
    assert!(summary.contains(&format!(
        "<b>{}</b><span>transcripts read",
        grouped(assignment.len())
    )));
    assert!(summary.contains(&format!("in cells ({})", grouped(count("cell")))));
    assert!(summary.contains(&format!("in fragments ({})", grouped(count("fragment")))));
    assert!(summary.contains(&format!("unassigned ({})", grouped(count("unassigned")))));

    // Each plot is drawn, not replaced by its "nothing to show" note.
    for id in [
        "scores",
        "transcripts-per-cell",
        "genes",
        "spatial",
        "stages",
    ] {
        let s = section(&html, id);
        assert!(s.contains("<svg"), "{id} has no plot");
        assert!(!s.contains("class=\"empty\""), "{id} is empty");
    }
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("segmentation_log.json")).unwrap()).unwrap();
    let scores = section(&html, "scores");
    let cut = format!("{:.3}", log["result"]["score_cut"].as_f64().unwrap());
    let cut = cut.trim_end_matches('0').trim_end_matches('.');
    assert!(
        scores.contains(&format!("score cut {cut}<")),
        "the cut is marked"
    );
    assert!(log["result"]["scores"]["knee"].is_f64());
    assert!(scores.contains("knee "), "the knee is marked");
    // The map draws every kept transcript of a sample this small, with the
    // cell polygons.
    let spatial = section(&html, "spatial");
    assert!(spatial.contains(&format!("{} of the {} kept", grouped(kept), grouped(kept))));
    assert!(spatial.contains("cell polygons"));
    let cells = read_parquet(&out.join("cells.parquet"));
    let with_transcripts =
        crate::common::tables::primitives::<arrow::datatypes::UInt64Type>(&cells, "n_transcripts");
    let kinds = strings(&cells, "kind");
    let n_cells = (0..kinds.len())
        .filter(|&i| kinds[i] == "cell" && with_transcripts[i] > 0)
        .count();
    assert!(section(&html, "transcripts-per-cell")
        .contains(&format!("{} cells with transcripts", grouped(n_cells))));
    for stage in ["read", "prepare", "model+score", "write"] {
        assert!(section(&html, "stages").contains(&format!(">{stage}</text>")));
    }
    // The log times the report too.
    assert!(log["seconds"]["html_report"].as_f64().unwrap() >= 0.0);
}

#[test]
fn report_without_cells_is_still_written() {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated(tmp.path(), 20);

    // No nucleus within reach of any transcript and no fragments: nothing
    // is assigned.
    let html = segment(
        &input,
        &tmp.path().join("no_cells"),
        &["--dist-bd", "0.0001", "--no-fragments"],
    );
    assert_self_contained_with_sections(&html);
    assert!(section(&html, "summary").contains("<b>0</b><span>cells with transcripts"));
    assert!(section(&html, "transcripts-per-cell").contains("No cell or fragment has transcripts."));
    assert!(section(&html, "scores").contains("no scores to show"));
    // Unassigned transcripts are still mapped and their genes ranked.
    assert!(section(&html, "spatial").contains("<svg"));
    assert!(section(&html, "genes").contains("<svg"));

    // One transcript, far from the one nucleus. (A run where every
    // transcript is filtered stops with an error before any output; the
    // report's unit tests cover rendering it.)
    let t = write_file(
        tmp.path(),
        "t.csv",
        "x_location,y_location,feature_name\n100,100,FIB019\n",
    );
    let out = tmp.path().join("one");
    let run = seggpu()
        .args(["segment", "--transcripts", t.to_str().unwrap()])
        .args([
            "--boundaries",
            one_nucleus_csv(tmp.path()).to_str().unwrap(),
        ])
        .args(["--model", demo_model().to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--backend", "cpu", "-q"])
        .output()
        .unwrap();
    assert_success(&run);
    let html = std::fs::read_to_string(out.join(REPORT)).unwrap();
    assert_self_contained_with_sections(&html);
    assert!(section(&html, "summary").contains("<b>1</b><span>transcripts read"));
    assert!(section(&html, "spatial").contains("1 of the 1 kept"));
    assert!(section(&html, "genes").contains(">FIB019</text>"));
}
