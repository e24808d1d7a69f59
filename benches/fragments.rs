//! The fragment stage's pieces, GPU versus CPU: edge similarity +
//! histogram, and connected components of the kept edges, on kNN-like
//! graphs (default 1M and 10M transcripts, k = 5).
//!
//! ```text
//! cargo bench --bench fragments
//! SEGGPU_BENCH_NODES=2000000 SEGGPU_BENCH_REPEATS=5 cargo bench --bench fragments
//! cargo bench --bench fragments -- --adapter NAME
//! ```
//!
//! The graph: transcripts on a jittered square grid, numbered row by row,
//! each with 5 distinct neighbours among its 24 nearest grid cells; genes
//! drawn from 500 random 16-wide embeddings. The threshold is the median
//! similarity (fragment cut −1), which keeps about half the edges: long,
//! branching components, the hard case for label propagation.
//!
//! Prints one JSON line per size and backend with the median seconds of
//! `repeats` runs after a warm-up. Without a GPU adapter only the CPU lines
//! are printed.

use std::time::Instant;

use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::gpu::{GpuBackend, GpuOptions};
use seggpu::backend::{Backend, EdgeSimilarity, FragmentSlots};
use seggpu::kernels::edge_similarity::kept_edges;
use seggpu::pipeline::fragments::{histogram_median, normalised_embeddings};

const K: usize = 5;
const VOCAB: usize = 500;
const DIM: usize = 16;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, below: usize) -> usize {
        ((self.next() >> 11) % below as u64) as usize
    }
}

/// `[n, K]` neighbour lists of about `n` grid points, their tokens and the
/// unit embeddings.
fn graph(n: usize, seed: u64) -> (Vec<i32>, Vec<u32>, Vec<f32>) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let side = (n as f64).sqrt().ceil() as usize;
    let n = side * side;
    let mut neighbors = vec![-1i32; n * K];
    for y in 0..side {
        for x in 0..side {
            let row = &mut neighbors[(y * side + x) * K..][..K];
            let mut filled = 0;
            while filled < K {
                let (dx, dy) = (rng.below(5) as isize - 2, rng.below(5) as isize - 2);
                let (nx, ny) = (x as isize + dx, y as isize + dy);
                if (dx, dy) == (0, 0)
                    || nx < 0
                    || ny < 0
                    || nx >= side as isize
                    || ny >= side as isize
                {
                    continue;
                }
                let j = (ny as usize * side + nx as usize) as i32;
                if !row[..filled].contains(&j) {
                    row[filled] = j;
                    filled += 1;
                }
            }
        }
    }
    let tokens = (0..n).map(|_| rng.below(VOCAB) as u32).collect();
    let table: Vec<f32> = (0..VOCAB * DIM)
        .map(|_| (rng.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect();
    (neighbors, tokens, normalised_embeddings(&table, DIM))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of similarity + histogram and of components, and the
/// results of the last run.
fn time(
    backend: &mut dyn Backend,
    (neighbors, tokens, unit): &(Vec<i32>, Vec<u32>, Vec<f32>),
    repeats: usize,
) -> (f64, f64, EdgeSimilarity, Vec<[u32; 2]>, Vec<u32>) {
    let n = tokens.len();
    let every_node: Vec<u32> = (0..n as u32).collect();
    let (mut sim_s, mut cc_s) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..repeats + 1 {
        let start = Instant::now();
        let sim = backend
            .fragment_similarity(FragmentSlots {
                neighbors,
                k: K,
                tokens,
                unit,
                dim: DIM,
            })
            .expect("similarity");
        sim_s.push(start.elapsed().as_secs_f64());
        let threshold = histogram_median(&sim.histogram).expect("edges");
        let (edges, _) = kept_edges(neighbors, K, &sim.similarity, threshold, &every_node);
        let start = Instant::now();
        let labels = backend.components(n, &edges).expect("components");
        cc_s.push(start.elapsed().as_secs_f64());
        last = Some((sim, edges, labels));
    }
    sim_s.remove(0);
    cc_s.remove(0);
    let (sim, edges, labels) = last.expect("at least one run");
    (median(sim_s), median(cc_s), sim, edges, labels)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let adapter = args
        .iter()
        .position(|a| a == "--adapter")
        .and_then(|i| args.get(i + 1).cloned());
    let sizes: Vec<usize> = std::env::var("SEGGPU_BENCH_NODES")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let repeats: usize = env_or("SEGGPU_BENCH_REPEATS", 3).max(1);
    let mut gpu = match GpuBackend::new(GpuOptions {
        adapter,
        ..GpuOptions::from_env()
    }) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            println!("no GPU benchmark: {e}");
            None
        }
    };
    let mut cpu = CpuBackend::new();
    for n in sizes {
        let input = graph(n, 1);
        let n = input.1.len();
        let line = |name: &str,
                    describe: &str,
                    r: &(f64, f64, EdgeSimilarity, Vec<[u32; 2]>, Vec<u32>)| {
            let components =
                r.4.iter()
                    .enumerate()
                    .filter(|&(i, &l)| l as usize == i)
                    .count();
            println!(
                "{{\"impl\":\"{name}\",\"backend\":\"{describe}\",\"nodes\":{n},\"slots\":{},\"kept_edges\":{},\"components\":{components},\"similarity_histogram_s\":{:.4},\"components_s\":{:.4}}}",
                n * K,
                r.3.len(),
                r.0,
                r.1
            );
        };
        let on_cpu = time(&mut cpu, &input, repeats);
        line("seggpu-cpu", &cpu.describe(), &on_cpu);
        if let Some(gpu) = &mut gpu {
            let on_gpu = time(gpu, &input, repeats);
            line("seggpu-gpu", &gpu.describe(), &on_gpu);
            let stats = gpu.stats();
            let same_sim = on_gpu
                .2
                .similarity
                .iter()
                .zip(&on_cpu.2.similarity)
                .filter(|(a, b)| a == b)
                .count();
            println!(
                "{n} nodes: gpu/cpu speed ratio similarity+histogram {:.2}, components {:.2}; {} iterations in {} submissions; similarities identical for {same_sim} of {} slots; histograms {}; labels {}",
                on_cpu.0 / on_gpu.0,
                on_cpu.1 / on_gpu.1,
                stats.last_component_iterations,
                stats.last_component_submissions,
                n * K,
                if on_gpu.2.histogram == on_cpu.2.histogram { "identical" } else { "differ" },
                if on_gpu.4 == on_cpu.4 { "identical" } else if on_gpu.3 == on_cpu.3 { "DIFFER" } else { "differ (kept edges differ)" },
            );
        }
    }
}
