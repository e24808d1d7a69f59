//! CPU training speed against PyTorch + PyG on the same windows: training
//! steps per second and window transcripts per second through forward,
//! backward and Adam (`seggpu train`'s step), segger_dev's default sizes
//! (embedding 16, hidden 32, heads 3, 3 mid layers, out 32).
//!
//! ```text
//! cargo bench --bench train
//! SEGGPU_BENCH_PYTHON=/work/venv-ref/bin/python cargo bench --bench train
//! SEGGPU_BENCH_XENIUM=DIR SEGGPU_BENCH_WINDOWS=40 cargo bench --bench train
//! ```
//!
//! The windows are drawn once, as `seggpu train` draws them (random 100 µm
//! windows, half the belongs edges supervision-only, one random negative per
//! positive), from a simulated sample (`seggpu simulate`, 1000 cells, seed
//! 3) or the Xenium folder `SEGGPU_BENCH_XENIUM`, and written to
//! `SEGGPU_BENCH_OUT` (default `target/bench/train`): `model.safetensors`
//! (the random starting weights) and `batch_NNN.safetensors` (the window's
//! graph in the `seggpu forward` format plus `pos_pairs` and `neg_pairs`),
//! which `tools/reference/train_bench_pyg.py` reads. With
//! `SEGGPU_BENCH_PYTHON` set, each round times seggpu and then the PyG
//! script, alternating, so both see the same machine load; the script's
//! edge and pair counts must equal ours (the same windows) or the bench
//! fails. Threads: `SEGGPU_BENCH_THREADS` (default 2) for both sides.
//! Prints one JSON line per side and round, then the median ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use seggpu::graph::build::GraphParams;
use seggpu::io::{InputArgs, Preset};
use seggpu::model::{BdFeatureMode, StorageDtype};
use seggpu::pipeline::{prepare, ScoreCut, SegmentParams, UnknownGenes};
use seggpu::tensorfile::OwnedTensor;
use seggpu::train::command::{kept_genes, DEFAULT_ARCHITECTURE};
use seggpu::train::data::{stream, streams, Batch, TrainingData, WindowScratch, WindowSettings};
use seggpu::train::engine::{CpuEngine, TrainEngine};
use seggpu::train::kernels::AdamConfig;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sizes of the windows, to show that both sides train on the same graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    windows: usize,
    window_tx: usize,
    edges_tx_tx: usize,
    edges_tx_bd: usize,
    pairs: usize,
}

impl Counts {
    fn of(batches: &[Batch]) -> Self {
        Counts {
            windows: batches.len(),
            window_tx: batches.iter().map(|b| b.graph.n_tx()).sum(),
            edges_tx_tx: batches.iter().map(|b| b.graph.neighbors.n_edges()).sum(),
            edges_tx_bd: batches.iter().map(|b| b.graph.belongs.n_edges()).sum(),
            pairs: batches
                .iter()
                .map(|b| b.pairs.positive.len() + b.pairs.negative.len())
                .sum(),
        }
    }

    fn from_json(line: &serde_json::Value) -> Option<Self> {
        let n = |key: &str| line.get(key)?.as_u64().map(|v| v as usize);
        Some(Counts {
            windows: n("windows")?,
            window_tx: n("window_tx")?,
            edges_tx_tx: n("edges_tx_tx")?,
            edges_tx_bd: n("edges_tx_bd")?,
            pairs: n("pairs")?,
        })
    }
}

/// The windows and the starting weights, written to `out`.
fn draw_windows(out: &Path, n_windows: usize) -> Result<Vec<Batch>> {
    let mut input = InputArgs::default();
    match std::env::var_os("SEGGPU_BENCH_XENIUM") {
        Some(dir) => input.xenium = Some(PathBuf::from(dir)),
        None => {
            let sample = out.join("sample");
            let options = seggpu::simulate::SimulateOptions {
                seed: 3,
                ..Default::default()
            };
            seggpu::simulate::simulate(&sample, &options)?;
            input.xenium = Some(sample);
            input.preset = Some(Preset::Xenium);
        }
    }
    let spec = input.resolve()?;
    let mode = BdFeatureMode::Props;
    let mut transcripts = seggpu::io::read_transcripts(&spec)?;
    let nuclei = seggpu::io::read_nuclei(&spec, mode)?;
    seggpu::io::check_membership(&mut transcripts, &nuclei, &spec)?;
    let genes = kept_genes(&transcripts);
    let (emb, hidden, heads, mid_layers, out_channels) = DEFAULT_ARCHITECTURE;
    let arch = seggpu::model::Architecture {
        vocab: genes.len(),
        emb,
        heads,
        hidden,
        out: out_channels,
        mid_layers,
    };
    let model = seggpu::train::init::random_model(arch, genes, mode, &mut stream(0, streams::INIT));
    let params = SegmentParams {
        graph: GraphParams {
            k_tx: seggpu::defaults::K_TX,
            dist_tx: Some(seggpu::defaults::DIST_TX),
            k_bd: seggpu::defaults::K_BD,
            dist_bd: seggpu::defaults::DIST_BD,
        },
        score_cut: ScoreCut::Fixed(seggpu::defaults::SCORE_CUT),
        fragments: None,
        unknown_genes: UnknownGenes::Error,
        tile_size: seggpu::defaults::TILE_SIZE,
        margin: None,
    };
    let prepared = prepare::run(&mut transcripts, &nuclei, &model, &params)?;
    let data = TrainingData::new(&prepared, &nuclei, &params.graph, 0.2, 0)?;
    let settings = WindowSettings {
        size: 100.0,
        supervision_fraction: 0.5,
        random_negatives: 1,
    };
    let mut rng = stream(0, streams::WINDOWS);
    let mut scratch = WindowScratch::default();
    let batches = (0..n_windows)
        .map(|_| data.draw(&settings, &mut rng, &mut scratch))
        .collect::<Result<Vec<_>>>()?;

    std::fs::create_dir_all(out)?;
    for stale in std::fs::read_dir(out)? {
        let path = stale?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("batch_")) {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::write(
        out.join("model.safetensors"),
        seggpu::train::weights::to_bytes(&model, StorageDtype::F32, &[])?,
    )?;
    let pair_tensor = |pairs: &[(u32, u32)]| {
        let mut index: Vec<i64> = pairs.iter().map(|p| p.0 as i64).collect();
        index.extend(pairs.iter().map(|p| p.1 as i64));
        OwnedTensor::i64(vec![2, pairs.len()], &index)
    };
    for (i, batch) in batches.iter().enumerate() {
        let mut tensors = batch.graph.to_tensors();
        tensors.push(("pos_pairs".into(), pair_tensor(&batch.pairs.positive)));
        tensors.push(("neg_pairs".into(), pair_tensor(&batch.pairs.negative)));
        std::fs::write(
            out.join(format!("batch_{i:03}.safetensors")),
            seggpu::tensorfile::serialize(&tensors, None)?,
        )?;
    }
    Ok(batches)
}

/// Median seconds of `repeat` passes over the windows, after one warm-up pass.
fn time_seggpu(model_path: &Path, batches: &[Batch], repeat: usize) -> Result<(f64, f32)> {
    let model = seggpu::model::Model::load(model_path)?;
    let mut engine = CpuEngine::new(model, AdamConfig::default());
    let mut pass = || -> Result<f32> {
        let mut loss = 0.0;
        for batch in batches {
            loss = engine.step(batch, 1e-3)?;
        }
        Ok(loss)
    };
    pass()?;
    let mut seconds = Vec::with_capacity(repeat);
    let mut loss = 0.0;
    for _ in 0..repeat {
        let start = Instant::now();
        loss = pass()?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    Ok((seconds[seconds.len() / 2], loss))
}

/// Runs the PyG script on `dir` and returns its JSON line.
fn time_pyg(python: &str, dir: &Path, threads: usize, repeat: usize) -> Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/reference/train_bench_pyg.py");
    let output = Command::new(python)
        .arg(&script)
        .arg("--dir")
        .arg(dir)
        .args(["--threads", &threads.to_string()])
        .args(["--repeat", &repeat.to_string()])
        .output()
        .with_context(|| format!("cannot run {python} {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("PyG script printed {line:?}"))
}

fn main() -> Result<()> {
    let threads: usize = env_or("SEGGPU_BENCH_THREADS", 2);
    let n_windows: usize = env_or("SEGGPU_BENCH_WINDOWS", 20);
    let repeat: usize = env_or("SEGGPU_BENCH_REPEAT", 3).max(1);
    let rounds: usize = env_or("SEGGPU_BENCH_ROUNDS", 3).max(1);
    let out = std::env::var_os("SEGGPU_BENCH_OUT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/train"),
        PathBuf::from,
    );
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let batches = draw_windows(&out, n_windows)?;
    let counts = Counts::of(&batches);
    let python = std::env::var("SEGGPU_BENCH_PYTHON").ok();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let (seconds, loss) = time_seggpu(&out.join("model.safetensors"), &batches, repeat)?;
        println!(
            "{{\"impl\":\"seggpu-cpu\",\"round\":{round},\"windows\":{},\"window_tx\":{},\"edges_tx_tx\":{},\"edges_tx_bd\":{},\"pairs\":{},\"seconds_per_pass\":{seconds:.4},\"steps_per_s\":{:.2},\"tx_per_s\":{:.0},\"threads\":{threads},\"last_loss\":{loss}}}",
            counts.windows,
            counts.window_tx,
            counts.edges_tx_tx,
            counts.edges_tx_bd,
            counts.pairs,
            counts.windows as f64 / seconds,
            counts.window_tx as f64 / seconds
        );
        let Some(python) = &python else { continue };
        let pyg = time_pyg(python, &out, threads, repeat)?;
        println!("{pyg}");
        ensure!(
            Counts::from_json(&pyg) == Some(counts),
            "the PyG script saw other windows: {pyg} against {counts:?}"
        );
        let pyg_seconds = pyg["seconds_per_pass"]
            .as_f64()
            .context("seconds_per_pass missing from the PyG line")?;
        ratios.push(pyg_seconds / seconds);
    }
    if !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        println!(
            "{{\"speedup_over_pyg_median\":{:.2},\"per_round\":{:?}}}",
            ratios[ratios.len() / 2],
            ratios
                .iter()
                .map(|r| (r * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}
