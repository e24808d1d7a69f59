//! The `seggpu` command line: argument definitions and the commands behind them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::{self, AutoBackend, GpuBackend, GpuOptions, Precision};
use crate::backend::Backend;
use crate::graph::TileGraph;
use crate::logging::Verbosity;
use crate::model::Model;
use crate::tensorfile::{self, OwnedTensor, TensorFile};

/// Segger cell segmentation on any GPU or the CPU.
#[derive(Debug, Parser)]
#[command(name = "seggpu", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Errors only: no progress bars, warnings or summary lines.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Also print the seconds per stage and other details.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// CPU threads for the CPU kernels, graph building and reading [default: one per core].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
}

/// Compute backend choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// A hardware GPU when there is one (software adapters are skipped
    /// unless named with --adapter), else the CPU; a tile the GPU fails on
    /// is redone on the CPU, and training goes on on the CPU from the last
    /// completed step.
    Auto,
    /// A GPU adapter (software ones included); no adapter is an error.
    Gpu,
    /// Multi-threaded CPU kernels.
    Cpu,
}

/// Precision of GPU activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionChoice {
    /// f32 everywhere.
    F32,
    /// Activations stored as f16 where the adapter has SHADER_F16 (looser
    /// results; env SEGGPU_F16=off disables it).
    F16,
}

/// Backend selection flags, shared by every command that computes.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// GPU adapter to use: a case-insensitive substring of its name (see `seggpu devices`).
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
    /// Precision of GPU activations.
    #[arg(long, value_enum, default_value_t = PrecisionChoice::F32)]
    pub precision: PrecisionChoice,
}

impl BackendArgs {
    /// GPU options for these flags (and `SEGGPU_LIMITS` from the environment).
    pub fn gpu_options(&self) -> GpuOptions {
        GpuOptions {
            adapter: self.adapter.clone(),
            precision: match self.precision {
                PrecisionChoice::F32 => Precision::F32,
                PrecisionChoice::F16 => Precision::F16,
            },
            ..GpuOptions::from_env()
        }
    }
}

/// Subcommands.
// Parsed once per run: the size of the `segment` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a weights file's architecture, dtype, vocabulary, defaults and sha256.
    Inspect {
        /// A seggpu weights file (safetensors, docs/contract.md §7).
        model: PathBuf,
    },
    /// Run the model on a graph given as tensors and write the embeddings
    /// (and best nucleus per transcript when the graph has `rf_index`).
    Forward {
        /// Graph file: tx_token, bd_x, edge_tx_tx, edge_tx_bd [, rf_index] (see README).
        #[arg(long)]
        graph: PathBuf,
        /// A seggpu weights file.
        #[arg(long)]
        model: PathBuf,
        /// Output safetensors file: z_tx, z_bd [, best_score, best_index].
        #[arg(long)]
        out: PathBuf,
        /// Backend selection.
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// List the GPU adapters wgpu finds, with the limits and features seggpu uses.
    Devices,
    /// Segment a sample: vendor files + weights → transcript assignments,
    /// cells and a log (docs/contract.md §11).
    Segment {
        /// Segmentation options.
        #[command(flatten)]
        args: crate::pipeline::run::SegmentArgs,
        /// Input files and columns.
        #[command(flatten)]
        input: crate::io::args::InputArgs,
        /// Backend selection.
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Train a model on a slide with Segger's self-supervised task (nuclear transcripts →
    /// their own nucleus), on a GPU or the CPU (--backend; auto goes on on the CPU from the
    /// last completed step if the GPU fails): same inputs, filters, nucleus features and graphs
    /// as `segment`; writes the weights file and a JSON training log next to it.
    Train {
        /// Output and graph options.
        #[command(flatten)]
        args: crate::train::TrainArgs,
        /// Input files and columns.
        #[command(flatten)]
        input: crate::io::args::InputArgs,
        /// Backend selection (training computes in f32 whatever --precision says).
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Write a synthetic Xenium output folder with ground truth (transcripts,
    /// nucleus boundaries, ground_truth, ground_truth_cells parquet files).
    Simulate {
        /// Output directory (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Number of cells (about 150 transcripts each, noise included).
        #[arg(long, default_value_t = 1000)]
        cells: usize,
        /// RNG seed (a seed gives byte-identical files).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let verbosity = Verbosity::from_flags(cli.quiet, cli.verbose);
    crate::logging::init(verbosity);
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads as usize)
            .build_global()
            .context("--threads: the thread pool was already started")?;
    }
    match cli.command {
        Command::Inspect { model } => inspect(&model),
        Command::Forward {
            graph,
            model,
            out,
            backend,
        } => forward(&graph, &model, &out, &backend),
        Command::Devices => devices(),
        Command::Segment {
            args,
            input,
            backend: backend_args,
        } => {
            // Lossy: an argument that is not UTF-8 (a path) must not panic here.
            let command_line: Vec<String> = std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let mut engine = make_backend(&backend_args)?;
            crate::pipeline::run::run(
                &args,
                &input,
                engine.as_mut(),
                &backend_args,
                &command_line,
                verbosity,
            )
        }
        Command::Train {
            args,
            input,
            backend,
        } => {
            let command_line: Vec<String> = std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            crate::train::command::run(&args, &input, &backend, &command_line, verbosity)
        }
        Command::Simulate { out, cells, seed } => {
            let opts = crate::simulate::SimulateOptions {
                cells,
                seed,
                ..Default::default()
            };
            println!("{}", crate::simulate::simulate(&out, &opts)?);
            Ok(())
        }
    }
}

/// The message of an error and its causes, joined by `: `, leaving out a
/// cause whose text the message already holds (some errors repeat their
/// source's text, e.g. "No such file or directory (os error 2)").
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn inspect(path: &std::path::Path) -> Result<()> {
    let model = Model::load(path)?;
    let a = model.arch;
    println!("file:         {}", path.display());
    println!("sha256:       {}", model.sha256);
    println!("format:       {}", crate::model::FORMAT);
    println!("dtype:        {}", model.dtype);
    println!(
        "architecture: vocab {} · embedding {} · heads {} · hidden {} per head · {} mid layers · out {} per head (z width {})",
        a.vocab, a.emb, a.heads, a.hidden, a.mid_layers, a.out, a.z_dim()
    );
    println!(
        "layers:       {}",
        model
            .layers
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "bd_features:  {}",
        serde_json::to_string(&model.bd_features)?.trim_matches('"')
    );
    let first: Vec<&str> = model.genes.iter().take(10).map(String::as_str).collect();
    println!(
        "vocabulary:   {} genes (embedding rows {}); first: {}",
        model.genes.len(),
        a.vocab,
        first.join(", ")
    );
    match &model.defaults {
        Some(d) => println!("defaults:     {}", d.to_json()),
        None => println!("defaults:     (none stored; seggpu's defaults apply)"),
    }
    Ok(())
}

/// The backend `args` ask for: `cpu`; `gpu` (an error without an adapter);
/// `auto` (a hardware GPU, else the CPU with one warning line on stderr).
pub fn make_backend(args: &BackendArgs) -> Result<Box<dyn Backend>> {
    Ok(match args.backend {
        BackendChoice::Cpu => Box::new(CpuBackend::new()),
        BackendChoice::Gpu => Box::new(open_gpu(args)?),
        BackendChoice::Auto => Box::new(AutoBackend::new(args.gpu_options())),
    })
}

/// The GPU of `--backend gpu`: any adapter, software ones included; none is an error.
pub fn open_gpu(args: &BackendArgs) -> Result<GpuBackend> {
    GpuBackend::new(args.gpu_options()).context("--backend gpu (try --backend auto or cpu)")
}

fn devices() -> Result<()> {
    let adapters = gpu::list_adapters();
    if adapters.is_empty() {
        println!("no GPU adapter found (seggpu runs on the CPU: --backend cpu, or auto)");
        return Ok(());
    }
    for (i, a) in adapters.iter().enumerate() {
        let status = match (&a.unusable, a.auto_choice) {
            (Some(why), _) => format!("unusable: {why}"),
            (None, true) => "usable; --backend auto picks this one".to_owned(),
            (None, false) => "usable".to_owned(),
        };
        println!("[{i}] {}", a.name);
        println!("    backend:     {}", a.backend);
        println!("    device type: {}", a.device_type);
        if !a.driver.is_empty() {
            println!("    driver:      {}", a.driver);
        }
        println!("    status:      {status}");
        println!(
            "    features:    SHADER_F16 {}",
            if a.shader_f16 {
                "yes (--precision f16 available)"
            } else {
                "no"
            }
        );
        for (name, value) in &a.limits {
            println!("    {name:<40} {value}");
        }
    }
    if !adapters.iter().any(|a| a.auto_choice) {
        println!("--backend auto uses the CPU here (no hardware adapter); --backend gpu uses a software one");
    }
    Ok(())
}

fn forward(
    graph_path: &std::path::Path,
    model_path: &std::path::Path,
    out: &std::path::Path,
    backend_args: &BackendArgs,
) -> Result<()> {
    let model = Model::load(model_path)?;
    let graph = TileGraph::from_tensor_file(&TensorFile::open(graph_path)?, model.arch.vocab)?;
    let mut backend = make_backend(backend_args)?;
    let embeddings = backend.forward(&model, &graph, false)?;
    let dim = embeddings.dim;
    let mut tensors = vec![
        (
            "z_tx".to_owned(),
            OwnedTensor::f32(vec![graph.n_tx(), dim], &embeddings.z_tx),
        ),
        (
            "z_bd".to_owned(),
            OwnedTensor::f32(vec![graph.n_bd(), dim], &embeddings.z_bd),
        ),
    ];
    if let Some(rf) = &graph.receptive_field {
        let best = backend.score(&embeddings, rf)?;
        let scores = best.score_or_nan();
        let index: Vec<i64> = best.index.iter().map(|&i| i as i64).collect();
        tensors.push((
            "best_score".into(),
            OwnedTensor::f32(vec![graph.n_tx()], &scores),
        ));
        tensors.push((
            "best_index".into(),
            OwnedTensor::i64(vec![graph.n_tx()], &index),
        ));
    }
    let bytes = tensorfile::serialize(&tensors, None)?;
    crate::staging::write_atomically(out, &bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    log::info!(
        "seggpu forward: {} transcripts, {} nuclei on {} → {}",
        graph.n_tx(),
        graph.n_bd(),
        backend.describe(),
        out.display()
    );
    Ok(())
}
