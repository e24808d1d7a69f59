//! `segment` against the untiled PyTorch Geometric reference pipeline
//! (`tools/reference/pipeline_ref.py`) on the golden simulated sample in
//! `tests/fixtures/sim/`, on the CPU and on a GPU adapter.

use arrow::array::AsArray;
use arrow::datatypes::Float32Type;
use clap::Parser;
use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::gpu::test_support::backend_or_skip;
use seggpu::backend::gpu::GpuOptions;
use seggpu::backend::Backend;
use seggpu::model::Model;
use seggpu::pipeline::progress::Progress;
use seggpu::pipeline::{segment, Assignment, Segmentation};

use crate::common::tables::{read_parquet, strings};
use crate::common::{demo_model, fixture_path};

/// The demo model the references were computed with (tests/fixtures/sim/README.md).
const REFERENCE_MODEL_SHA256: &str =
    "901e62f87699180ed77c5249dc674a795c51b4d99ce4b161f9d3f63ea9e136dd";

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    segment: seggpu::pipeline::run::SegmentArgs,
    #[command(flatten)]
    input: seggpu::io::args::InputArgs,
}

fn run(backend: &mut dyn Backend, extra: &[&str]) -> Segmentation {
    let model = Model::load(&demo_model()).unwrap();
    assert_eq!(
        model.sha256, REFERENCE_MODEL_SHA256,
        "the demo model changed: regenerate tests/fixtures/sim/reference*.parquet (its README) and update this hash"
    );
    let sim = fixture_path("sim");
    let mut argv = vec![
        "test",
        "--out",
        "unused",
        "--xenium",
        sim.to_str().unwrap(),
        "--tile-size",
        "60",
    ];
    argv.extend_from_slice(extra);
    let args = Args::parse_from(argv);
    let spec = args.input.resolve().unwrap();
    let transcripts = seggpu::io::read_transcripts(&spec).unwrap();
    let nuclei = seggpu::io::read_nuclei(&spec, model.bd_features).unwrap();
    let params = args.segment.params(&model).unwrap();
    segment(
        transcripts,
        &nuclei,
        &model,
        &params,
        backend,
        &Progress { quiet: true },
        args.segment.overlap,
    )
    .unwrap()
    .0
}

struct Reference {
    cell_id: Vec<String>,
    score: Vec<Option<f32>>,
}

fn reference(file: &str) -> Reference {
    let batch = read_parquet(&fixture_path(&format!("sim/{file}")));
    let scores = batch
        .column_by_name("score")
        .unwrap()
        .as_primitive::<Float32Type>();
    Reference {
        cell_id: strings(&batch, "segger_cell_id"),
        score: scores.iter().collect(),
    }
}

/// Rows whose segger_cell_id differs, printed with both scores.
fn differences(
    label: &str,
    ours: &Segmentation,
    theirs_id: &[String],
    theirs_score: &[Option<f32>],
) -> Vec<usize> {
    assert_eq!(ours.len(), theirs_id.len(), "{label}: row counts differ");
    let differ: Vec<usize> = (0..theirs_id.len())
        .filter(|&i| ours.segger_cell_id(i) != theirs_id[i])
        .collect();
    let max_score_diff = (0..theirs_id.len())
        .filter_map(|i| Some((ours.score(i)? - theirs_score[i]?).abs()))
        .fold(0.0f32, f32::max);
    println!(
        "{label}: {} of {} rows identical ({:.4}%), max score difference {max_score_diff:.2e}",
        theirs_id.len() - differ.len(),
        theirs_id.len(),
        100.0 * (theirs_id.len() - differ.len()) as f64 / theirs_id.len() as f64
    );
    for &i in &differ {
        println!(
            "  row {i}: ours {} (score {:?}), theirs {} (score {:?})",
            ours.segger_cell_id(i),
            ours.score(i),
            theirs_id[i],
            theirs_score[i]
        );
    }
    differ
}

/// Segments the sample with `extra` flags and compares the result with the
/// reference `file`; returns it with the rows that differ.
fn run_against(
    label: &str,
    backend: &mut dyn Backend,
    extra: &[&str],
    file: &str,
) -> (Segmentation, Vec<usize>) {
    let ours = run(backend, extra);
    let theirs = reference(file);
    let differ = differences(label, &ours, &theirs.cell_id, &theirs.score);
    (ours, differ)
}

fn check_against_reference(label: &str, backend: &mut dyn Backend) -> Segmentation {
    let (ours, differ) = run_against(
        &format!("{label} vs PyG"),
        backend,
        &[],
        "reference.parquet",
    );
    assert!(
        differ.len() * 1000 <= ours.len(),
        "{label}: under 99.9% identical"
    );
    let (ours_frag, differ) = run_against(
        &format!("{label} vs PyG, fragment cut 0"),
        backend,
        &["--fragment-cut", "0"],
        "reference_fragcut0.parquet",
    );
    assert!(
        differ.is_empty(),
        "{label}: fragments differ from the scipy components"
    );
    let fragment_rows = ours_frag
        .assignment
        .iter()
        .filter(|&&a| a == Assignment::Fragment)
        .count();
    let fragments = ours_frag.summary.counts.fragments;
    println!("{label}: {fragment_rows} transcripts in {fragments} fragments with --fragment-cut 0");
    // The comparison above means something only if the fragment stage has work.
    assert!(
        fragment_rows >= 100 && fragments >= 10,
        "{label}: too few fragments to exercise the fragment stage"
    );
    ours
}

#[test]
fn cpu_matches_the_untiled_pyg_reference() {
    check_against_reference("cpu", &mut CpuBackend::new());
}

#[test]
fn gpu_matches_the_reference_and_the_cpu() {
    let Some(mut gpu) = backend_or_skip(
        "gpu_matches_the_reference_and_the_cpu",
        GpuOptions::default(),
    ) else {
        return;
    };
    let on_gpu = check_against_reference("gpu", &mut gpu);
    let on_cpu = run(&mut CpuBackend::new(), &[]);
    let cpu_ids: Vec<String> = (0..on_cpu.len())
        .map(|i| on_cpu.segger_cell_id(i).to_owned())
        .collect();
    let cpu_scores: Vec<Option<f32>> = (0..on_cpu.len()).map(|i| on_cpu.score(i)).collect();
    let differ = differences("gpu vs cpu", &on_gpu, &cpu_ids, &cpu_scores);
    let cut = on_cpu.summary.score_cut;
    for &i in &differ {
        let (a, b) = (
            on_gpu.score(i).unwrap_or(0.0),
            on_cpu.score(i).unwrap_or(0.0),
        );
        assert!(
            (a - b).abs() < 1e-6 || (a - cut).abs() < 1e-6,
            "row {i} differs by more than a near-tie"
        );
    }
}
