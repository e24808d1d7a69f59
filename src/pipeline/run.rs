//! The `segment` command: arguments, reading, running and writing.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use serde::Serialize;

use super::progress::Progress;
use super::{FragmentSettings, ScoreCut, SegmentParams, Summary, UnknownGenes};
use crate::backend::Backend;
use crate::defaults;
use crate::logging::Verbosity;
use crate::model::{Architecture, BdFeatureMode, Model};
use crate::output::{self, OutputDir};

/// Options of `seggpu segment` (input flags and backend flags come separately).
#[derive(Debug, Clone, clap::Args)]
pub struct SegmentArgs {
    /// Output folder (created if needed): the --outputs, segmentation_report.html and segmentation_log.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Outputs to write, comma-separated: transcripts (segger_transcripts.parquet), cells
    /// (cells.parquet), polygons (cell_boundaries.parquet GeoParquet + cell_boundaries.geojson),
    /// anndata (cells.h5ad and cells.anndata.zarr), spatialdata (segmentation.zarr), report
    /// (segmentation_report.html). segmentation_log.json is always written.
    #[arg(long, value_enum, value_delimiter = ',', default_value = output::DEFAULT_OUTPUTS)]
    pub outputs: Vec<output::OutputKind>,
    /// File format of the transcripts and cells tables (csv: same columns, nulls empty).
    #[arg(long, value_enum, default_value_t = output::TableFormat::Parquet)]
    pub table_format: output::TableFormat,
    /// Also write OUT/xenium_ranger/: transcript_assignment.csv, viz_polygons.geojson,
    /// cell_id_map.csv and README.txt with the `xeniumranger import-segmentation ... --units
    /// microns` command that shows the cells in Xenium Explorer. Xenium inputs only (--xenium,
    /// --preset xenium, or --preset spatialdata with Xenium transcript_id values) and --demo.
    #[arg(long)]
    pub xenium_ranger: bool,
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
    /// Graph flags.
    #[command(flatten)]
    pub graph: defaults::GraphFlags,
    #[arg(long, help = defaults::SCORE_CUT_HELP)]
    pub score_cut: Option<ScoreCut>,
    /// Fragment similarity cut [default: the score cut].
    #[arg(long, allow_negative_numbers = true)]
    pub fragment_cut: Option<f32>,
    #[arg(long, help = defaults::MIN_TRANSCRIPTS_HELP)]
    pub min_transcripts: Option<usize>,
    /// Skip fragment detection: unclaimed transcripts stay UNASSIGNED.
    #[arg(long)]
    pub no_fragments: bool,
    /// What to do with genes the model does not know.
    #[arg(long, value_enum, default_value_t = UnknownGenes::Error)]
    pub unknown_genes: UnknownGenes,
    /// Tile core side in µm (results do not depend on it with the exact margin) [default: 400;
    /// on the bucketed path the budget picks it: the smallest size, from 50 µm doubling, whose
    /// margin recomputes at most 15% and whose fullest tile fits half the budget, else the
    /// largest that fits].
    #[arg(long, allow_negative_numbers = true)]
    pub tile_size: Option<f64>,
    /// Tile margin in µm; smaller than the exact margin is an approximation [default: exact].
    #[arg(long, allow_negative_numbers = true)]
    pub margin: Option<f64>,
    /// Run the bucketed path within about this much memory (e.g. 4G; K, M, G, T are powers of
    /// 1024): kept transcripts are spilled into spatial buckets under --tmp-dir and scored
    /// bucket by bucket, with the same outputs as the in-memory path (docs/streaming.md).
    /// Without --demo the input is read and every output written in batches; with --demo
    /// (its accuracy), every row is held in memory (a warning says so). Without it, an
    /// input whose estimated in-memory footprint (320 bytes per row; rows from the parquet
    /// footer or the first MiB of CSV) exceeds half the available memory (4 GiB where that is
    /// unknown) runs the bucketed path within that default, with a warning; smaller inputs run
    /// in memory.
    #[arg(long, value_parser = super::stream::parse_size)]
    pub max_memory: Option<u64>,
    /// Folder for the bucket files of --max-memory [default: the output folder]. Removed at
    /// the end of the run; a killed run leaves it for --resume.
    #[arg(long, requires = "max_memory")]
    pub tmp_dir: Option<PathBuf>,
    /// Reuse the finished buckets a killed --max-memory run left in --tmp-dir (the same
    /// input, model and settings); otherwise starts over.
    #[arg(long, requires = "max_memory")]
    pub resume: bool,
    /// Tiles per bucket side with --max-memory [default: the most the budget allows].
    #[arg(long, requires = "max_memory", value_parser = clap::value_parser!(u64).range(1..))]
    pub bucket_tiles: Option<u64>,
    /// Build the next tile's graphs on CPU threads while the backend scores the current one
    /// (outputs are the same bytes either way; docs/contract.md §10).
    #[arg(long, value_enum, default_value_t = super::score_tiles::OverlapMode::Auto)]
    pub overlap: super::score_tiles::OverlapMode,
    /// Train a model on this slide first (`seggpu train`; flags under "Training"), write it to
    /// OUT/model.safetensors with OUT/training_log.json, and segment with it.
    #[arg(long, conflicts_with_all = ["model", "demo"])]
    pub train: bool,
    /// Training options (with --train).
    #[command(flatten)]
    pub training: crate::train::TrainFlags,
}

impl SegmentArgs {
    /// `min_transcripts` resolved like every parameter (flag, model, built-in).
    pub fn min_transcripts(&self, model: &Model) -> usize {
        self.min_transcripts
            .or(model.defaults.as_ref().and_then(|d| d.min_transcripts))
            .unwrap_or(defaults::MIN_TRANSCRIPTS)
    }

    /// Resolves flags over the model's stored defaults over the built-in
    /// defaults ([`crate::defaults`]).
    pub fn params(&self, model: &Model) -> Result<SegmentParams> {
        let stored = model.defaults.clone().unwrap_or_default();
        let graph = self.graph.resolve(&stored)?;
        let score_cut = self
            .score_cut
            .or(stored.score_cut.map(ScoreCut::Fixed))
            .unwrap_or(ScoreCut::Fixed(defaults::SCORE_CUT));
        let min_transcripts = self.min_transcripts(model);
        // The same checks as a model's stored defaults (crate::defaults).
        let check = |r: std::result::Result<(), String>| r.map_err(anyhow::Error::msg);
        let tile_size = self.tile_size.unwrap_or(defaults::TILE_SIZE);
        check(defaults::check_distance("--tile-size", tile_size))?;
        if let Some(margin) = self.margin {
            anyhow::ensure!(
                margin >= 0.0 && margin.is_finite(),
                "--margin is {margin}, expected a finite distance ≥ 0 in µm"
            );
        }
        if let Some(cut) = self.fragment_cut {
            check(defaults::check_score_cut("--fragment-cut", cut))?;
        }
        Ok(SegmentParams {
            graph,
            score_cut,
            fragments: (!self.no_fragments).then_some(FragmentSettings {
                cut: self.fragment_cut,
                min_transcripts,
            }),
            unknown_genes: self.unknown_genes,
            tile_size,
            margin: self.margin,
        })
    }
}

/// The model facts of the log.
#[derive(Debug, Serialize)]
struct ModelFacts<'a> {
    sha256: &'a str,
    architecture: Architecture,
    dtype: &'a str,
    vocabulary: usize,
    bd_features: BdFeatureMode,
}

/// `segmentation_log.json`, serialised once.
#[derive(Debug, Serialize)]
struct SegmentationLog<'a> {
    version: &'static str,
    command_line: &'a [String],
    parameters: &'a SegmentParams,
    model: ModelFacts<'a>,
    inputs: std::collections::BTreeMap<&'static str, String>,
    columns: InputColumns,
    membership: crate::io::MembershipReport,
    nuclei_notes: &'a [String],
    nuclei_skipped: Vec<String>,
    nuclei_altered: Vec<String>,
    result: &'a Summary,
    outputs: OutputFacts,
    seconds: std::collections::BTreeMap<&'static str, f64>,
    seconds_total: f64,
    /// Peak resident memory of the process, bytes (Linux).
    peak_rss_bytes: Option<u64>,
    /// The bucketed path's facts (`--max-memory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    streaming: Option<super::stream::StreamFacts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    demo_accuracy: Option<serde_json::Value>,
}

/// What was written, for the log.
#[derive(Debug, Serialize)]
struct OutputFacts {
    written: Vec<String>,
    table_format: output::TableFormat,
    /// Cells listed by the per-cell outputs.
    cells: usize,
    /// The fewest transcripts of a listed cell: max(1, min_transcripts).
    min_transcripts: usize,
    /// Polygons by source (`null` without polygons).
    polygon_sources: Option<std::collections::BTreeMap<&'static str, usize>>,
}

/// The columns read, by role, for the log.
#[derive(Debug, Serialize)]
struct InputColumns {
    transcripts: std::collections::BTreeMap<&'static str, String>,
    boundaries: std::collections::BTreeMap<&'static str, String>,
}

/// Every nucleus skipped or altered while reading is counted on stderr;
/// the ids and reasons go to the log (`nuclei_skipped`, `nuclei_altered`).
fn report_nuclei(nuclei: &crate::io::Nuclei, spec: &crate::io::InputSpec) {
    if nuclei.skipped.is_empty() && nuclei.altered.is_empty() {
        return;
    }
    let mut altered_ids: Vec<&str> = nuclei.altered.iter().map(|(id, _)| id).collect();
    altered_ids.dedup();
    log::warn!(
        "{}: {} nuclei skipped (e.g. {}), {} altered while reading; ids and reasons in {}",
        spec.boundaries.display(),
        nuclei.skipped.len(),
        nuclei
            .skipped
            .first()
            .map_or_else(|| "none".to_string(), |(id, why)| format!("{id}: {why}")),
        altered_ids.len(),
        output::LOG_FILE
    );
    for note in &nuclei.notes {
        log::debug!("{note}");
    }
}

/// Runs `seggpu segment`.
pub fn run(
    args: &SegmentArgs,
    input: &crate::io::args::InputArgs,
    backend: &mut dyn Backend,
    backend_args: &crate::cli::BackendArgs,
    command_line: &[String],
    verbosity: Verbosity,
) -> Result<()> {
    let started = Instant::now();
    // Both paths, so that their memory and speed compare (docs/streaming.md).
    crate::io::purge_freed_memory_at_once();
    let progress = Progress {
        quiet: verbosity == Verbosity::Quiet,
    };
    let mut out = OutputDir::create(&args.out)?;
    let mut input = input.clone();
    let demo_model = if args.demo {
        let dir = args.out.join("demo_input");
        let summary = crate::simulate::simulate(
            &dir,
            &crate::simulate::SimulateOptions {
                cells: args.demo_cells,
                seed: args.demo_seed,
                ..crate::simulate::SimulateOptions::default()
            },
        )?;
        log::info!("demo: {summary}");
        input.xenium = Some(dir);
        Some(crate::demo::demo_model()?)
    } else {
        None
    };
    let spec = input.resolve()?;
    // Before training, so a wrong input fails at once.
    if args.xenium_ranger {
        output::xenium_ranger::check_preset(spec.preset)?;
    }
    let model = match demo_model {
        Some(model) => model,
        None if args.train => crate::train::command::for_segment(
            args,
            &args.training,
            &input,
            backend_args,
            &mut out,
            verbosity,
        )?,
        None => {
            let path = args
                .model
                .as_ref()
                .context("--model is required (or use --demo for the built-in demo)")?;
            Model::load(path)?
        }
    };
    let mut params = args.params(&model)?;
    let budget = match args.max_memory {
        Some(bytes) => Some(super::budget::Budget::given(bytes)),
        None => super::budget::automatic(&spec.transcripts),
    };
    if let (true, Some(budget)) = (reads_in_batches(args, budget.is_some()), &budget) {
        return run_in_batches(
            args,
            &spec,
            &model,
            &params,
            backend,
            command_line,
            &progress,
            out,
            started,
            budget,
        );
    }
    if budget.is_some() && args.demo {
        log::warn!(
            "--max-memory: --demo's accuracy needs every row in memory; only the score and fragment stages are bounded (without --demo the input is read and the outputs written in batches; docs/streaming.md)"
        );
    }

    let mut stages: Vec<(&'static str, f64)> = Vec::new();
    let clock = Instant::now();
    let spinner = progress.spinner("reading");
    let mut transcripts = crate::io::read_transcripts(&spec)?;
    if args.xenium_ranger {
        output::xenium_ranger::check_ids(&transcripts, &spec.transcripts)?;
    }
    let nuclei = crate::io::read_nuclei(&spec, model.bd_features)?;
    spinner.finish_and_clear();
    report_nuclei(&nuclei, &spec);
    let membership = crate::io::check_membership(&mut transcripts, &nuclei, &spec)?;
    let columns = InputColumns {
        transcripts: transcripts.columns.iter().cloned().collect(),
        boundaries: nuclei.columns.iter().cloned().collect(),
    };
    stages.push(("read", clock.elapsed().as_secs_f64()));

    let (result, transcripts, streaming) = match &budget {
        Some(budget) => {
            let settings = stream_settings(args, budget);
            let (result, transcripts, facts) = super::stream::segment(
                transcripts,
                &nuclei,
                &model,
                &params,
                backend,
                &progress,
                &settings,
            )?;
            params.tile_size = facts.tile.tile_size;
            (result, transcripts, Some(facts))
        }
        None => {
            let (result, transcripts) = super::segment(
                transcripts,
                &nuclei,
                &model,
                &params,
                backend,
                &progress,
                args.overlap,
            )?;
            (result, transcripts, None)
        }
    };
    stages.extend(result.stage_seconds.iter().copied());
    let demo_accuracy = if args.demo {
        Some(crate::demo::demo_accuracy(
            &args
                .out
                .join("demo_input")
                .join(crate::simulate::GROUND_TRUTH_FILE),
            &result,
        )?)
    } else {
        None
    };

    let wants = |k: output::OutputKind| args.outputs.contains(&k);
    let per_cell = [
        output::OutputKind::Polygons,
        output::OutputKind::Anndata,
        output::OutputKind::Spatialdata,
    ]
    .into_iter()
    .any(wants)
        || args.xenium_ranger;
    let (cells, members) = if per_cell {
        let (cells, members) = output::cells::OutputCells::new(
            &result,
            &transcripts,
            &nuclei,
            args.min_transcripts(&model),
        )?;
        stages.push(("polygons", cells.polygon_seconds));
        (Some(cells), Some(members))
    } else {
        (None, None)
    };

    let clock = Instant::now();
    let spinner = progress.spinner("writing");
    let mut written = Vec::new();
    let format = args.table_format;
    if wants(output::OutputKind::Transcripts) {
        let name = format.file_name(output::TRANSCRIPTS_FILE);
        output::write_transcripts(
            &out.staged(&name)?,
            &transcripts.passthrough,
            &result,
            format,
        )?;
        written.push(name);
    }
    if wants(output::OutputKind::Cells) {
        let name = format.file_name(output::CELLS_FILE);
        output::write_cells(&out.staged(&name)?, &result.cells, format)?;
        written.push(name);
    }
    if let (Some(cells), Some(members)) = (&cells, &members) {
        if wants(output::OutputKind::Polygons) {
            output::boundaries::write_geoparquet(
                &out.staged(output::BOUNDARIES_FILE)?,
                &result.cells,
                cells,
            )?;
            output::boundaries::write_geojson(
                &out.staged(output::BOUNDARIES_GEOJSON_FILE)?,
                &result.cells,
                cells,
            )?;
            written.push(output::BOUNDARIES_FILE.to_string());
            written.push(output::BOUNDARIES_GEOJSON_FILE.to_string());
        }
        let uns = anndata_uns(args, &model, &params, command_line)?;
        let table = output::anndata::AnnData::build(&result, &transcripts, cells, members, uns)?;
        if wants(output::OutputKind::Anndata) {
            let path = out.staged(output::ANNDATA_FILE)?;
            let mut store = output::zarr::ZarrStore::create(&path, serde_json::json!({}))?;
            table.write_to(&mut store, "", serde_json::json!({}))?;
            written.push(output::ANNDATA_FILE.to_string());
            let mut h5ad = output::h5ad::H5adFile::new();
            table.write_to(&mut h5ad, "", serde_json::json!({}))?;
            h5ad.write(&out.staged(output::H5AD_FILE)?)?;
            written.push(output::H5AD_FILE.to_string());
        }
        if wants(output::OutputKind::Spatialdata) {
            output::spatialdata::write(
                &out.staged(output::SPATIALDATA_FILE)?,
                &transcripts.passthrough,
                &result,
                &transcripts,
                cells,
                &table,
            )?;
            written.push(output::SPATIALDATA_FILE.to_string());
        }
    }
    if let (true, Some(cells)) = (args.xenium_ranger, &cells) {
        output::xenium_ranger::write(
            &xenium_ranger_folder(args, &spec, &mut out)?,
            &result,
            &transcripts,
            cells,
        )?;
        written.push(output::xenium_ranger::DIR.to_string());
    }
    stages.push(("write", clock.elapsed().as_secs_f64()));
    if wants(output::OutputKind::Report) {
        let clock = Instant::now();
        // The cell polygons when they were computed, else the nucleus outlines.
        let nucleus_rings = match &cells {
            Some(_) => Vec::new(),
            None => output::html_report::nucleus_rings(&nuclei)?,
        };
        let outlines = match &cells {
            Some(cells) => (output::html_report::Outlines::Cells(cells), "cell polygons"),
            None => (
                output::html_report::Outlines::Rings(&nucleus_rings),
                "nucleus polygons",
            ),
        };
        let report = output::html_report::ReportData::from_run(
            &result,
            &transcripts,
            &params,
            command_line,
            &stages,
            Some(outlines),
        )?;
        output::html_report::write(&out.staged(output::html_report::REPORT_FILE)?, &report)?;
        stages.push(("html_report", clock.elapsed().as_secs_f64()));
        written.push(output::html_report::REPORT_FILE.to_string());
    }
    let outputs = OutputFacts {
        written,
        table_format: format,
        cells: cells.as_ref().map_or(0, |c| c.len()),
        min_transcripts: args.min_transcripts(&model).max(1),
        polygon_sources: cells.as_ref().map(|c| c.polygon_sources()),
    };
    finish(
        out,
        Finish {
            args,
            command_line,
            params: &params,
            model: &model,
            spec: &spec,
            columns,
            membership,
            nuclei: &nuclei,
            summary: &result.summary,
            outputs,
            stages,
            started,
            streaming,
            demo_accuracy: demo_accuracy.as_ref().map(|a| a.to_json()),
        },
    )?;
    spinner.finish_and_clear();
    if let Some(acc) = &demo_accuracy {
        log::info!(
            "demo accuracy: {} of {} kept transcripts that a cell generated were assigned to that cell ({:.1}%; {:.1}% of all {} rows a cell generated, filtered ones counted as misses); precision of the cell assignments {:.1}%",
            acc.correct,
            acc.cell_rows_kept,
            100.0 * acc.recall_kept(),
            100.0 * acc.recall_all_rows(),
            acc.cell_rows,
            100.0 * acc.precision()
        );
    }
    Ok(())
}

/// Where `--xenium-ranger`'s folder is staged and which bundle its README names.
fn xenium_ranger_folder(
    args: &SegmentArgs,
    spec: &crate::io::InputSpec,
    out: &mut OutputDir,
) -> Result<output::xenium_ranger::Folder> {
    use output::xenium_ranger::{Bundle, Folder, DIR};
    let bundle = if args.demo {
        Bundle::Demo
    } else {
        match (spec.preset, spec.transcripts.parent()) {
            (crate::io::args::Preset::Xenium, Some(folder)) => Bundle::Folder(folder.to_path_buf()),
            _ => Bundle::Unknown,
        }
    };
    Ok(Folder {
        dir: out.staged(DIR)?,
        final_dir: args.out.join(DIR),
        bundle,
    })
}

/// `uns["seggpu"]` of the AnnData: what made it.
fn anndata_uns(
    args: &SegmentArgs,
    model: &Model,
    params: &SegmentParams,
    command_line: &[String],
) -> Result<Vec<(String, String)>> {
    Ok(vec![
        ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("model_sha256".to_string(), model.sha256.clone()),
        ("parameters".to_string(), serde_json::to_string(params)?),
        (
            "command_line".to_string(),
            serde_json::to_string(command_line)?,
        ),
        (
            "min_transcripts".to_string(),
            args.min_transcripts(model).to_string(),
        ),
    ])
}

/// Everything the log of a run is made from.
struct Finish<'a> {
    args: &'a SegmentArgs,
    command_line: &'a [String],
    params: &'a SegmentParams,
    model: &'a Model,
    spec: &'a crate::io::InputSpec,
    columns: InputColumns,
    membership: crate::io::MembershipReport,
    nuclei: &'a crate::io::Nuclei,
    summary: &'a Summary,
    outputs: OutputFacts,
    stages: Vec<(&'static str, f64)>,
    started: Instant,
    streaming: Option<super::stream::StreamFacts>,
    demo_accuracy: Option<serde_json::Value>,
}

/// Writes `segmentation_log.json`, moves every output to its final name and
/// prints the result line.
fn finish(mut out: OutputDir, f: Finish) -> Result<()> {
    let log = SegmentationLog {
        version: env!("CARGO_PKG_VERSION"),
        command_line: f.command_line,
        parameters: f.params,
        model: ModelFacts {
            sha256: &f.model.sha256,
            architecture: f.model.arch,
            dtype: &f.model.dtype,
            vocabulary: f.model.genes.len(),
            bd_features: f.model.bd_features,
        },
        inputs: f.spec.files(),
        columns: f.columns,
        membership: f.membership,
        nuclei_notes: &f.nuclei.notes,
        nuclei_skipped: f
            .nuclei
            .skipped
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect(),
        nuclei_altered: f
            .nuclei
            .altered
            .iter()
            .map(|(id, what)| format!("{id}: {what}"))
            .collect(),
        result: f.summary,
        outputs: f.outputs,
        seconds: f.stages.iter().copied().collect(),
        seconds_total: f.started.elapsed().as_secs_f64(),
        peak_rss_bytes: super::stream::peak_rss_bytes(),
        streaming: f.streaming,
        demo_accuracy: f.demo_accuracy,
    };
    let log_path = out.staged(output::LOG_FILE)?;
    std::fs::write(&log_path, serde_json::to_vec_pretty(&log)?).with_context(|| {
        format!(
            "cannot write {}",
            f.args.out.join(output::LOG_FILE).display()
        )
    })?;
    out.commit()?;
    for (stage, s) in &f.stages {
        log::debug!("{stage:>18}: {s:8.2} s");
    }
    report_result(f.summary, &f.args.out, f.started.elapsed().as_secs_f64());
    Ok(())
}

/// Whether the bucketed path (`bucketed`) reads and writes in batches:
/// every output is written that way; only `--demo`'s accuracy needs every
/// row's result in memory.
fn reads_in_batches(args: &SegmentArgs, bucketed: bool) -> bool {
    bucketed && !rows_held_for_tests() && !args.demo
}

/// Environment variable (builds with the `testing` feature only): when set,
/// the bucketed path always takes the flow that holds every row, so that a
/// test compares the two flows with the same command line (which the AnnData
/// and SpatialData stores record).
pub const ROWS_HELD_ENV: &str = "SEGGPU_TEST_ROWS_HELD";

fn rows_held_for_tests() -> bool {
    crate::test_hooks::value::<String>(ROWS_HELD_ENV).is_some()
}

/// The bucketed path without `--demo`: the input is read and the outputs
/// written in batches ([`super::stream::segment_file`]).
#[allow(clippy::too_many_arguments)]
fn run_in_batches(
    args: &SegmentArgs,
    spec: &crate::io::InputSpec,
    model: &Model,
    params: &SegmentParams,
    backend: &mut dyn Backend,
    command_line: &[String],
    progress: &Progress,
    mut out: OutputDir,
    started: Instant,
    budget: &super::budget::Budget,
) -> Result<()> {
    let clock = Instant::now();
    let spinner = progress.spinner("reading");
    let layout = crate::io::TranscriptLayout::open(spec)?;
    let id_kind = layout.check_ids(args.tmp_dir.as_ref().unwrap_or(&args.out))?;
    if args.xenium_ranger {
        output::xenium_ranger::check_layout_ids(&layout, id_kind)?;
    }
    let mut nuclei = crate::io::read_nuclei(spec, model.bd_features)?;
    super::budget::check_nuclei(nuclei.ids.len(), budget.bytes)?;
    // The vertices go to disk: what stays per nucleus is bounded by the
    // budget's share for the nuclei.
    nuclei.spill_polygons(args.tmp_dir.as_ref().unwrap_or(&args.out), &args.out)?;
    let read_memory = super::stream::PhaseMemory::now("read nuclei");
    spinner.finish_and_clear();
    report_nuclei(&nuclei, spec);
    let columns = InputColumns {
        transcripts: layout.columns().into_iter().collect(),
        boundaries: nuclei.columns.iter().cloned().collect(),
    };
    let mut stages = vec![("read", clock.elapsed().as_secs_f64())];
    let wants = |k: output::OutputKind| args.outputs.contains(&k);
    let format = args.table_format;
    let mut written = Vec::new();
    let mut staged = |kind: output::OutputKind, file: &str| -> Result<Option<PathBuf>> {
        if !wants(kind) {
            return Ok(None);
        }
        let name = format.file_name(file);
        let path = out.staged(&name)?;
        written.push(name);
        Ok(Some(path))
    };
    let transcripts = staged(output::OutputKind::Transcripts, output::TRANSCRIPTS_FILE)?;
    let cells = staged(output::OutputKind::Cells, output::CELLS_FILE)?;
    let mut per_cell_file = |kind: output::OutputKind, name: &str| -> Result<Option<PathBuf>> {
        if !wants(kind) {
            return Ok(None);
        }
        written.push(name.to_string());
        out.staged(name).map(Some)
    };
    let boundaries = match (
        per_cell_file(output::OutputKind::Polygons, output::BOUNDARIES_FILE)?,
        per_cell_file(
            output::OutputKind::Polygons,
            output::BOUNDARIES_GEOJSON_FILE,
        )?,
    ) {
        (Some(parquet), Some(geojson)) => Some((parquet, geojson)),
        _ => None,
    };
    let anndata = match (
        per_cell_file(output::OutputKind::Anndata, output::ANNDATA_FILE)?,
        per_cell_file(output::OutputKind::Anndata, output::H5AD_FILE)?,
    ) {
        (Some(zarr), Some(h5ad)) => Some((zarr, h5ad)),
        _ => None,
    };
    let spatialdata = per_cell_file(output::OutputKind::Spatialdata, output::SPATIALDATA_FILE)?;
    // Listed in the in-memory path's order: the folder before the report.
    let xenium_ranger = if args.xenium_ranger {
        written.push(output::xenium_ranger::DIR.to_string());
        Some(xenium_ranger_folder(args, spec, &mut out)?)
    } else {
        None
    };
    let report = if wants(output::OutputKind::Report) {
        written.push(output::html_report::REPORT_FILE.to_string());
        Some(out.staged(output::html_report::REPORT_FILE)?)
    } else {
        None
    };
    let per_cell = (boundaries.is_some()
        || anndata.is_some()
        || spatialdata.is_some()
        || report.is_some()
        || xenium_ranger.is_some())
    .then(|| -> Result<_> {
        Ok(output::aggregate::PerCellOutputs {
            boundaries,
            anndata,
            spatialdata,
            report: report.is_some(),
            uns: anndata_uns(args, model, params, command_line)?,
            min_transcripts: args.min_transcripts(model),
            tmp_dir: args.tmp_dir.clone().unwrap_or_else(|| args.out.clone()),
            out: args.out.clone(),
            xenium_ranger,
        })
    })
    .transpose()?;
    let outputs = super::stream::FileOutputs {
        transcripts,
        cells,
        format,
        per_cell,
    };
    let settings = stream_settings(args, budget);
    let mut run = super::stream::segment_file(
        &layout, id_kind, spec, &nuclei, model, params, backend, progress, &settings, &outputs,
    )?;
    stages.extend(run.stage_seconds.iter().copied());
    run.facts.rss_by_phase.splice(0..0, read_memory);
    let params = &SegmentParams {
        tile_size: run.facts.tile.tile_size,
        ..params.clone()
    };
    let pending = run.per_cell.as_mut().and_then(|c| c.report.take());
    if let (Some(pending), Some(path)) = (pending, &report) {
        let clock = Instant::now();
        pending.write(path, &run.summary, params, command_line, &stages)?;
        stages.push(("html_report", clock.elapsed().as_secs_f64()));
    }
    let spinner = progress.spinner("writing");
    finish(
        out,
        Finish {
            args,
            command_line,
            params,
            model,
            spec,
            columns,
            membership: run.membership,
            nuclei: &nuclei,
            summary: &run.summary,
            outputs: OutputFacts {
                written,
                table_format: format,
                cells: run.per_cell.as_ref().map_or(0, |c| c.cells),
                min_transcripts: args.min_transcripts(model).max(1),
                polygon_sources: run.per_cell.and_then(|c| c.polygon_sources),
            },
            stages,
            started,
            streaming: Some(run.facts),
            demo_accuracy: None,
        },
    )?;
    spinner.finish_and_clear();
    Ok(())
}

/// The settings of the bucketed path within `budget`.
fn stream_settings(
    args: &SegmentArgs,
    budget: &super::budget::Budget,
) -> super::stream::StreamSettings {
    super::stream::StreamSettings {
        max_memory: budget.bytes,
        max_memory_source: budget.source.clone(),
        tile_size: args.tile_size,
        overlap: args.overlap,
        tmp_dir: args.tmp_dir.clone().unwrap_or_else(|| args.out.clone()),
        out: args.out.clone(),
        resume: args.resume,
        bucket_tiles: args.bucket_tiles,
    }
}

/// The one-line result of a run.
fn report_result(summary: &Summary, out: &std::path::Path, seconds: f64) {
    let c = &summary.counts;
    log::info!(
        "seggpu segment: {} transcripts read, {} assigned to {} cells, {} in {} fragments, {} unassigned, {} filtered → {} ({seconds:.1} s)",
        c.read,
        c.assigned,
        c.cells_with_transcripts,
        c.fragment,
        c.fragments,
        c.unassigned,
        c.filtered.values().sum::<usize>(),
        out.display(),
    );
}
