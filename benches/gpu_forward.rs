//! GPU versus CPU: forward pass + scoring on a synthetic tile
//! (`seggpu::synthetic::tile`, default 200k transcripts, segger_dev's default
//! sizes), both backends in the same run.
//!
//! ```text
//! cargo bench --bench gpu_forward
//! SEGGPU_BENCH_TX=50000 SEGGPU_BENCH_REPEATS=3 cargo bench --bench gpu_forward
//! cargo bench --bench gpu_forward -- --adapter NAME --precision f16
//! ```
//!
//! Prints one JSON line per backend (median seconds of `repeats` runs after
//! a warm-up, transcripts per second) and the GPU/CPU speed ratio. Without
//! a GPU adapter only the CPU line is printed.

use std::time::Instant;

use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::gpu::{GpuBackend, GpuOptions, Precision};
use seggpu::backend::Backend;
use seggpu::graph::TileGraph;
use seggpu::model::Model;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median seconds of forward + scoring, and the best indices of the last run.
fn time(
    backend: &mut dyn Backend,
    model: &Model,
    graph: &TileGraph,
    repeats: usize,
) -> (f64, f64, f64, Vec<i32>) {
    let rf = graph
        .receptive_field
        .as_ref()
        .expect("synthetic tile has a receptive field");
    let mut total = Vec::new();
    let mut forward = Vec::new();
    let mut index = Vec::new();
    for _ in 0..repeats + 1 {
        let start = Instant::now();
        let z = backend.forward(model, graph, false).expect("forward");
        let after_forward = start.elapsed().as_secs_f64();
        let best = backend.score(&z, rf).expect("score");
        total.push(start.elapsed().as_secs_f64());
        forward.push(after_forward);
        index = best.index;
    }
    total.remove(0);
    forward.remove(0);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let t = median(&mut total);
    let f = median(&mut forward);
    (t, f, t - f, index)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let n_tx: usize = env_or("SEGGPU_BENCH_TX", 200_000);
    let repeats: usize = env_or("SEGGPU_BENCH_REPEATS", 5).max(1);
    let (model, graph) = seggpu::synthetic::tile(n_tx, 7);
    let edges = graph.neighbors.n_edges();
    let line = |name: &str, adapter: &str, (t, f, s, _): &(f64, f64, f64, Vec<i32>)| {
        println!(
            "{{\"impl\":\"{name}\",\"adapter\":\"{adapter}\",\"n_tx\":{n_tx},\"n_bd\":{},\"n_edges_tx_tx\":{edges},\"seconds\":{t:.4},\"forward_s\":{f:.4},\"score_s\":{s:.4},\"tx_per_s\":{:.0}}}",
            graph.n_bd(),
            n_tx as f64 / t
        );
    };

    let mut cpu = CpuBackend::new();
    let cpu_result = time(&mut cpu, &model, &graph, repeats);
    line("seggpu-cpu", &cpu.describe(), &cpu_result);

    let options = GpuOptions {
        adapter: flag("--adapter"),
        precision: match flag("--precision").as_deref() {
            Some("f16") => Precision::F16,
            _ => Precision::F32,
        },
        ..GpuOptions::from_env()
    };
    let mut gpu = match GpuBackend::new(options) {
        Ok(gpu) => gpu,
        Err(e) => {
            println!("no GPU benchmark: {e}");
            return;
        }
    };
    let gpu_result = time(&mut gpu, &model, &graph, repeats);
    line("seggpu-gpu", &gpu.describe(), &gpu_result);
    let same = gpu_result
        .3
        .iter()
        .zip(&cpu_result.3)
        .filter(|(a, b)| a == b)
        .count();
    println!(
        "gpu/cpu speed ratio: {:.2} (forward {:.2}, scoring {:.2}); best indices identical for {same} of {n_tx} transcripts",
        cpu_result.0 / gpu_result.0,
        cpu_result.1 / gpu_result.1,
        cpu_result.2 / gpu_result.2.max(1e-9),
    );
}
