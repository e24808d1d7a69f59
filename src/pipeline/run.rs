//! The `segment` command: arguments, reading, running and writing.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use super::progress::Progress;
use super::{FragmentSettings, ScoreCut, SegmentParams, UnknownGenes};
use crate::backend::Backend;
use crate::graph::build::GraphParams;
use crate::model::Model;
use crate::output::{self, OutputDir};

/// Built-in defaults (SPEC §5, §8, §9).
pub mod defaults {
    /// Neighbours per transcript.
    pub const K_TX: usize = 5;
    /// Neighbour distance, µm.
    pub const DIST_TX: f64 = 5.0;
    /// Candidate nuclei per transcript.
    pub const K_BD: usize = 4;
    /// Candidate distance, µm.
    pub const DIST_BD: f64 = 12.0;
    /// Assignment threshold.
    pub const SCORE_CUT: f32 = 0.5;
    /// Smallest fragment.
    pub const MIN_TRANSCRIPTS: usize = 5;
    /// Tile core side, µm.
    pub const TILE_SIZE: f64 = 400.0;
}

/// Options of `seggpu segment` (input flags and backend flags come separately).
#[derive(Debug, Clone, clap::Args)]
pub struct SegmentArgs {
    /// Output folder (created if needed): segger_transcripts.parquet, cells.parquet, segmentation_log.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Weights file (seggpu safetensors; `seggpu inspect` shows it). Not needed with --demo.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Simulate a sample into OUT/demo_input, segment it with the built-in demo model and
    /// compare the result with the simulator's ground truth (log key `demo_accuracy`).
    #[arg(long)]
    pub demo: bool,
    /// Cells in the --demo sample.
    #[arg(long, default_value_t = 1000)]
    pub demo_cells: usize,
    /// Seed of the --demo sample (the demo model was trained on other seeds).
    #[arg(long, default_value_t = 2026)]
    pub demo_seed: u64,
    /// Transcript neighbours per transcript, itself included [model default, else 5].
    #[arg(long)]
    pub k_tx: Option<usize>,
    /// Largest transcript–transcript distance in µm, inclusive [model default, else 5].
    #[arg(long)]
    pub dist_tx: Option<f64>,
    /// No distance cap for transcript neighbours (segger_dev's stored graphs had none).
    #[arg(long)]
    pub no_dist_cap: bool,
    /// Candidate nuclei per transcript [model default, else 4].
    #[arg(long)]
    pub k_bd: Option<usize>,
    /// Candidate nucleus distance in µm, strict [model default, else 12].
    #[arg(long)]
    pub dist_bd: Option<f64>,
    /// Assignment threshold in [0, 1], or `auto` for the knee of the score curve [model default, else 0.5].
    #[arg(long)]
    pub score_cut: Option<ScoreCut>,
    /// Fragment similarity cut [default: the score cut].
    #[arg(long)]
    pub fragment_cut: Option<f32>,
    /// Smallest fragment, in transcripts [model default, else 5].
    #[arg(long)]
    pub min_transcripts: Option<usize>,
    /// Skip fragment detection: unclaimed transcripts stay UNASSIGNED.
    #[arg(long)]
    pub no_fragments: bool,
    /// What to do with genes the model does not know.
    #[arg(long, value_enum, default_value_t = UnknownGenes::Error)]
    pub unknown_genes: UnknownGenes,
    /// Tile core side in µm (results do not depend on it with the exact margin).
    #[arg(long, default_value_t = defaults::TILE_SIZE)]
    pub tile_size: f64,
    /// Tile margin in µm; smaller than the exact margin is an approximation [default: exact].
    #[arg(long)]
    pub margin: Option<f64>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the seconds per stage.
    #[arg(short, long)]
    pub verbose: bool,
}

impl SegmentArgs {
    /// Resolves flags over the model's stored defaults over built-in defaults.
    pub fn params(&self, model: &Model) -> Result<SegmentParams> {
        let stored = model.defaults.clone().unwrap_or_default();
        let number = |key: &str| stored.get(key).and_then(serde_json::Value::as_f64);
        let k_tx = self
            .k_tx
            .or(number("k_tx").map(|v| v as usize))
            .unwrap_or(defaults::K_TX);
        let dist_tx = self
            .dist_tx
            .or(number("dist_tx"))
            .unwrap_or(defaults::DIST_TX);
        let k_bd = self
            .k_bd
            .or(number("k_bd").map(|v| v as usize))
            .unwrap_or(defaults::K_BD);
        let dist_bd = self
            .dist_bd
            .or(number("dist_bd"))
            .unwrap_or(defaults::DIST_BD);
        let score_cut = self
            .score_cut
            .or(number("score_cut").map(|v| ScoreCut::Fixed(v as f32)))
            .unwrap_or(ScoreCut::Fixed(defaults::SCORE_CUT));
        let min_transcripts = self
            .min_transcripts
            .or(number("min_transcripts").map(|v| v as usize))
            .unwrap_or(defaults::MIN_TRANSCRIPTS);
        anyhow::ensure!(
            k_tx >= 1 && k_bd >= 1,
            "--k-tx and --k-bd must be at least 1"
        );
        anyhow::ensure!(
            dist_tx > 0.0 && dist_bd > 0.0,
            "--dist-tx and --dist-bd must be positive"
        );
        anyhow::ensure!(self.tile_size > 0.0, "--tile-size must be positive");
        Ok(SegmentParams {
            graph: GraphParams {
                k_tx,
                dist_tx: (!self.no_dist_cap).then_some(dist_tx),
                k_bd,
                dist_bd,
            },
            score_cut,
            fragments: (!self.no_fragments).then_some(FragmentSettings {
                cut: self.fragment_cut,
                min_transcripts,
            }),
            unknown_genes: self.unknown_genes,
            tile_size: self.tile_size,
            margin: self.margin,
        })
    }
}

/// Runs `seggpu segment`.
pub fn run(
    args: &SegmentArgs,
    input: &crate::io::args::InputArgs,
    backend: &mut dyn Backend,
    command_line: &[String],
) -> Result<()> {
    let started = Instant::now();
    let progress = Progress { quiet: args.quiet };
    let out = OutputDir::create(&args.out)?;
    let mut input = input.clone();
    let model = if args.demo {
        let dir = args.out.join("demo_input");
        let summary = crate::simulate::simulate(
            &dir,
            &crate::simulate::SimulateOptions {
                cells: args.demo_cells,
                seed: args.demo_seed,
                ..crate::simulate::SimulateOptions::default()
            },
        )?;
        if !args.quiet {
            eprintln!("demo: {summary}");
        }
        input.xenium = Some(dir);
        crate::demo::demo_model()?
    } else {
        let path = args
            .model
            .as_ref()
            .context("--model is required (or use --demo for the built-in demo)")?;
        Model::load(path)?
    };
    let params = args.params(&model)?;
    let spec = input.resolve()?;

    let mut stages: Vec<(String, f64)> = Vec::new();
    let clock = Instant::now();
    let spinner = progress.spinner("reading");
    let transcripts = crate::io::read_transcripts(&spec)?;
    let nuclei = crate::io::read_nuclei(&spec, model.bd_features)?;
    spinner.finish_and_clear();
    stages.push(("read".into(), clock.elapsed().as_secs_f64()));

    let (result, transcripts) =
        super::segment(transcripts, &nuclei, &model, &params, backend, &progress)?;
    stages.extend(result.stage_seconds.iter().cloned());
    let demo_accuracy = if args.demo {
        Some(crate::demo::demo_accuracy(
            &args
                .out
                .join("demo_input")
                .join(crate::simulate::GROUND_TRUTH_FILE),
            &result.cell_id,
            &result.assignment,
            &result.filter_reason,
        )?)
    } else {
        None
    };

    let clock = Instant::now();
    let spinner = progress.spinner("writing");
    output::write_transcripts(
        &out.staged(output::TRANSCRIPTS_FILE),
        &transcripts.passthrough,
        output::TranscriptColumns {
            segger_cell_id: result.cell_id,
            score: result.score,
            assignment: result.assignment,
            filter_reason: result.filter_reason,
        },
    )?;
    output::write_cells(&out.staged(output::CELLS_FILE), &result.cells)?;
    stages.push(("write".into(), clock.elapsed().as_secs_f64()));
    let mut log = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "command_line": command_line,
        "parameters": params,
        "model": {
            "sha256": model.sha256,
            "architecture": model.arch,
            "dtype": model.dtype,
            "vocabulary": model.genes.len(),
            "bd_features": model.bd_features,
        },
        "inputs": spec.files(),
        "nuclei_skipped": nuclei.skipped.iter().take(100).map(|(id, why)| format!("{id}: {why}")).collect::<Vec<_>>(),
        "result": result.summary,
        "seconds": stages.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
        "seconds_total": started.elapsed().as_secs_f64(),
    });
    if let Some(acc) = &demo_accuracy {
        log["demo_accuracy"] = acc.to_json();
    }
    std::fs::write(
        out.staged(output::LOG_FILE),
        serde_json::to_vec_pretty(&log)?,
    )?;
    out.commit(&[
        output::TRANSCRIPTS_FILE,
        output::CELLS_FILE,
        output::LOG_FILE,
    ])?;
    spinner.finish_and_clear();
    if args.verbose {
        for (stage, s) in &stages {
            eprintln!("{stage:>18}: {s:8.2} s");
        }
    }
    if !args.quiet {
        let c = &log["result"]["counts"];
        eprintln!(
            "seggpu segment: {} transcripts read, {} assigned to {} cells, {} in {} fragments, {} unassigned, {} filtered → {} ({:.1} s)",
            c["read"], c["assigned"], c["cells_with_transcripts"], c["fragment"], c["fragments"], c["unassigned"],
            transcripts.filter.iter().filter(|f| f.is_some()).count(),
            args.out.display(),
            started.elapsed().as_secs_f64()
        );
        if let Some(acc) = &demo_accuracy {
            eprintln!(
                "demo accuracy: {} of {} kept transcripts that a cell generated were assigned to that cell ({:.1}%; {:.1}% of all {} rows a cell generated, filtered ones counted as misses); precision of the cell assignments {:.1}%",
                acc.correct,
                acc.cell_rows_kept,
                100.0 * acc.recall_kept(),
                100.0 * acc.recall_all_rows(),
                acc.cell_rows,
                100.0 * acc.precision()
            );
        }
    }
    Ok(())
}
