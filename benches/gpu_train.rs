//! GPU versus CPU training: steps per second of one training step (forward
//! keeping activations, pair loss, every gradient, Adam) on a synthetic tile
//! (`seggpu::synthetic::tile`, default 20k transcripts, segger_dev's default
//! sizes), both backends in the same run, from the same weights.
//!
//! ```text
//! cargo bench --bench gpu_train
//! SEGGPU_BENCH_TX=50000 SEGGPU_BENCH_STEPS=10 cargo bench --bench gpu_train
//! cargo bench --bench gpu_train -- --adapter NAME
//! ```
//!
//! Pairs: every belongs edge as a positive, twice as many random
//! (transcript, nucleus) pairs as negatives. Prints one JSON line per
//! backend (steps per second over `steps` steps after one warm-up step, the
//! last loss) and the GPU/CPU ratio, then the GPU again with
//! `with_checkpoints(CHECKPOINT_EVERY)` (as `--backend auto` trains: the
//! weights and moments read back with the loss of every 16th step). Without
//! a GPU adapter only the CPU line is printed.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use seggpu::backend::gpu::{GpuOptions, GpuTrainer};
use seggpu::train::engine::CHECKPOINT_EVERY;
use seggpu::train::grad::{loss_and_grad, zeros_like, Pairs};
use seggpu::train::Adam;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds per step (the mean over `steps` after a warm-up: throughput,
/// checkpoint steps included) and the last loss.
fn time(steps: usize, mut step: impl FnMut() -> f32) -> (f64, f32) {
    let mut loss = step();
    let start = Instant::now();
    for _ in 0..steps {
        loss = step();
    }
    (start.elapsed().as_secs_f64() / steps as f64, loss)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let n_tx: usize = env_or("SEGGPU_BENCH_TX", 20_000);
    let steps: usize = env_or("SEGGPU_BENCH_STEPS", 5).max(1);
    let lr = 1e-3;
    let (model, graph) = seggpu::synthetic::tile(n_tx, 7);
    let n_bd = graph.n_bd();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let positive: Vec<(u32, u32)> = (0..n_bd)
        .flat_map(|b| {
            let (s, e) = (graph.belongs.offsets[b], graph.belongs.offsets[b + 1]);
            graph.belongs.sources[s as usize..e as usize]
                .iter()
                .map(move |&t| (t, b as u32))
        })
        .collect();
    let negative: Vec<(u32, u32)> = (0..2 * positive.len().max(1))
        .map(|_| {
            (
                rng.random_range(0..n_tx as u32),
                rng.random_range(0..n_bd as u32),
            )
        })
        .collect();
    let pairs = Pairs { positive, negative };
    let line = |name: &str, adapter: &str, (s, loss): (f64, f32)| {
        println!(
            "{{\"impl\":\"{name}\",\"adapter\":\"{adapter}\",\"n_tx\":{n_tx},\"n_bd\":{n_bd},\"n_edges_tx_tx\":{},\"n_pairs\":{},\"seconds_per_step\":{s:.4},\"steps_per_s\":{:.3},\"last_loss\":{loss}}}",
            graph.neighbors.n_edges(),
            pairs.positive.len() + pairs.negative.len(),
            1.0 / s
        );
    };

    let mut cpu_model = model.clone();
    let mut adam = Adam::new(&cpu_model);
    let cpu = time(steps, || {
        let mut grads = zeros_like(&cpu_model);
        let loss = loss_and_grad(&cpu_model, &graph, &pairs, &mut grads);
        adam.update(&mut cpu_model, &mut grads, lr);
        loss
    });
    line(
        "seggpu-cpu",
        &format!("cpu ({} threads)", rayon::current_num_threads()),
        cpu,
    );

    let options = GpuOptions {
        adapter: flag("--adapter"),
        ..GpuOptions::from_env()
    };
    let mut trainer = match GpuTrainer::new(options, &model) {
        Ok(trainer) => trainer,
        Err(e) => {
            println!("no GPU benchmark: {e}");
            return;
        }
    };
    let adapter = trainer.backend().adapter();
    let gpu = time(steps, || {
        trainer.step(&graph, &pairs, lr).expect("GPU step")
    });
    line(
        "seggpu-gpu",
        &format!(
            "{} ({}, {})",
            adapter.name, adapter.backend, adapter.device_type
        ),
        gpu,
    );
    println!("gpu/cpu steps per second: {:.3}", cpu.0 / gpu.0);

    // `--backend auto`'s trainer: every CHECKPOINT_EVERY-th step also reads
    // the weights and Adam's moments back (its checkpoint after a device
    // loss).
    let mut trainer =
        GpuTrainer::with_backend(trainer.into_backend(), &model).with_checkpoints(CHECKPOINT_EVERY);
    let checkpointed = time(steps, || {
        trainer.step(&graph, &pairs, lr).expect("GPU step")
    });
    line(
        "seggpu-gpu-checkpoints",
        &format!(
            "{} ({}, {})",
            adapter.name, adapter.backend, adapter.device_type
        ),
        checkpointed,
    );
    println!(
        "checkpointed/plain GPU seconds per step: {:.3}",
        checkpointed.0 / gpu.0
    );
}
