//! The fragment stage's kernels on a real wgpu adapter against their CPU
//! twins: edge similarity with its histogram (`shaders/edge_similarity.wgsl`) and
//! connected components (`shaders/components.wgsl`), on random, geometric,
//! path-shaped, mostly-singleton and empty graphs, and under a small binding
//! limit.
//!
//! Without an adapter these tests print `SKIPPED: no GPU adapter` and pass,
//! except with `CI=true`, where they fail.

use std::time::Instant;

use crate::common::{all_close, Tolerance, XorShift};
use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::gpu::test_support::backend_or_skip;
use seggpu::backend::gpu::{AutoBackend, GpuBackend, GpuError, GpuOptions};
use seggpu::backend::{Backend, FragmentSlots};
use seggpu::kernels::components as components_twin;
use seggpu::kernels::edge_similarity::{self as twin, HISTOGRAM_BINS};
use seggpu::pipeline::fragments::normalised_embeddings;

fn random_edges(n: usize, m: usize, seed: u64) -> Vec<[u32; 2]> {
    let mut rng = XorShift::new(seed);
    (0..m)
        .map(|_| [rng.below(n) as u32, rng.below(n) as u32])
        .collect()
}

/// A kNN-like graph: `side²` points on a jittered grid, numbered in random
/// order, each linked to `k` random nodes among its 24 nearest grid cells,
/// of which a fraction `keep` survives (as the similarity threshold keeps
/// some neighbour edges): long, branching components of every size.
fn geometric_edges(side: usize, k: usize, keep: f64, seed: u64) -> Vec<[u32; 2]> {
    let mut rng = XorShift::new(seed);
    let id = rng.permutation(side * side);
    let mut edges = Vec::new();
    for y in 0..side {
        for x in 0..side {
            for _ in 0..k {
                let (dx, dy) = (rng.below(5) as isize - 2, rng.below(5) as isize - 2);
                let (nx, ny) = (x as isize + dx, y as isize + dy);
                if (dx, dy) == (0, 0)
                    || nx < 0
                    || ny < 0
                    || nx >= side as isize
                    || ny >= side as isize
                    || rng.below(1000) as f64 >= keep * 1000.0
                {
                    continue;
                }
                edges.push([id[y * side + x], id[ny as usize * side + nx as usize]]);
            }
        }
    }
    edges
}

/// A path through `n` nodes numbered at random along it.
fn shuffled_path(n: usize, seed: u64) -> Vec<[u32; 2]> {
    let id = XorShift::new(seed).permutation(n);
    (0..n - 1).map(|i| [id[i], id[i + 1]]).collect()
}

/// Labels are canonical: each node's label is a node labelled by itself and
/// no larger than the node.
fn assert_canonical(labels: &[u32]) {
    for (i, &l) in labels.iter().enumerate() {
        assert!(
            l as usize <= i && labels[l as usize] == l,
            "node {i}: label {l}"
        );
    }
}

/// GPU labels equal the CPU twin's; returns the number of components.
fn check_components(gpu: &mut GpuBackend, what: &str, n: usize, edges: &[[u32; 2]]) -> usize {
    let start = Instant::now();
    let got = gpu.components(n, edges).unwrap();
    let gpu_s = start.elapsed().as_secs_f64();
    let stats = gpu.stats();
    let start = Instant::now();
    let expected = components_twin::components(n, edges);
    let cpu_s = start.elapsed().as_secs_f64();
    let components = expected
        .iter()
        .enumerate()
        .filter(|&(i, &l)| l as usize == i)
        .count();
    println!(
        "{what}: {n} nodes, {} edges, {components} components; gpu {gpu_s:.3} s ({} productive iterations, {} submissions), cpu twin {cpu_s:.3} s",
        edges.len(),
        stats.last_component_iterations,
        stats.last_component_submissions,
    );
    assert_canonical(&expected);
    let differ = (0..n).filter(|&i| got[i] != expected[i]).count();
    assert_eq!(
        differ, 0,
        "{what}: {differ} labels differ from the CPU twin"
    );
    components
}

#[test]
fn gpu_components_equal_the_cpu_on_random_and_geometric_graphs() {
    let Some(mut gpu) = backend_or_skip(
        "gpu_components_equal_the_cpu_on_random_and_geometric_graphs",
        GpuOptions::default(),
    ) else {
        return;
    };
    let n = 1_000_000;
    let edges = random_edges(n, 1_500_000, 1);
    let components = check_components(&mut gpu, "random graph", n, &edges);
    assert!(components > 1000 && components < n / 2);

    let side = 1000;
    let edges = geometric_edges(side, 5, 0.45, 2);
    let components = check_components(&mut gpu, "geometric graph", side * side, &edges);
    assert!(components > 1000 && components < side * side / 2);
}

#[test]
fn gpu_components_of_a_long_path_converge_in_log_passes() {
    let Some(mut gpu) = backend_or_skip(
        "gpu_components_of_a_long_path_converge_in_log_passes",
        GpuOptions::default(),
    ) else {
        return;
    };
    let n = 100_000;
    // Numbered along the path, edges in reverse order: each hook moves a
    // label by one node, pointer jumping does the rest.
    let path: Vec<[u32; 2]> = (0..n as u32 - 1).rev().map(|i| [i + 1, i]).collect();
    assert_eq!(check_components(&mut gpu, "path", n, &path), 1);
    let iterations = gpu.stats().last_component_iterations;
    assert!(
        iterations <= 2 * n.ilog2(),
        "{iterations} iterations for a path of {n}"
    );
    assert_eq!(
        check_components(&mut gpu, "shuffled path", n, &shuffled_path(n, 3)),
        1
    );
}

#[test]
fn gpu_components_of_singletons_and_of_no_edges() {
    let Some(mut gpu) = backend_or_skip(
        "gpu_components_of_singletons_and_of_no_edges",
        GpuOptions::default(),
    ) else {
        return;
    };
    let n = 500_000;
    let edges = random_edges(n, 2000, 4);
    let components = check_components(&mut gpu, "mostly singletons", n, &edges);
    assert!(components >= n - 2000);
    // Self loops and repeated edges change nothing.
    let mut repeated = vec![[7, 7], [9, 8], [8, 9], [9, 8]];
    repeated.extend(random_edges(50, 20, 5));
    check_components(&mut gpu, "self loops and repeats", 50, &repeated);

    assert_eq!(
        gpu.components(1000, &[]).unwrap(),
        (0..1000).collect::<Vec<u32>>()
    );
    assert!(gpu.components(0, &[]).unwrap().is_empty());
    let err = gpu.components(10, &[[3, 10]]).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

/// Unit embedding rows of `vocab` genes, some repeated (similarity 1
/// between different genes) and one zero row (similarity 0).
fn unit_table(vocab: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = XorShift::new(seed);
    let mut table: Vec<f32> = (0..vocab * dim).map(|_| rng.unit()).collect();
    table.copy_within(0..dim, dim);
    table[2 * dim..3 * dim].fill(0.0);
    normalised_embeddings(&table, dim)
}

/// `[n, k]` random neighbour lists, about a tenth of the slots empty.
fn neighbour_lists(n: usize, k: usize, seed: u64) -> Vec<i32> {
    let mut rng = XorShift::new(seed);
    (0..n * k)
        .map(|_| {
            if rng.below(10) == 0 {
                -1
            } else {
                rng.below(n) as i32
            }
        })
        .collect()
}

/// GPU similarity within 1e-6 of the twin; the GPU histogram exactly the
/// twin's histogram of the GPU similarities. Prints how many similarities
/// and bins differ from the all-CPU result: an adapter that fuses the dot
/// product's multiply-adds rounds some similarities differently, and those
/// a rounding apart that straddle a bin edge move to the next bin.
fn check_similarity(
    backend: &mut dyn Backend,
    what: &str,
    neighbors: &[i32],
    k: usize,
    tokens: &[u32],
    unit: &[f32],
    dim: usize,
) {
    let got = backend
        .fragment_similarity(FragmentSlots {
            neighbors,
            k,
            tokens,
            unit,
            dim,
        })
        .unwrap();
    let expected = twin::edge_similarity(neighbors, k, tokens, unit, dim);
    all_close(what, &got.similarity, &expected, Tolerance::abs(1e-6));
    let unequal = (0..expected.len())
        .filter(|&e| got.similarity[e] != expected[e])
        .count();
    assert_eq!(
        got.histogram,
        twin::similarity_histogram(neighbors, &got.similarity),
        "{what}: the histogram is not that of the similarities"
    );
    assert_eq!(
        got.histogram.iter().map(|&c| c as usize).sum::<usize>(),
        neighbors.iter().filter(|&&j| j >= 0).count()
    );
    let cpu_histogram = twin::similarity_histogram(neighbors, &expected);
    let bins = (0..HISTOGRAM_BINS)
        .filter(|&b| got.histogram[b] != cpu_histogram[b])
        .count();
    println!(
        "{what}: {} slots, {unequal} similarities differ from the CPU, {bins} histogram bins differ",
        expected.len()
    );
}

#[test]
fn gpu_similarity_and_histogram_equal_the_twins() {
    let Some(mut gpu) = backend_or_skip(
        "gpu_similarity_and_histogram_equal_the_twins",
        GpuOptions::default(),
    ) else {
        return;
    };
    let (n, k, vocab, dim) = (300_000, 5, 500, 16);
    let unit = unit_table(vocab, dim, 6);
    let mut rng = XorShift::new(7);
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    let neighbors = neighbour_lists(n, k, 8);
    check_similarity(&mut gpu, "similarity", &neighbors, k, &tokens, &unit, dim);

    let empty = gpu
        .fragment_similarity(FragmentSlots {
            neighbors: &[],
            k: 5,
            tokens: &[],
            unit: &unit,
            dim,
        })
        .unwrap();
    assert!(empty.similarity.is_empty());
    assert_eq!(empty.histogram, vec![0; HISTOGRAM_BINS]);
}

/// Both kernels with a 16 KiB binding limit and 3 workgroups per
/// dimension: the neighbour lists, similarities and edges are processed in
/// windows, the tokens through compact copies, the histogram a window of
/// bins at a time, and every grid is 2-D; components run 2 iterations per
/// submission, so they continue over several. Labels that do not fit one
/// binding are refused, and `auto` computes them on the CPU.
#[test]
fn gpu_fragment_kernels_chunked_with_a_small_binding_limit() {
    let options = GpuOptions {
        max_binding_bytes_override: Some(16 << 10),
        max_workgroups_per_dim_override: Some(3),
        component_iterations_override: Some(2),
        ..GpuOptions::default()
    };
    let Some(mut gpu) = backend_or_skip(
        "gpu_fragment_kernels_chunked_with_a_small_binding_limit",
        options.clone(),
    ) else {
        return;
    };
    // 6000 transcripts: tokens 23 KiB, neighbour lists 117 KiB.
    let (n, k, vocab, dim) = (6000, 5, 40, 8);
    let unit = unit_table(vocab, dim, 9);
    let mut rng = XorShift::new(10);
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    let neighbors = neighbour_lists(n, k, 11);
    check_similarity(
        &mut gpu,
        "chunked similarity",
        &neighbors,
        k,
        &tokens,
        &unit,
        dim,
    );
    let stats = gpu.stats();
    println!("chunked similarity: {stats:?}");
    assert!(
        stats.last_dispatches >= 16,
        "histogram windows × row chunks"
    );
    assert!(stats.last_2d_grids > 0);

    // 4000 nodes (labels of 16,000 bytes) and about 14,000 edges (110 KiB).
    let n = 4000;
    let mut edges = random_edges(n, 5000, 12);
    edges.extend(geometric_edges(60, 5, 0.5, 13));
    check_components(&mut gpu, "chunked components", n, &edges);
    let stats = gpu.stats();
    println!("chunked components: {stats:?}");
    assert!(
        stats.last_dispatches > 2 * 2,
        "several edge windows per iteration"
    );
    assert!(stats.last_2d_grids > 0);
    check_components(&mut gpu, "chunked shuffled path", n, &shuffled_path(n, 15));
    assert!(gpu.stats().last_component_submissions > 1);

    let n = 5000;
    let edges = random_edges(n, 3000, 14);
    let err = gpu.components(n, &edges).unwrap_err();
    println!("{err}");
    assert!(
        matches!(
            err.downcast_ref::<GpuError>(),
            Some(GpuError::TooLarge { .. })
        ),
        "{err}"
    );
    let mut auto = AutoBackend::with(Some(gpu));
    assert_eq!(
        auto.components(n, &edges).unwrap(),
        CpuBackend::new().components(n, &edges).unwrap()
    );
    assert!(auto.gpu().is_some(), "a refused call keeps the GPU");
}
