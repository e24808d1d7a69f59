//! Device limits: dispatches above 65,535 workgroups become 2-D grids, arrays
//! larger than one storage binding are processed in chunks (forced with a
//! small test-only binding limit), and `auto` redoes on the CPU what the GPU
//! cannot do.

use crate::common::{all_close, Fixture, Tolerance, XorShift, FIXTURES};
use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::gpu::test_support::backend_or_skip;
use seggpu::backend::gpu::{AutoBackend, GpuError, GpuOptions};
use seggpu::backend::Backend;
use seggpu::graph::{Csr, ReceptiveField};
use seggpu::kernels::{embed, gatv2, linear, score};

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    XorShift::new(seed).units(n)
}

fn indices(n: usize, below: u32, seed: u64) -> Vec<u32> {
    values(n, seed)
        .iter()
        .map(|v| (((v + 1.0) * 0.5 * below as f32) as u32).min(below - 1))
        .collect()
}

/// Embedding over more than 65,535 × 64 elements, at the adapter's real
/// limits (the other kernels' 2-D grids are forced by a small limit below).
#[test]
fn gpu_dispatch_splits_above_65535_workgroups() {
    let Some(mut gpu) = backend_or_skip(
        "gpu_dispatch_splits_above_65535_workgroups",
        GpuOptions::default(),
    ) else {
        return;
    };
    let max = gpu.max_workgroups_per_dim() as usize;
    let (vocab, dim) = (300, 16);
    let n = 300_000;
    assert!(
        n * dim > max * 64,
        "the test must exceed one dimension of workgroups"
    );
    let table = values(vocab * dim, 1);
    let tokens = indices(n, vocab as u32, 2);
    let got = gpu.embed_relu(&table, dim, &tokens).unwrap();
    let stats = gpu.stats();
    println!("embed of {n}×{dim}: {stats:?}");
    assert!(stats.last_2d_grids > 0, "expected a 2-D grid");
    let mut twin = vec![0.0; n * dim];
    embed::embed_relu(&table, dim, &tokens, &mut twin);
    all_close("split embed", &got, &twin, Tolerance::EXACT);

    // Scoring of more than 65,535 × 64 transcripts (k = 1, width 2).
    let (n_tx, n_bd, width) = (4_300_000, 1000, 2);
    assert!(n_tx > max * 64);
    let z_tx = values(n_tx * width, 5);
    let z_bd = values(n_bd * width, 6);
    let rf = ReceptiveField {
        k: 1,
        index: indices(n_tx, n_bd as u32, 7)
            .into_iter()
            .map(|i| i as i32)
            .collect(),
    };
    let (got_score, got_index) = gpu.best(&z_tx, &z_bd, width, &rf).unwrap();
    let stats = gpu.stats();
    println!("score of {n_tx} transcripts: {stats:?}");
    assert!(stats.last_2d_grids > 0, "expected a 2-D grid");
    let (twin_score, twin_index) = score::best(&z_tx, &z_bd, width, &rf);
    all_close("split score", &got_score, &twin_score, Tolerance::F32);
    assert_eq!(got_index, twin_index);
}

/// Every kernel with a 16 KiB binding limit, so that the streamed arrays are
/// chunked and the gathered ones (embedding table, messages, nucleus
/// embeddings, gathered rows) are compacted per chunk; and at most 3
/// workgroups per dimension, so every dispatch is a 2-D grid.
#[test]
fn gpu_kernels_chunked_with_a_small_binding_limit() {
    let options = GpuOptions {
        max_binding_bytes_override: Some(16 << 10),
        max_workgroups_per_dim_override: Some(3),
        ..GpuOptions::default()
    };
    let Some(mut gpu) = backend_or_skip("gpu_kernels_chunked_with_a_small_binding_limit", options)
    else {
        return;
    };
    // Embedding table of 2000 × 8 f32 = 64 KiB, read through 5000 tokens.
    let (vocab, dim, n) = (2000, 8, 5000);
    let table = values(vocab * dim, 11);
    let tokens = indices(n, vocab as u32, 12);
    let got = gpu.embed_relu(&table, dim, &tokens).unwrap();
    println!("chunked embed: {:?}", gpu.stats());
    assert!(gpu.stats().last_gathers > 0);
    let mut twin = vec![0.0; n * dim];
    embed::embed_relu(&table, dim, &tokens, &mut twin);
    all_close("chunked embed", &got, &twin, Tolerance::EXACT);

    // Linear over rows gathered from a 3000 × 16 input (192 KiB).
    let (in_dim, out_dim) = (16, 24);
    let x = values(3000 * in_dim, 13);
    let rows = indices(4000, 3000, 14);
    let wt = values(in_dim * out_dim, 15);
    let bias = values(out_dim, 16);
    let layer = linear::Linear {
        in_dim,
        out_dim,
        wt: &wt,
        bias: Some(&bias),
        relu: false,
    };
    let got = gpu.linear(&x, Some(&rows), &layer).unwrap();
    println!("chunked gathered linear: {:?}", gpu.stats());
    assert!(gpu.stats().last_gathers > 0);
    let mut expected = vec![0.0; rows.len() * out_dim];
    linear::linear(&x, Some(&rows), &layer, &mut expected);
    all_close("chunked gathered linear", &got, &expected, Tolerance::F32);
    let got = gpu.linear(&x, None, &layer).unwrap();
    let mut expected = vec![0.0; 3000 * out_dim];
    linear::linear(&x, None, &layer, &mut expected);
    all_close("chunked linear", &got, &expected, Tolerance::F32);

    // GATv2 over 2500 destinations with 0–9 incoming edges from 3000 sources.
    let (heads, channels) = (2, 12);
    let hc = heads * channels;
    let (n_src, n_dst) = (3000, 2500);
    let degrees = indices(n_dst, 10, 17);
    let sources_all = indices(degrees.iter().sum::<u32>() as usize, n_src as u32, 18);
    let mut edges = Vec::new();
    let mut next = 0;
    for (d, &deg) in degrees.iter().enumerate() {
        for _ in 0..deg {
            edges.push((sources_all[next], d as u32));
            next += 1;
        }
    }
    let csr = Csr::from_edges(n_dst, edges.iter().copied());
    let xl = values(n_src * hc, 19);
    let xr = values(n_dst * hc, 20);
    let att = values(hc, 21);
    let gbias = values(hc, 22);
    let gat = gatv2::Gat {
        heads,
        channels,
        att: &att,
        bias: &gbias,
        relu: true,
    };
    let got = gpu.gatv2(&gat, &xl, &xr, &csr).unwrap();
    println!("chunked gatv2: {:?}", gpu.stats());
    assert!(gpu.stats().last_gathers > 0);
    let mut expected = vec![0.0; n_dst * hc];
    gatv2::gatv2(&gat, &xl, &xr, &csr, &mut expected);
    all_close("chunked gatv2", &got, &expected, Tolerance::F32);

    // Scoring 4000 transcripts against 600 nuclei of width 32 (75 KiB).
    let (n_tx, n_bd, width, k) = (4000, 600, 32, 5);
    let z_tx = values(n_tx * width, 23);
    let z_bd = values(n_bd * width, 24);
    let mut index: Vec<i32> = indices(n_tx * k, n_bd as u32, 25)
        .into_iter()
        .map(|i| i as i32)
        .collect();
    for (i, v) in index.iter_mut().enumerate() {
        if i % 7 == 3 {
            *v = -1;
        }
    }
    let rf = ReceptiveField { k, index };
    let (got_score, got_index) = gpu.best(&z_tx, &z_bd, width, &rf).unwrap();
    println!("chunked score: {:?}", gpu.stats());
    assert!(gpu.stats().last_gathers > 0);
    let (twin_score, twin_index) = score::best(&z_tx, &z_bd, width, &rf);
    all_close("chunked score", &got_score, &twin_score, Tolerance::F32);
    assert_eq!(got_index, twin_index);
}

/// The fixtures' forward pass and scoring with a 48 KiB binding limit (the
/// 96-wide activations of `dev` are 82 KiB) and 3 workgroups per dimension.
#[test]
fn gpu_fixtures_chunked_match_pyg() {
    let options = GpuOptions {
        max_binding_bytes_override: Some(48 << 10),
        max_workgroups_per_dim_override: Some(3),
        ..GpuOptions::default()
    };
    let Some(mut gpu) = backend_or_skip("gpu_fixtures_chunked_match_pyg", options) else {
        return;
    };
    for name in FIXTURES {
        let fx = Fixture::load(name);
        let out = gpu.forward(&fx.model, &fx.graph, false).unwrap();
        println!("{name} chunked forward: {:?}", gpu.stats());
        fx.check_embeddings(&format!("{name} chunked"), &out, fx.tolerance());
        let rf = fx.graph.receptive_field.as_ref().unwrap();
        let best = gpu.score(&out, rf).unwrap();
        let expected: Vec<i32> = fx
            .i64("expected.best_index")
            .iter()
            .map(|&i| i as i32)
            .collect();
        assert_eq!(best.index, expected, "{name}: best indices");
    }
}

/// A synthetic 20k-transcript tile: chunked and compacted under a 1 MiB
/// binding limit, the GPU gives bit for bit what it gives unchunked.
#[test]
fn gpu_chunked_forward_equals_unchunked() {
    let Some(mut whole) = backend_or_skip(
        "gpu_chunked_forward_equals_unchunked",
        GpuOptions::default(),
    ) else {
        return;
    };
    let Some(mut chunked) = backend_or_skip(
        "gpu_chunked_forward_equals_unchunked (1 MiB bindings)",
        GpuOptions {
            max_binding_bytes_override: Some(1 << 20),
            ..GpuOptions::default()
        },
    ) else {
        return;
    };
    let (model, graph) = seggpu::synthetic::tile(20_000, 5);
    let a = whole.forward(&model, &graph, false).unwrap();
    let b = chunked.forward(&model, &graph, false).unwrap();
    let stats = chunked.stats();
    println!("unchunked: {:?}\nchunked: {stats:?}", whole.stats());
    assert!(
        stats.last_gathers > 0,
        "1 MiB bindings must force compaction"
    );
    assert!(stats.last_dispatches > whole.stats().last_dispatches);
    assert_eq!(a.z_tx, b.z_tx, "chunked z_tx differs");
    assert_eq!(a.z_bd, b.z_bd, "chunked z_bd differs");
    let rf = graph.receptive_field.as_ref().unwrap();
    let sa = whole.score(&a, rf).unwrap();
    let sb = chunked.score(&b, rf).unwrap();
    assert_eq!(sa, sb);
    let mut cpu = CpuBackend::new();
    let c = cpu.forward(&model, &graph, false).unwrap();
    all_close("synthetic z_tx vs cpu", &a.z_tx, &c.z_tx, Tolerance::F32);
    all_close("synthetic z_bd vs cpu", &a.z_bd, &c.z_bd, Tolerance::F32);
    let sc = cpu.score(&c, rf).unwrap();
    let differ = (0..sc.index.len())
        .filter(|&i| sc.index[i] != sa.index[i])
        .count();
    println!(
        "synthetic: {} transcripts, {differ} best indices differ from the CPU",
        sc.index.len()
    );
    assert_eq!(differ, 0);
}

/// `auto` redoes on the CPU a tile the GPU rejects (here: a binding limit
/// too small for any weight block) and gives the CPU's result.
#[test]
fn auto_backend_redoes_failed_tiles_on_the_cpu() {
    let fx = Fixture::load("dev");
    let mut cpu = CpuBackend::new();
    let expected = cpu.forward(&fx.model, &fx.graph, false).unwrap();

    let mut no_gpu = AutoBackend::with(None);
    assert!(no_gpu.describe().starts_with("cpu"));
    assert!(!no_gpu.runs_on_gpu(), "overlap's auto setting reads this");
    assert_eq!(
        no_gpu.forward(&fx.model, &fx.graph, false).unwrap().z_tx,
        expected.z_tx
    );

    let options = GpuOptions {
        max_binding_bytes_override: Some(256),
        ..GpuOptions::default()
    };
    let Some(gpu) = backend_or_skip("auto_backend_redoes_failed_tiles_on_the_cpu", options) else {
        return;
    };
    let mut auto = AutoBackend::with(Some(gpu));
    assert!(auto.describe().starts_with("gpu"), "{}", auto.describe());
    assert!(auto.runs_on_gpu());
    let got = auto.forward(&fx.model, &fx.graph, false).unwrap();
    assert_eq!(got.z_tx, expected.z_tx);
    assert_eq!(got.z_bd, expected.z_bd);
    assert_eq!(
        auto.score_tile(&fx.model, &fx.graph).unwrap(),
        cpu.score_tile(&fx.model, &fx.graph).unwrap()
    );
    assert!(auto.gpu().is_some(), "a rejected tile keeps the GPU");
    // Not a GPU failure: returned as it is, not redone.
    let mut graph = fx.graph.clone();
    graph.receptive_field = None;
    let err = auto.score_tile(&fx.model, &graph).unwrap_err();
    assert!(err.downcast_ref::<GpuError>().is_none(), "{err}");
    assert!(err.to_string().contains("receptive field"), "{err}");
}

/// A lost device is reported with the stage and tile sizes; `auto` then
/// drops the GPU and finishes on the CPU.
#[test]
fn device_loss_is_reported_and_auto_continues_on_the_cpu() {
    let fx = Fixture::load("small");
    let expected = CpuBackend::new()
        .forward(&fx.model, &fx.graph, false)
        .unwrap();
    let Some(mut gpu) = backend_or_skip(
        "device_loss_is_reported_and_auto_continues_on_the_cpu",
        GpuOptions::default(),
    ) else {
        return;
    };
    gpu.forward(&fx.model, &fx.graph, false).unwrap();
    gpu.lose_device_for_tests();
    let err = gpu.forward(&fx.model, &fx.graph, false).unwrap_err();
    println!("{err}");
    assert!(
        err.downcast_ref::<GpuError>()
            .is_some_and(GpuError::is_device_lost),
        "{err}"
    );
    assert!(err.to_string().contains("212 transcripts"), "{err}");

    let gpu = backend_or_skip("device loss under auto", GpuOptions::default()).unwrap();
    gpu.lose_device_for_tests();
    let mut auto = AutoBackend::with(Some(gpu));
    let got = auto.forward(&fx.model, &fx.graph, false).unwrap();
    assert_eq!(got.z_tx, expected.z_tx);
    assert!(auto.gpu().is_none(), "a lost device is dropped");
    assert!(auto.describe().starts_with("cpu"));
    assert!(
        !auto.runs_on_gpu(),
        "after a device loss the tiles run on the CPU"
    );
}
