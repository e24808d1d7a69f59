//! The WGSL kernels on a real wgpu adapter against their CPU twins, and the
//! full GPU forward pass against PyTorch Geometric, on every golden fixture.
//!
//! Without an adapter these tests print `SKIPPED: no GPU adapter` and pass,
//! except with `CI=true`, where they fail. `SEGGPU_LIMITS=default` runs them
//! under wgpu's default limits.

use crate::common::{all_close, Fixture, Tolerance, FIXTURES};
use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::gpu::test_support::backend_or_skip;
use seggpu::backend::gpu::{GpuBackend, GpuOptions, LimitsMode};
use seggpu::backend::Backend;
use seggpu::graph::{Csr, ReceptiveField};
use seggpu::kernels::{embed, gatv2, linear, score};
use seggpu::model::BD_FEATURES;

fn twin_linear(x: &[f32], rows: Option<&[u32]>, layer: &linear::Linear) -> Vec<f32> {
    let n = rows.map_or(x.len() / layer.in_dim, <[u32]>::len);
    let mut out = vec![0.0; n * layer.out_dim];
    linear::linear(x, rows, layer, &mut out);
    out
}

/// Runs every kernel of every layer on the GPU with the CPU's inputs and
/// compares it with its CPU twin.
fn kernels_match_twins(gpu: &mut GpuBackend) {
    for name in FIXTURES {
        let fx = Fixture::load(name);
        let tol = fx.tolerance();
        let model = &fx.model;
        let graph = &fx.graph;
        let emb = model.arch.emb;
        let cpu = CpuBackend::new().forward(model, graph, true).unwrap();

        let got = gpu
            .embed_relu(&model.tx_embedding, emb, &graph.tx_token)
            .unwrap();
        let mut twin = vec![0.0; graph.n_tx() * emb];
        embed::embed_relu(&model.tx_embedding, emb, &graph.tx_token, &mut twin);
        all_close(&format!("{name} kernel embed"), &got, &twin, tol);

        let bd_x: Vec<f32> = graph
            .bd_x
            .iter()
            .map(|&v| if v.is_nan() { 0.0 } else { v })
            .collect();
        let lin0 = linear::Linear {
            in_dim: BD_FEATURES,
            out_dim: emb,
            wt: &model.lin0_bd_wt,
            bias: None,
            relu: true,
        };
        let got = gpu.linear(&bd_x, None, &lin0).unwrap();
        all_close(
            &format!("{name} kernel linear lin0"),
            &got,
            &twin_linear(&bd_x, None, &lin0),
            tol,
        );

        let (rows, belongs) = graph.belongs.compact_sources();
        for (l, layer) in model.layers.iter().enumerate() {
            let h = &cpu.layers[l];
            for (conv, src, src_rows, dst, csr, tag) in [
                (
                    &layer.neighbors,
                    &h.tx,
                    None,
                    &h.tx,
                    &graph.neighbors,
                    "neighbors",
                ),
                (
                    &layer.belongs,
                    &h.tx,
                    Some(rows.as_slice()),
                    &h.bd,
                    &belongs,
                    "belongs",
                ),
            ] {
                let hc = conv.out_dim();
                let lin_l = linear::Linear {
                    in_dim: conv.in_dim,
                    out_dim: hc,
                    wt: &conv.lin_l_wt,
                    bias: Some(&conv.lin_l_b),
                    relu: false,
                };
                let lin_r = linear::Linear {
                    wt: &conv.lin_r_wt,
                    bias: Some(&conv.lin_r_b),
                    ..lin_l
                };
                let xl = twin_linear(src, src_rows, &lin_l);
                let got = gpu.linear(src, src_rows, &lin_l).unwrap();
                all_close(
                    &format!("{name} kernel linear {}.{tag}.lin_l", layer.name),
                    &got,
                    &xl,
                    tol,
                );
                let xr = twin_linear(dst, None, &lin_r);
                let got = gpu.linear(dst, None, &lin_r).unwrap();
                all_close(
                    &format!("{name} kernel linear {}.{tag}.lin_r", layer.name),
                    &got,
                    &xr,
                    tol,
                );
                let gat = gatv2::Gat {
                    heads: conv.heads,
                    channels: conv.channels,
                    att: &conv.att,
                    bias: &conv.bias,
                    relu: layer.relu,
                };
                let mut twin = vec![0.0; csr.n_dst() * hc];
                gatv2::gatv2(&gat, &xl, &xr, csr, &mut twin);
                let got = gpu.gatv2(&gat, &xl, &xr, csr).unwrap();
                all_close(
                    &format!("{name} kernel gatv2 {}.{tag}", layer.name),
                    &got,
                    &twin,
                    tol,
                );
            }
        }

        let rf = graph.receptive_field.as_ref().unwrap();
        let (twin_score, twin_index) = score::best(&cpu.z_tx, &cpu.z_bd, cpu.dim, rf);
        let (got_score, got_index) = gpu.best(&cpu.z_tx, &cpu.z_bd, cpu.dim, rf).unwrap();
        all_close(
            &format!("{name} kernel score"),
            &got_score,
            &twin_score,
            tol,
        );
        assert_eq!(got_index, twin_index, "{name}: best indices differ");
    }
}

/// The GPU forward pass against PyG (every layer), and GPU scoring against
/// PyG and the CPU backend (identical best indices).
fn forward_matches_pyg(gpu: &mut GpuBackend) {
    for name in FIXTURES {
        let fx = Fixture::load(name);
        let tol = fx.tolerance();
        let out = gpu.forward(&fx.model, &fx.graph, true).unwrap();
        assert_eq!(out.layers.len(), fx.model.arch.layers() + 1);
        fx.check_embeddings(&format!("{name} gpu"), &out, tol);
        // Without intermediate layers: the same z.
        let plain = gpu.forward(&fx.model, &fx.graph, false).unwrap();
        assert!(plain.layers.is_empty());
        assert_eq!(plain.z_tx, out.z_tx);
        assert_eq!(plain.z_bd, out.z_bd);

        let rf = fx.graph.receptive_field.as_ref().unwrap();
        let best = gpu.score(&out, rf).unwrap();
        let mut cpu = CpuBackend::new();
        let cpu_out = cpu.forward(&fx.model, &fx.graph, false).unwrap();
        let cpu_best = cpu.score(&cpu_out, rf).unwrap();
        assert_eq!(
            best.index, cpu_best.index,
            "{name}: GPU and CPU best indices differ"
        );
        fx.check_best(&format!("{name} gpu"), &best, tol);
        println!(
            "{name}: {} transcripts, GPU and CPU best indices identical",
            best.index.len()
        );
    }
}

#[test]
fn gpu_kernels_match_cpu_twins() {
    let Some(mut gpu) = backend_or_skip("gpu_kernels_match_cpu_twins", GpuOptions::default())
    else {
        return;
    };
    kernels_match_twins(&mut gpu);
}

#[test]
fn gpu_forward_matches_pyg() {
    let Some(mut gpu) = backend_or_skip("gpu_forward_matches_pyg", GpuOptions::default()) else {
        return;
    };
    println!("{}", gpu.describe());
    forward_matches_pyg(&mut gpu);
}

/// The same checks under wgpu's default limits, whatever the environment says.
#[test]
fn gpu_matches_under_default_limits() {
    let options = GpuOptions {
        limits: LimitsMode::Default,
        ..GpuOptions::default()
    };
    let Some(mut gpu) = backend_or_skip("gpu_matches_under_default_limits", options) else {
        return;
    };
    forward_matches_pyg(&mut gpu);
    kernels_match_twins(&mut gpu);
}

/// A second forward of the same tile reuses the weights, buffers and bind groups.
#[test]
fn gpu_reuses_weights_buffers_and_bind_groups() {
    let Some(mut gpu) = backend_or_skip(
        "gpu_reuses_weights_buffers_and_bind_groups",
        GpuOptions::default(),
    ) else {
        return;
    };
    let fx = Fixture::load("dev");
    let first = gpu.forward(&fx.model, &fx.graph, false).unwrap();
    let after_first = gpu.stats();
    let second = gpu.forward(&fx.model, &fx.graph, false).unwrap();
    let after_second = gpu.stats();
    println!("after one forward: {after_first:?}; after two: {after_second:?}");
    assert_eq!(first.z_tx, second.z_tx);
    assert_eq!(after_second.model_uploads, 1, "weights uploaded once");
    assert_eq!(after_second.submissions, after_first.submissions + 1);
    assert_eq!(after_second.allocated_bytes, after_first.allocated_bytes);
    assert_eq!(
        after_second.cached_bind_groups,
        after_first.cached_bind_groups
    );
    // A smaller tile fits in the same buffers.
    let small = Fixture::load("small");
    gpu.forward(&small.model, &small.graph, false).unwrap();
    let after_small = gpu.stats();
    assert_eq!(after_small.model_uploads, 2, "a new model is uploaded");
    assert!(after_small.allocated_bytes <= after_second.allocated_bytes + (1 << 16));
}

/// Degenerate tiles: no nuclei, no transcripts, no belongs edges.
#[test]
fn gpu_handles_empty_tiles() {
    let Some(mut gpu) = backend_or_skip("gpu_handles_empty_tiles", GpuOptions::default()) else {
        return;
    };
    let fx = Fixture::load("small");
    let mut cpu = CpuBackend::new();
    let n_tx = fx.graph.n_tx();
    let mut cases = Vec::new();
    // No nuclei.
    let mut g = fx.graph.clone();
    g.bd_x.clear();
    g.belongs = Csr::from_edges(0, std::iter::empty());
    g.receptive_field = Some(ReceptiveField {
        k: 2,
        index: vec![-1; n_tx * 2],
    });
    cases.push(("no nuclei", g));
    // Nuclei without belongs edges.
    let mut g = fx.graph.clone();
    g.belongs = Csr::from_edges(fx.graph.n_bd(), std::iter::empty());
    cases.push(("no belongs edges", g));
    // No transcripts.
    let mut g = fx.graph.clone();
    g.tx_token.clear();
    g.neighbors = Csr::from_edges(0, std::iter::empty());
    g.belongs = Csr::from_edges(fx.graph.n_bd(), std::iter::empty());
    g.receptive_field = Some(ReceptiveField {
        k: 4,
        index: Vec::new(),
    });
    cases.push(("no transcripts", g));
    for (what, graph) in cases {
        let a = gpu.forward(&fx.model, &graph, false).unwrap();
        let b = cpu.forward(&fx.model, &graph, false).unwrap();
        assert_eq!(a.z_tx.len(), b.z_tx.len(), "{what}");
        assert_eq!(a.z_bd.len(), b.z_bd.len(), "{what}");
        all_close(&format!("{what} z_tx"), &a.z_tx, &b.z_tx, Tolerance::F32);
        all_close(&format!("{what} z_bd"), &a.z_bd, &b.z_bd, Tolerance::F32);
        let rf = graph.receptive_field.as_ref().unwrap();
        let sa = gpu.score(&a, rf).unwrap();
        let sb = cpu.score(&b, rf).unwrap();
        assert_eq!(sa.index, sb.index, "{what}");
    }
}

/// `score_tile` on the GPU: one submission reading back only the best score
/// and nucleus per transcript, the same best nuclei as the CPU's
/// `score_tile` and scores within the fixtures' tolerance, and bit for bit
/// the GPU's forward pass then scoring.
#[test]
fn gpu_score_tile_matches_the_cpu_in_one_submission() {
    let Some(mut gpu) = backend_or_skip(
        "gpu_score_tile_matches_the_cpu_in_one_submission",
        GpuOptions::default(),
    ) else {
        return;
    };
    let mut cpu = CpuBackend::new();
    for name in FIXTURES {
        let fx = Fixture::load(name);
        let tol = fx.tolerance();
        let before = gpu.stats();
        let got = gpu.score_tile(&fx.model, &fx.graph).unwrap();
        let after = gpu.stats();
        let n_tx = fx.graph.n_tx() as u64;
        assert_eq!(after.submissions, before.submissions + 1, "{name}");
        // Two arrays of n_tx words, each padded to 8 bytes in the staging buffer.
        assert_eq!(
            after.last_readback_bytes,
            2 * (4 * n_tx).next_multiple_of(8),
            "{name}: only the best scores and indices come back"
        );
        let expected = cpu.score_tile(&fx.model, &fx.graph).unwrap();
        assert_eq!(got.index, expected.index, "{name}: best indices differ");
        all_close(
            &format!("{name} score_tile gpu vs cpu"),
            &got.score_or_nan(),
            &expected.score_or_nan(),
            tol,
        );
        fx.check_best(&format!("{name} gpu score_tile"), &got, tol);
        let z = gpu.forward(&fx.model, &fx.graph, false).unwrap();
        let rf = fx.graph.receptive_field.as_ref().unwrap();
        assert_eq!(got, gpu.score(&z, rf).unwrap(), "{name}");
        assert_eq!(
            gpu.stats().model_uploads,
            after.model_uploads,
            "{name}: forward reuses the weights score_tile uploaded"
        );
    }
    let fx = Fixture::load("small");
    let mut graph = fx.graph.clone();
    graph.receptive_field = None;
    let err = gpu.score_tile(&fx.model, &graph).unwrap_err();
    assert!(err.to_string().contains("receptive field"), "{err}");
}
