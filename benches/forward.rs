//! CPU forward pass + scoring on a synthetic 200k-transcript tile with
//! segger_dev's default sizes. Also writes the tile and model to
//! `target/bench/` so `tools/reference/bench_pyg.py` can time PyTorch
//! Geometric on the identical graph and weights:
//!
//! ```text
//! cargo bench --bench forward
//! python tools/reference/bench_pyg.py --graph target/bench/tile200k.graph.safetensors \
//!     --model target/bench/tile200k.model.safetensors --threads $(nproc)
//! ```

use std::time::Instant;

use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::Backend;
use seggpu::model::StorageDtype;
use seggpu::tensorfile;

fn main() {
    let n_tx: usize = std::env::var("SEGGPU_BENCH_TX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let repeats = 5;
    let (model, graph) = seggpu::synthetic::tile(n_tx, 7);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let stem = format!("tile{}k", n_tx / 1000);
    let graph_bytes = tensorfile::serialize(&graph.to_tensors(), None).expect("serialise graph");
    std::fs::write(dir.join(format!("{stem}.graph.safetensors")), graph_bytes)
        .expect("write graph");
    let model_bytes = model
        .to_safetensors(StorageDtype::F32)
        .expect("serialise model");
    std::fs::write(dir.join(format!("{stem}.model.safetensors")), model_bytes)
        .expect("write model");

    let mut cpu = CpuBackend::new();
    let rf = graph
        .receptive_field
        .clone()
        .expect("synthetic tile has a receptive field");
    let mut times = Vec::new();
    let mut cpu_times = Vec::new();
    for _ in 0..repeats + 1 {
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        let z = cpu.forward(&model, &graph, false).expect("forward");
        let best = cpu.score(&z, &rf).expect("score");
        std::hint::black_box(&best);
        times.push(start.elapsed().as_secs_f64());
        cpu_times.push(cpu_seconds().zip(cpu_start).map(|(end, start)| end - start));
    }
    times.remove(0);
    cpu_times.remove(0);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mut cpu_times: Vec<f64> = cpu_times.into_iter().flatten().collect();
    cpu_times.sort_by(f64::total_cmp);
    // CPU seconds of all threads: on a machine shared with other work this
    // varies far less than the wall clock.
    let cpu_median = cpu_times
        .get(cpu_times.len() / 2)
        .map_or("null".to_owned(), |s| format!("{s:.4}"));
    println!(
        "{{\"impl\":\"seggpu-cpu\",\"n_tx\":{n_tx},\"n_edges_tx_tx\":{},\"seconds\":{median:.4},\"tx_per_s\":{:.0},\"threads\":{},\"cpu_seconds\":{cpu_median}}}",
        graph.neighbors.n_edges(),
        n_tx as f64 / median,
        rayon::current_num_threads()
    );
}

/// CPU time of this process so far (all threads), from `/proc` on Linux.
fn cpu_seconds() -> Option<f64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total as f64 * 1e-9)
}
