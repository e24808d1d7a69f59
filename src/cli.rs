//! The `seggpu` command line: argument definitions and the commands behind them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::graph::TileGraph;
use crate::model::Model;
use crate::tensorfile::{self, OwnedTensor, TensorFile};

/// Segger cell segmentation on any GPU or the CPU.
#[derive(Debug, Parser)]
#[command(name = "seggpu", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Compute backend choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// Multi-threaded CPU kernels.
    Cpu,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a weights file's architecture, dtype, vocabulary, defaults and sha256.
    Inspect {
        /// A seggpu weights file (safetensors, SPEC §7).
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
        /// Compute backend.
        #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
        backend: BackendChoice,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model } => inspect(&model),
        Command::Forward {
            graph,
            model,
            out,
            backend,
        } => forward(&graph, &model, &out, backend),
    }
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
        Some(d) => println!("defaults:     {d}"),
        None => println!("defaults:     (none stored; seggpu's defaults apply)"),
    }
    Ok(())
}

fn make_backend(choice: BackendChoice) -> Box<dyn Backend> {
    match choice {
        BackendChoice::Cpu => Box::new(CpuBackend::new()),
    }
}

fn forward(
    graph_path: &std::path::Path,
    model_path: &std::path::Path,
    out: &std::path::Path,
    choice: BackendChoice,
) -> Result<()> {
    let model = Model::load(model_path)?;
    let graph = TileGraph::from_tensor_file(&TensorFile::open(graph_path)?, model.arch.vocab)?;
    let mut backend = make_backend(choice);
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
        let scores: Vec<f32> = best
            .score
            .iter()
            .zip(&best.index)
            .map(|(&s, &i)| if i < 0 { f32::NAN } else { s })
            .collect();
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
    tensorfile::write_atomically(out, &bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "seggpu forward: {} transcripts, {} nuclei on {} → {}",
        graph.n_tx(),
        graph.n_bd(),
        backend.describe(),
        out.display()
    );
    Ok(())
}
