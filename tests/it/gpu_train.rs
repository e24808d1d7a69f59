//! Training on the GPU: every training shader against its CPU twin in
//! `seggpu::train::kernels` on random inputs, the GPU step's gradients
//! against PyTorch autograd (tests/fixtures/train_grad), and Adam steps on
//! the GPU against the CPU trainer. Each also under wgpu's default limits.
//!
//! Without an adapter these tests print `SKIPPED: no GPU adapter` and pass,
//! except with `CI=true`, where they fail.

use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::gpu::test_support::backend_or_skip;
use seggpu::backend::gpu::{GpuBackend, GpuError, GpuOptions, GpuTrainer, LimitsMode};
use seggpu::backend::Backend;
use seggpu::defaults;
use seggpu::graph::{Csr, TileGraph};
use seggpu::io::args::InputArgs;
use seggpu::io::{check_membership, read_nuclei, read_transcripts};
use seggpu::kernels::gatv2::Gat;
use seggpu::model::Model;
use seggpu::model::{Architecture, BdFeatureMode};
use seggpu::pipeline::prepare;
use seggpu::pipeline::progress::Progress;
use seggpu::simulate::{simulate, SimulateOptions};
use seggpu::train::command::kept_genes;
use seggpu::train::data::{stream, streams, Batch, TrainingData, WindowSettings};
use seggpu::train::engine::{CpuEngine, GpuEngine, OnGpuError, TrainEngine};
use seggpu::train::grad::{loss_and_grad, zeros_like, Pairs};
use seggpu::train::init::random_model;
use seggpu::train::kernels::{self as twin, AdamConfig, REDUCE_ROWS};
use seggpu::train::session::{self, EvalEvery, Outcome, Settings};
use seggpu::train::{learning_rate, params, Adam};

use crate::common::train_fixture::{batch, load, GRAPHS};
use seggpu::tensorfile::TensorFile;

use crate::common::{
    all_close, assert_close, assert_success, seggpu, segment_quick_train, Fixture, Tolerance,
    XorShift, QUICK_TRAIN,
};

/// The kernels' tolerance: 1e-5 + 1e-4·|x|.
const TOL: Tolerance = Tolerance::F32;

fn default_limits() -> GpuOptions {
    GpuOptions {
        limits: LimitsMode::Default,
        ..GpuOptions::default()
    }
}

/// A random graph of `n_dst` destinations over `n_src` sources, 0 to
/// `max_degree` incoming edges each (some destinations without any).
fn random_csr(rng: &mut XorShift, n_src: usize, n_dst: usize, max_degree: usize) -> Csr {
    let mut edges = Vec::new();
    for d in 0..n_dst {
        for _ in 0..rng.below(max_degree + 1) {
            edges.push((rng.below(n_src) as u32, d as u32));
        }
    }
    Csr::from_edges(n_dst, edges.iter().copied())
}

/// Scaled random values: magnitudes like a network's activations.
fn values(rng: &mut XorShift, n: usize, scale: f32) -> Vec<f32> {
    rng.units(n).into_iter().map(|v| v * scale).collect()
}

/// The GATv2 backward shader against its twin (every output within [`TOL`]);
/// returns both sides' outputs: d xr, d xl per edge, d att and lin_l's bias
/// per destination.
fn gatv2_backward_matches(
    gpu: &mut GpuBackend,
    gat: &Gat,
    (xl, xr): (&[f32], &[f32]),
    csr: &Csr,
    g: &[f32],
    label: &str,
) -> [[Vec<f32>; 4]; 2] {
    let hc = gat.heads * gat.channels;
    let n_dst = csr.n_dst();
    let mut alpha = vec![0.0; csr.n_edges() * gat.heads];
    let mut out = vec![0.0; n_dst * hc];
    twin::gatv2_forward(gat, xl, xr, csr, &mut out, &mut alpha);
    let (mut dxr, mut dxl_edge, mut datt, mut dbias_l) = (
        vec![0.0; n_dst * hc],
        vec![0.0; csr.n_edges() * hc],
        vec![0.0; n_dst * hc],
        vec![0.0; n_dst * hc],
    );
    twin::gatv2_backward(
        gat,
        xl,
        xr,
        csr,
        &alpha,
        g,
        twin::GatGrads {
            dxr: &mut dxr,
            dxl_edge: &mut dxl_edge,
            datt_dst: &mut datt,
            dbias_l_dst: &mut dbias_l,
        },
    );
    let [got_dxr, got_dxl, got_datt, got_dbias_l] = gpu
        .train_gatv2_backward(gat, xl, xr, csr, &alpha, g)
        .unwrap();
    for (what, got, want) in [
        ("dxr", &got_dxr, &dxr),
        ("dxl per edge", &got_dxl, &dxl_edge),
        ("datt", &got_datt, &datt),
        ("lin_l bias per destination", &got_dbias_l, &dbias_l),
    ] {
        all_close(
            &format!("{label} train_gatv2_backward {what}"),
            got,
            want,
            TOL,
        );
    }
    [
        [dxr, dxl_edge, datt, dbias_l],
        [got_dxr, got_dxl, got_datt, got_dbias_l],
    ]
}

fn gatv2_kernels(gpu: &mut GpuBackend, rng: &mut XorShift, label: &str) {
    // Odd sizes on purpose: 3 heads × 5 channels, a destination of degree 0.
    let (heads, channels, n_src, n_dst) = (3, 5, 70, 90);
    let hc = heads * channels;
    let csr = random_csr(rng, n_src, n_dst, 12);
    assert!((0..n_dst).any(|d| csr.offsets[d] == csr.offsets[d + 1]));
    let (att, bias) = (values(rng, hc, 1.0), values(rng, hc, 0.5));
    let xl = values(rng, n_src * hc, 2.0);
    let xr = values(rng, n_dst * hc, 2.0);
    for relu in [false, true] {
        let gat = Gat {
            heads,
            channels,
            att: &att,
            bias: &bias,
            relu,
        };
        let mut out = vec![0.0; n_dst * hc];
        let mut alpha = vec![0.0; csr.n_edges() * heads];
        twin::gatv2_forward(&gat, &xl, &xr, &csr, &mut out, &mut alpha);
        let (got_out, got_alpha) = gpu.train_gatv2_forward(&gat, &xl, &xr, &csr).unwrap();
        all_close(
            &format!("{label} train_gatv2_forward out (relu {relu})"),
            &got_out,
            &out,
            TOL,
        );
        all_close(
            &format!("{label} train_gatv2_forward alpha (relu {relu})"),
            &got_alpha,
            &alpha,
            TOL,
        );
        if relu {
            continue;
        }
        let g = values(rng, n_dst * hc, 1.0);
        let [[_, dxl_edge, ..], _] = gatv2_backward_matches(gpu, &gat, (&xl, &xr), &csr, &g, label);
        // Every leaky ReLU slope 1 (positive inputs): d xr is exactly 0 on
        // both sides and lin_l's bias row is exactly g (the softmax ignores
        // a shift common to a destination's logits; summed as Σ_e du_e these
        // are rounding noise instead).
        let positive = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        let both = gatv2_backward_matches(
            gpu,
            &gat,
            (&positive(&xl), &positive(&xr)),
            &csr,
            &g,
            &format!("{label} positive inputs"),
        );
        for (side, [dxr, _, _, dbias_l]) in ["twin", "GPU"].into_iter().zip(&both) {
            let nonzero = dxr.iter().filter(|&&v| v != 0.0).count();
            assert_eq!(nonzero, 0, "{label} {side}: positive inputs: d xr not 0");
            for d in 0..n_dst {
                let has_edges = csr.offsets[d] < csr.offsets[d + 1];
                for c in 0..hc {
                    let want = if has_edges { g[d * hc + c] } else { 0.0 };
                    assert_eq!(
                        dbias_l[d * hc + c].to_bits(),
                        want.to_bits(),
                        "{label} {side}: positive inputs: lin_l bias row {d}, column {c}"
                    );
                }
            }
        }
        println!(
            "{label}: positive inputs: d xr exactly 0, lin_l bias rows exactly g (twin and GPU)"
        );

        // Sources sum their edges' contributions.
        let by_source = twin::edges_by_source(&csr, n_src);
        let mut dxl = vec![0.0; n_src * hc];
        twin::gather_edges(&by_source, &dxl_edge, hc, &mut dxl);
        let got = gpu.train_gather_rows(&by_source, &dxl_edge, hc).unwrap();
        all_close(
            &format!("{label} train_gather_rows (edges)"),
            &got,
            &dxl,
            TOL,
        );
    }
}

fn small_kernels(gpu: &mut GpuBackend, rng: &mut XorShift, label: &str) {
    // Embedding gradient: 40 tokens, some unused.
    let (vocab, dim, n) = (40, 6, 300);
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(vocab - 5) as u32).collect();
    let dh = values(rng, n * dim, 1.0);
    let mut dtable = vec![0.0; vocab * dim];
    twin::embedding_grad(&tokens, &dh, dim, &mut dtable);
    let by_token = Csr::from_edges(
        vocab,
        tokens.iter().enumerate().map(|(r, &t)| (r as u32, t)),
    );
    let got = gpu.train_gather_rows(&by_token, &dh, dim).unwrap();
    all_close(
        &format!("{label} train_gather_rows (embedding)"),
        &got,
        &dtable,
        TOL,
    );

    // ReLU backward, with exact zeros in the output.
    let g = values(rng, 500, 1.0);
    let out: Vec<f32> = values(rng, 500, 1.0)
        .into_iter()
        .enumerate()
        .map(|(i, v)| if i % 7 == 0 { 0.0 } else { v })
        .collect();
    let mut expected = g.clone();
    twin::relu_backward(&mut expected, &out);
    let got = gpu.train_relu_backward(&g, &out).unwrap();
    all_close(
        &format!("{label} train_relu_backward"),
        &got,
        &expected,
        Tolerance::EXACT,
    );

    // Dense layer gradients: 700 rows (3 reduction chunks), 9 → 13.
    let (in_dim, out_dim, rows) = (9, 13, 700);
    assert!(rows > 2 * REDUCE_ROWS);
    let wt = values(rng, in_dim * out_dim, 1.0);
    let dy = values(rng, rows * out_dim, 1.0);
    let mut dx = vec![0.0; rows * in_dim];
    twin::linear_input_grad(&dy, &wt, in_dim, out_dim, &mut dx);
    let got = gpu
        .train_linear_input_grad(&dy, &wt, in_dim, out_dim, None, None)
        .unwrap();
    all_close(&format!("{label} train_linear_input_grad"), &got, &dx, TOL);
    // Added to what is there, and added to scattered rows (distinct, as
    // the belongs sources are).
    let before = values(rng, rows * in_dim, 1.0);
    let added: Vec<f32> = before.iter().zip(&dx).map(|(b, d)| b + d).collect();
    let got = gpu
        .train_linear_input_grad(&dy, &wt, in_dim, out_dim, None, Some(&before))
        .unwrap();
    all_close(
        &format!("{label} train_linear_input_grad (add)"),
        &got,
        &added,
        TOL,
    );
    let n_big = rows + 50;
    let scatter: Vec<u32> = rng.permutation(n_big)[..rows].to_vec();
    let big = values(rng, n_big * in_dim, 1.0);
    let mut expected = big.clone();
    for (r, &row) in scatter.iter().enumerate() {
        for k in 0..in_dim {
            expected[row as usize * in_dim + k] += dx[r * in_dim + k];
        }
    }
    let got = gpu
        .train_linear_input_grad(&dy, &wt, in_dim, out_dim, Some(&scatter), Some(&big))
        .unwrap();
    all_close(
        &format!("{label} train_linear_input_grad (scattered rows)"),
        &got,
        &expected,
        TOL,
    );

    // Weight gradients, plain and gathered, with and without bias.
    let x_rows = 800;
    let x = values(rng, x_rows * in_dim, 2.0);
    let gather: Vec<u32> = (0..rows).map(|_| rng.below(x_rows) as u32).collect();
    for (rows_of, with_bias, what) in [
        (None, true, "plain, bias"),
        (Some(gather.as_slice()), true, "gathered, bias"),
        (Some(gather.as_slice()), false, "gathered, no bias"),
    ] {
        let x_used = if rows_of.is_some() {
            &x[..]
        } else {
            &x[..rows * in_dim]
        };
        let width = in_dim * out_dim + if with_bias { out_dim } else { 0 };
        let chunks = rows.div_ceil(REDUCE_ROWS);
        let mut partials = vec![0.0; chunks * width];
        for (chunk, partial) in partials.chunks_mut(width).enumerate() {
            twin::linear_weight_grad_chunk(
                x_used, rows_of, &dy, in_dim, out_dim, chunk, rows, partial,
            );
        }
        let got = gpu
            .train_linear_weight_grad_partials(x_used, rows_of, &dy, in_dim, out_dim, with_bias)
            .unwrap();
        all_close(
            &format!("{label} train_linear_weight_grad partials ({what})"),
            &got,
            &partials,
            TOL,
        );
        let mut dwt = vec![0.0; in_dim * out_dim];
        let mut db = vec![0.0; out_dim];
        twin::linear_weight_grad(
            x_used,
            rows_of,
            &dy,
            in_dim,
            out_dim,
            &mut dwt,
            with_bias.then_some(&mut db[..]),
        );
        if with_bias {
            dwt.extend_from_slice(&db);
        }
        let got = gpu
            .train_linear_weight_grad(x_used, rows_of, &dy, in_dim, out_dim, with_bias)
            .unwrap();
        all_close(
            &format!("{label} train_linear_weight_grad + train_sum_partials ({what})"),
            &got,
            &dwt,
            TOL,
        );
    }
    let mut sums = vec![0.0; out_dim];
    twin::column_sums(&dy, out_dim, &mut sums);
    let got = gpu
        .train_linear_weight_grad(&[], None, &dy, 0, out_dim, true)
        .unwrap();
    all_close(&format!("{label} column sums"), &got, &sums, TOL);

    // Pair loss and its gradient, logits from small to saturated.
    let (n_tx, n_bd, dim) = (120, 30, 8);
    let z_tx = values(rng, n_tx * dim, 3.0);
    let z_bd = values(rng, n_bd * dim, 3.0);
    let pair = |rng: &mut XorShift| (rng.below(n_tx) as u32, rng.below(n_bd) as u32);
    let pairs = Pairs {
        positive: (0..90).map(|_| pair(rng)).collect(),
        negative: (0..250).map(|_| pair(rng)).collect(),
    };
    let all: Vec<(u32, u32)> = pairs
        .positive
        .iter()
        .chain(&pairs.negative)
        .copied()
        .collect();
    let (terms, d_logit): (Vec<f32>, Vec<f32>) = all
        .iter()
        .enumerate()
        .map(|(p, &pr)| {
            twin::pair_loss_at(
                &z_tx,
                &z_bd,
                dim,
                pr,
                p < pairs.positive.len(),
                pairs.pos_weight(),
                all.len(),
            )
        })
        .unzip();
    let (got_terms, got_d) = gpu.train_pair_loss(&z_tx, &z_bd, dim, &pairs).unwrap();
    all_close(
        &format!("{label} train_pair_loss terms"),
        &got_terms,
        &terms,
        TOL,
    );
    all_close(
        &format!("{label} train_pair_loss d/d logit"),
        &got_d,
        &d_logit,
        TOL,
    );
    let tx_of: Vec<u32> = all.iter().map(|p| p.0).collect();
    let bd_of: Vec<u32> = all.iter().map(|p| p.1).collect();
    for (side, n, of, partner, other) in [
        ("transcripts", n_tx, &tx_of, &bd_of, &z_bd),
        ("nuclei", n_bd, &bd_of, &tx_of, &z_tx),
    ] {
        let by_node = Csr::from_edges(n, (0..all.len() as u32).map(|p| (p, of[p as usize])));
        let mut expected = vec![0.0; n * dim];
        for (node, row) in expected.chunks_mut(dim).enumerate() {
            twin::pair_grad_at(&by_node, partner, &d_logit, other, dim, node, row);
        }
        let got = gpu
            .train_pair_grad(&by_node, partner, &d_logit, other, dim)
            .unwrap();
        all_close(
            &format!("{label} train_pair_grad ({side})"),
            &got,
            &expected,
            TOL,
        );
    }

    // Adam: five steps from zero moments.
    let config = AdamConfig::default();
    let n = 1000;
    let mut param = values(rng, n, 1.0);
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let (mut gp, mut gm, mut gv) = (param.clone(), m.clone(), v.clone());
    for t in 1..=5 {
        let grad = values(rng, n, 0.1);
        let lr = 1e-3 * t as f32;
        twin::adam(&config, lr, t, &mut param, &grad, &mut m, &mut v);
        (gp, gm, gv) = gpu
            .train_adam(&config, lr, t, &gp, &grad, &gm, &gv)
            .unwrap();
    }
    all_close(&format!("{label} train_adam param"), &gp, &param, TOL);
    all_close(&format!("{label} train_adam m"), &gm, &m, TOL);
    all_close(&format!("{label} train_adam v"), &gv, &v, TOL);
}

fn kernels_match_twins(gpu: &mut GpuBackend, label: &str) {
    let mut rng = XorShift::new(11);
    gatv2_kernels(gpu, &mut rng, label);
    small_kernels(gpu, &mut rng, label);
}

#[test]
fn gpu_train_kernels_match_cpu_twins() {
    let Some(mut gpu) = backend_or_skip("gpu_train_kernels_match_cpu_twins", GpuOptions::default())
    else {
        return;
    };
    kernels_match_twins(&mut gpu, "adapter limits");
}

#[test]
fn gpu_train_kernels_match_cpu_twins_under_default_limits() {
    let Some(mut gpu) = backend_or_skip(
        "gpu_train_kernels_match_cpu_twins_under_default_limits",
        default_limits(),
    ) else {
        return;
    };
    kernels_match_twins(&mut gpu, "default limits");
}

/// Every training kernel alone with a 16 KiB binding limit: the per-edge
/// gradients, the dense layers' rows (three reduction runs), the gathered
/// rows of the weight gradient (compacted) and the scattered input gradient
/// are split into chunks, and each kernel still matches its twin.
#[test]
fn gpu_train_kernels_match_cpu_twins_split() {
    let options = GpuOptions {
        max_binding_bytes_override: Some(16 << 10),
        ..default_limits()
    };
    let Some(mut gpu) = backend_or_skip("gpu_train_kernels_match_cpu_twins_split", options) else {
        return;
    };
    kernels_match_twins(&mut gpu, "16 KiB bindings");
    // The weight gradient of 700 rows of 13 gathered from 800 rows of 9
    // (29 KiB): compacted reads, one run of chunks per dispatch.
    let mut rng = XorShift::new(3);
    let (in_dim, out_dim, rows, x_rows) = (9, 13, 700, 800);
    let x = values(&mut rng, x_rows * in_dim, 2.0);
    let dy = values(&mut rng, rows * out_dim, 1.0);
    let gather: Vec<u32> = (0..rows).map(|_| rng.below(x_rows) as u32).collect();
    let got = gpu
        .train_linear_weight_grad(&x, Some(&gather), &dy, in_dim, out_dim, true)
        .unwrap();
    let stats = gpu.stats();
    println!("split weight gradient: {stats:?}");
    assert!(
        stats.last_gathers > 0,
        "the gathered rows must be compacted"
    );
    // Three runs: compact copies, partial sums and their sum per run.
    assert!(stats.last_dispatches >= 3 * 3, "{stats:?}");
    let mut dwt = vec![0.0; in_dim * out_dim];
    let mut db = vec![0.0; out_dim];
    twin::linear_weight_grad(
        &x,
        Some(&gather),
        &dy,
        in_dim,
        out_dim,
        &mut dwt,
        Some(&mut db),
    );
    all_close(
        "split weight gradient",
        &got,
        &[dwt, db].concat(),
        Tolerance::EXACT,
    );
}

fn gradients_match_autograd(gpu: GpuBackend) {
    let model = load("model");
    let mut trainer = GpuTrainer::with_backend(gpu, &model);
    for i in 0..GRAPHS {
        let (graph, pairs, file) = batch(i, model.arch.vocab);
        let (loss, grads) = trainer.loss_and_grad(&graph, &pairs).unwrap();
        assert_close(
            &format!("gpu graph {i} loss"),
            loss as f64,
            file.f32("loss").unwrap().1[0] as f64,
            1e-5,
        );
        let expected = load(&format!("grad_{i}"));
        for ((name, got), (_, want)) in params(&grads).into_iter().zip(params(&expected)) {
            all_close(&format!("gpu graph {i} d/d {name}"), &got, &want, TOL);
        }
    }
    // Gradients leave the weights as they were.
    let after = trainer.model().unwrap();
    for ((name, got), (_, want)) in params(&after).into_iter().zip(params(&model)) {
        all_close(
            &format!("weights after gradients: {name}"),
            &got,
            &want,
            Tolerance::EXACT,
        );
    }
}

/// Every gradient of the GPU step within 1e-5 + 1e-4·|g| of PyTorch
/// autograd's, for each fixture graph.
#[test]
fn gpu_gradients_match_pytorch_autograd() {
    let Some(gpu) = backend_or_skip(
        "gpu_gradients_match_pytorch_autograd",
        GpuOptions::default(),
    ) else {
        return;
    };
    gradients_match_autograd(gpu);
}

#[test]
fn gpu_gradients_match_pytorch_autograd_under_default_limits() {
    let Some(gpu) = backend_or_skip(
        "gpu_gradients_match_pytorch_autograd_under_default_limits",
        default_limits(),
    ) else {
        return;
    };
    gradients_match_autograd(gpu);
}

/// The weights' tolerance after `steps` Adam steps from `lr0` with
/// train.py's schedule: [`TOL`] plus 1% of Σ lr_t, the furthest Adam moves a
/// weight (its step is lr_t · m̂ / (√v̂ + ε), about lr_t whatever the
/// gradient's size). So a weight whose gradient is mostly cancellation
/// (terms of both signs summing to near 0), where the two sides' rounding in
/// another order is a large part of the gradient, may differ by up to 1% of
/// its possible movement: measured 1.47e-5 (after 10 steps from 1e-3, Σ lr_t
/// ≈ 5.7e-3: the bound is 1e-5 + 5.7e-5 + 1e-4·|w|) on one of 9,216 weights
/// with llvmpipe on an AVX-512 Xeon, every other weight within 4e-6. A wrong
/// gradient term moves weights by a large part of Σ lr_t and still fails.
fn adam_weight_tolerance(lr0: f32, steps: usize) -> Tolerance {
    let moved: f64 = (0..steps)
        .map(|step| f64::from(learning_rate(lr0, step, steps)))
        .sum();
    Tolerance::new(TOL.atol + 0.01 * moved, TOL.rtol)
}

/// `steps` Adam steps over `batches` in turn with train.py's learning-rate
/// schedule, on the GPU and with the CPU trainer: the loss of every step
/// within 1e-5 + 1e-4·|x|, every weight within that plus 1% of the furthest
/// Adam can move a weight in those steps ([`adam_weight_tolerance`]; the
/// largest error per tensor is printed), and what the weights compute
/// (assignments) the same.
fn adam_steps_match_cpu(
    gpu: GpuBackend,
    model: &Model,
    batches: &[(TileGraph, Pairs)],
    steps: usize,
    lr0: f32,
    config: AdamConfig,
    label: &str,
) -> (Model, Model) {
    let tol = TOL;
    let weight_tol = adam_weight_tolerance(lr0, steps);
    let mut trainer = GpuTrainer::with_backend(gpu, model).with_adam(config);
    let mut cpu_model = model.clone();
    let mut adam = Adam::new(&cpu_model);
    adam.config = config;
    let (mut gpu_losses, mut cpu_losses) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let (graph, pairs) = &batches[step % batches.len()];
        let lr = learning_rate(lr0, step, steps);
        let mut grads = zeros_like(&cpu_model);
        cpu_losses.push(loss_and_grad(&cpu_model, graph, pairs, &mut grads));
        adam.update(&mut cpu_model, &mut grads, lr);
        let before = trainer.backend().stats();
        gpu_losses.push(trainer.step(graph, pairs, lr).unwrap());
        let after = trainer.backend().stats();
        assert_eq!(
            after.submissions,
            before.submissions + 1,
            "one submission per step"
        );
        let n_pairs = (pairs.positive.len() + pairs.negative.len()) as u64;
        assert_eq!(
            after.last_readback_bytes,
            (4 * n_pairs).next_multiple_of(8),
            "only the loss terms come back"
        );
    }
    assert_eq!(trainer.steps(), steps as u32);
    println!("{label}: losses GPU {gpu_losses:?}\n CPU {cpu_losses:?}");
    let trained = trainer.model().unwrap();
    // Gradients that are 0 in exact arithmetic (lin_r of GATv2, whose
    // softmax ignores a shift common to a destination's logits) are summed
    // so that they come out exactly 0 on both sides, not as rounding noise
    // that Adam at eps 1e-8 would turn into steps of ±lr: so the weights
    // agree even at PyTorch's eps.
    for ((name, got), (_, want)) in params(&trained).into_iter().zip(params(&cpu_model)) {
        let (mut worst, mut outside) = ((0.0f32, 0.0f32, 0.0f32), 0);
        for (&a, &b) in got.iter().zip(&want) {
            let err = (a - b).abs();
            outside += usize::from(err > weight_tol.atol as f32 + weight_tol.rtol as f32 * b.abs());
            if err > worst.0 {
                worst = (err, a, b);
            }
        }
        println!(
            "{label}: {name} after {steps} steps: {outside} of {} outside the tolerance, max |err| {:.3e} (GPU {}, CPU {})",
            got.len(),
            worst.0,
            worst.1,
            worst.2
        );
    }
    for ((name, got), (_, want)) in params(&trained).into_iter().zip(params(&cpu_model)) {
        all_close(
            &format!("{label}: {name} after {steps} steps"),
            &got,
            &want,
            weight_tol,
        );
    }
    all_close(
        &format!("{label}: losses of {steps} steps"),
        &gpu_losses,
        &cpu_losses,
        tol,
    );
    // What the trained weights compute: embeddings (reported) and, where
    // the graph has a receptive field, the best nucleus of each transcript,
    // the same for at least 99.5 % of them (assignments, hence accuracy,
    // within 0.5 points).
    let mut cpu = CpuBackend::new();
    for (i, (graph, _)) in batches.iter().enumerate() {
        let a = cpu.forward(&trained, graph, false).unwrap();
        let b = cpu.forward(&cpu_model, graph, false).unwrap();
        let scale = b
            .z_tx
            .iter()
            .chain(&b.z_bd)
            .fold(0.0f32, |m, v| m.max(v.abs()));
        let err = a
            .z_tx
            .iter()
            .zip(&b.z_tx)
            .chain(a.z_bd.iter().zip(&b.z_bd))
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        println!("{label}: graph {i} embeddings, trained on GPU vs CPU: max |err| {err:.3e} (max |z| {scale:.3e})");
        if graph.receptive_field.is_none() {
            continue;
        }
        let (ga, gb) = (
            cpu.score_tile(&trained, graph).unwrap(),
            cpu.score_tile(&cpu_model, graph).unwrap(),
        );
        let same = ga
            .index
            .iter()
            .zip(&gb.index)
            .filter(|(x, y)| x == y)
            .count();
        let share = same as f64 / ga.index.len().max(1) as f64;
        println!(
            "{label}: graph {i}: best nucleus identical for {same} of {} transcripts",
            ga.index.len()
        );
        assert!(
            share >= 0.995,
            "{label}: graph {i}: only {:.2} % identical",
            100.0 * share
        );
    }
    // Training moved the weights: the comparison is not of the start.
    let moved = params(&trained)
        .iter()
        .zip(params(model))
        .map(|((_, a), (_, b))| {
            a.iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        })
        .fold(0.0, f32::max);
    println!("{label}: largest weight change over {steps} steps {moved:e}");
    assert!(moved > 1e-3, "{label}: the weights barely moved ({moved})");
    (trained, cpu_model)
}

fn fixture_batches(model: &Model) -> Vec<(TileGraph, Pairs)> {
    (0..GRAPHS)
        .map(|i| {
            let (graph, pairs, _) = batch(i, model.arch.vocab);
            (graph, pairs)
        })
        .collect()
}

/// 50 Adam steps (PyTorch's constants, eps 1e-8) over the fixture's graphs,
/// on the GPU and with the CPU trainer: every weight and every step's loss
/// within 1e-5 + 1e-4·|x| (measured: 3.6e-7 at most).
#[test]
fn gpu_adam_steps_match_the_cpu_trainer() {
    let Some(gpu) = backend_or_skip(
        "gpu_adam_steps_match_the_cpu_trainer",
        GpuOptions::default(),
    ) else {
        return;
    };
    let model = load("model");
    let batches = fixture_batches(&model);
    adam_steps_match_cpu(
        gpu,
        &model,
        &batches,
        50,
        1e-2,
        AdamConfig::default(),
        "fixture graphs",
    );
}

/// Random pairs on the `dev` fixture's graph.
fn dev_pairs(fx: &Fixture) -> Pairs {
    let (n_tx, n_bd) = (fx.graph.n_tx(), fx.graph.n_bd());
    let mut rng = XorShift::new(5);
    let mut pair = || (rng.below(n_tx) as u32, rng.below(n_bd) as u32);
    Pairs {
        positive: (0..n_tx / 4).map(|_| pair()).collect(),
        negative: (0..n_tx / 2).map(|_| pair()).collect(),
    }
}

/// A larger graph (the `dev` fixture, 3 layers) with random pairs, under
/// wgpu's default limits: 10 steps.
#[test]
fn gpu_adam_steps_match_the_cpu_trainer_on_a_larger_graph_under_default_limits() {
    let Some(gpu) = backend_or_skip(
        "gpu_adam_steps_match_the_cpu_trainer_on_a_larger_graph_under_default_limits",
        default_limits(),
    ) else {
        return;
    };
    let fx = Fixture::load("dev");
    let pairs = dev_pairs(&fx);
    let (n_tx, n_bd) = (fx.graph.n_tx(), fx.graph.n_bd());
    println!(
        "dev graph: {n_tx} transcripts, {n_bd} nuclei, {} layers, {} pairs",
        fx.model.layers.len(),
        pairs.positive.len() + pairs.negative.len()
    );
    adam_steps_match_cpu(
        gpu,
        &fx.model,
        &[(fx.graph.clone(), pairs)],
        10,
        1e-3,
        AdamConfig::default(),
        "dev graph",
    );
}

/// What cannot be split, a weight block larger than one storage binding,
/// stops the step with an error naming the array, and the trainer refuses
/// to go on.
#[test]
fn gpu_training_arrays_above_the_binding_limit_are_an_error() {
    let options = GpuOptions {
        max_binding_bytes_override: Some(1024),
        ..GpuOptions::default()
    };
    let Some(gpu) = backend_or_skip(
        "gpu_training_arrays_above_the_binding_limit_are_an_error",
        options.clone(),
    ) else {
        return;
    };
    let fx = Fixture::load("dev");
    let pairs = Pairs {
        positive: vec![(0, 0)],
        negative: vec![(1, 0)],
    };
    let mut trainer = GpuTrainer::with_backend(gpu, &fx.model);
    let err = trainer.step(&fx.graph, &pairs, 1e-3).unwrap_err();
    println!("{err}");
    assert!(matches!(err, GpuError::TooLarge { .. }), "{err:?}");
    // The array (its slot) and the limit are named.
    let text = err.to_string();
    assert!(
        text.contains("bytes of `") && text.contains("exceeds the binding limit 1024"),
        "{text}"
    );
    assert!(trainer.step(&fx.graph, &pairs, 1e-3).is_err());

    // Under --backend auto the step is done on the CPU, and so is the rest.
    let gpu = backend_or_skip("binding limit under auto", options).unwrap();
    let config = AdamConfig::default();
    let mut engine = GpuEngine::new(gpu, fx.model.clone(), config, OnGpuError::ResumeOnCpu);
    let batch = Batch {
        graph: fx.graph.clone(),
        pairs,
        window: [0.0; 3],
    };
    let mut cpu = CpuEngine::new(fx.model.clone(), config);
    for _ in 0..2 {
        assert_eq!(
            engine.step(&batch, 1e-3).unwrap(),
            cpu.step(&batch, 1e-3).unwrap()
        );
    }
    assert_eq!(engine.cpu_from_step(), Some(0));
    assert_eq!(
        params(&engine.model().unwrap()),
        params(&cpu.model().unwrap())
    );
}

/// `n_pos` positive and `n_neg` negative random pairs on `graph`.
fn random_pairs(graph: &TileGraph, n_pos: usize, n_neg: usize, seed: u64) -> Pairs {
    let (n_tx, n_bd) = (graph.n_tx(), graph.n_bd());
    let mut rng = XorShift::new(seed);
    let mut pair = || (rng.below(n_tx) as u32, rng.below(n_bd) as u32);
    Pairs {
        positive: (0..n_pos).map(|_| pair()).collect(),
        negative: (0..n_neg).map(|_| pair()).collect(),
    }
}

/// The largest |a − b| over every weight of two models, and whether all are
/// bit for bit equal.
fn bitwise(a: &Model, b: &Model) -> (f32, bool) {
    let mut worst = 0.0f32;
    let mut same = true;
    for ((_, x), (_, y)) in params(a).into_iter().zip(params(b)) {
        for (p, q) in x.iter().zip(&y) {
            same &= p.to_bits() == q.to_bits();
            worst = worst.max((p - q).abs());
        }
    }
    (worst, same)
}

/// A training window larger than one storage binding is split: with 320 KiB
/// bindings (what cannot be split must fit: a reduction chunk's 256 rows of
/// the GATv2 backward's per-destination gradients, 288 KiB) a 1000-transcript window's activations (375 KiB), per-edge
/// (1.9 MiB) and per-destination gradients and weight-gradient rows (4
/// reduction runs) take several chunks, and the activations read through
/// indices are compacted. The loss,
/// every gradient and the weights after 3 Adam steps are bit for bit those
/// of the unsplit run (and the gradients the CPU trainer's within the
/// kernels' tolerance); `--backend gpu` (no CPU fallback) trains it.
#[test]
fn gpu_training_split_windows_equal_unsplit() {
    let Some(whole) = backend_or_skip(
        "gpu_training_split_windows_equal_unsplit",
        GpuOptions::default(),
    ) else {
        return;
    };
    let split_options = GpuOptions {
        max_binding_bytes_override: Some(320 << 10),
        ..default_limits()
    };
    let split = backend_or_skip(
        "gpu_training_split_windows_equal_unsplit (320 KiB bindings)",
        split_options.clone(),
    )
    .unwrap();
    let (model, graph) = seggpu::synthetic::tile(1000, 3);
    let pairs = random_pairs(&graph, graph.n_tx() / 4, graph.n_tx() / 2, 9);
    println!(
        "window: {} transcripts, {} nuclei, {} + {} edges, {} pairs",
        graph.n_tx(),
        graph.n_bd(),
        graph.neighbors.n_edges(),
        graph.belongs.n_edges(),
        pairs.positive.len() + pairs.negative.len()
    );
    let mut a = GpuTrainer::with_backend(whole, &model);
    let mut b = GpuTrainer::with_backend(split, &model);
    let (loss_a, grads_a) = a.loss_and_grad(&graph, &pairs).unwrap();
    let (loss_b, grads_b) = b.loss_and_grad(&graph, &pairs).unwrap();
    let (sa, sb) = (a.backend().stats(), b.backend().stats());
    println!("unsplit: {sa:?}\nsplit: {sb:?}");
    assert!(
        sb.last_gathers > 0,
        "320 KiB bindings must force compaction"
    );
    assert!(
        sb.last_dispatches > sa.last_dispatches,
        "no chunk was split"
    );
    assert_eq!(loss_a.to_bits(), loss_b.to_bits(), "{loss_a} vs {loss_b}");
    let (worst, same) = bitwise(&grads_a, &grads_b);
    println!("gradients split vs unsplit: max |err| {worst:.3e}");
    assert!(same, "split gradients differ by up to {worst:e}");
    let mut expected = zeros_like(&model);
    let cpu_loss = loss_and_grad(&model, &graph, &pairs, &mut expected);
    assert_close("split window loss", loss_b as f64, cpu_loss as f64, 1e-5);
    for ((name, got), (_, want)) in params(&grads_b).into_iter().zip(params(&expected)) {
        all_close(&format!("split window d/d {name}"), &got, &want, TOL);
    }

    let mut losses = Vec::new();
    for step in 0..3 {
        let lr = learning_rate(1e-2, step, 3);
        let la = a.step(&graph, &pairs, lr).unwrap();
        let lb = b.step(&graph, &pairs, lr).unwrap();
        assert_eq!(la.to_bits(), lb.to_bits(), "step {step}: {la} vs {lb}");
        losses.push(lb);
    }
    let (worst, same) = bitwise(&a.model().unwrap(), &b.model().unwrap());
    println!("losses {losses:?}; weights split vs unsplit after 3 steps: max |err| {worst:.3e}");
    assert!(same, "split weights differ by up to {worst:e}");

    // --backend gpu: the GPU engine without fallback takes the window.
    let gpu = backend_or_skip("split window under --backend gpu", split_options).unwrap();
    let mut engine = GpuEngine::new(gpu, model.clone(), AdamConfig::default(), OnGpuError::Fail);
    let batch = Batch {
        graph: graph.clone(),
        pairs: pairs.clone(),
        window: [0.0; 3],
    };
    let lr = learning_rate(1e-2, 0, 3);
    assert_eq!(
        engine.step(&batch, lr).unwrap().to_bits(),
        losses[0].to_bits()
    );
    assert_eq!(engine.cpu_from_step(), None);
}

/// The GPU step's gradients against the CPU trainer's on a larger graph
/// (the `dev` fixture, 3 layers) with random pairs.
#[test]
fn gpu_gradients_match_the_cpu_trainer_on_a_larger_graph() {
    let Some(gpu) = backend_or_skip(
        "gpu_gradients_match_the_cpu_trainer_on_a_larger_graph",
        GpuOptions::default(),
    ) else {
        return;
    };
    let fx = Fixture::load("dev");
    let pairs = dev_pairs(&fx);
    let mut trainer = GpuTrainer::with_backend(gpu, &fx.model);
    let (loss, grads) = trainer.loss_and_grad(&fx.graph, &pairs).unwrap();
    let mut expected = zeros_like(&fx.model);
    let cpu_loss = loss_and_grad(&fx.model, &fx.graph, &pairs, &mut expected);
    assert_close("dev graph loss", loss as f64, cpu_loss as f64, 1e-5);
    for ((name, got), (_, want)) in params(&grads).into_iter().zip(params(&expected)) {
        all_close(&format!("dev graph d/d {name}"), &got, &want, TOL);
    }
}

/// The state read back after one step from zero moments: the weights of
/// `model()`, and Adam's moments (1 − β1)·g and (1 − β2)·g·g of the step's
/// gradients g.
#[test]
fn gpu_trainer_state_holds_the_moments_of_the_step() {
    let Some(gpu) = backend_or_skip(
        "gpu_trainer_state_holds_the_moments_of_the_step",
        GpuOptions::default(),
    ) else {
        return;
    };
    let model = load("model");
    let (graph, pairs, _) = batch(0, model.arch.vocab);
    let mut trainer = GpuTrainer::with_backend(gpu, &model);
    let (_, grads) = trainer.loss_and_grad(&graph, &pairs).unwrap();
    trainer.step(&graph, &pairs, 1e-3).unwrap();
    let state = trainer.state().unwrap();
    assert_eq!(state.steps, 1);
    let config = AdamConfig::default();
    let weights = trainer.model().unwrap();
    for ((((name, g), (_, m)), (_, v)), ((_, w), (_, w_state))) in params(&grads)
        .into_iter()
        .zip(params(&state.first_moment))
        .zip(params(&state.second_moment))
        .zip(params(&weights).into_iter().zip(params(&state.model)))
    {
        let m_expected: Vec<f32> = g.iter().map(|g| (1.0 - config.beta1) * g).collect();
        let v_expected: Vec<f32> = g.iter().map(|g| (1.0 - config.beta2) * g * g).collect();
        all_close(&format!("first moment {name}"), &m, &m_expected, TOL);
        all_close(&format!("second moment {name}"), &v, &v_expected, TOL);
        all_close(&format!("weights {name}"), &w_state, &w, Tolerance::EXACT);
    }
}

/// With at most 7 workgroups per dispatch dimension, Adam's dispatch over
/// every parameter is a 2-D grid: 5 steps' losses and weights still match
/// the CPU trainer's.
#[test]
fn gpu_training_in_2d_grids() {
    let options = GpuOptions {
        max_workgroups_per_dim_override: Some(7),
        ..GpuOptions::default()
    };
    let Some(gpu) = backend_or_skip("gpu_training_in_2d_grids", options) else {
        return;
    };
    let model = load("model");
    let batches = fixture_batches(&model);
    let mut trainer = GpuTrainer::with_backend(gpu, &model);
    trainer.step(&batches[0].0, &batches[0].1, 1e-3).unwrap();
    let stats = trainer.backend().stats();
    println!("{stats:?}");
    assert!(stats.last_2d_grids > 0, "expected 2-D grids");
    adam_steps_match_cpu(
        trainer.into_backend(),
        &model,
        &batches,
        5,
        1e-2,
        AdamConfig::default(),
        "2-D grids",
    );
}

/// Degenerate windows: nuclei without belongs edges, no nuclei (and no
/// pairs): the GPU's loss and gradients are the CPU trainer's.
#[test]
fn gpu_gradients_on_degenerate_windows() {
    let Some(gpu) = backend_or_skip("gpu_gradients_on_degenerate_windows", GpuOptions::default())
    else {
        return;
    };
    let model = load("model");
    let (graph, pairs, _) = batch(1, model.arch.vocab);
    let mut cases = Vec::new();
    let mut g = graph.clone();
    g.belongs = Csr::from_edges(graph.n_bd(), std::iter::empty());
    cases.push(("no belongs edges", g, pairs.clone()));
    let mut g = graph.clone();
    g.bd_x.clear();
    g.belongs = Csr::from_edges(0, std::iter::empty());
    g.receptive_field = None;
    cases.push(("no nuclei, no pairs", g, Pairs::default()));
    let mut trainer = GpuTrainer::with_backend(gpu, &model);
    for (what, graph, pairs) in cases {
        let (loss, grads) = trainer.loss_and_grad(&graph, &pairs).unwrap();
        let mut expected = zeros_like(&model);
        let cpu_loss = loss_and_grad(&model, &graph, &pairs, &mut expected);
        assert_close(&format!("{what}: loss"), loss as f64, cpu_loss as f64, 1e-5);
        for ((name, got), (_, want)) in params(&grads).into_iter().zip(params(&expected)) {
            all_close(&format!("{what}: d/d {name}"), &got, &want, TOL);
        }
    }
}

/// A backend that ran the forward pass, trained on, then handed back runs
/// the forward pass with the weights it is given, not the trained ones left
/// on the device.
#[test]
fn gpu_backend_after_training_uploads_the_weights_again() {
    let Some(mut gpu) = backend_or_skip(
        "gpu_backend_after_training_uploads_the_weights_again",
        GpuOptions::default(),
    ) else {
        return;
    };
    let fx = Fixture::load("dev");
    let before = gpu.forward(&fx.model, &fx.graph, false).unwrap();
    let mut trainer = GpuTrainer::with_backend(gpu, &fx.model);
    trainer.step(&fx.graph, &dev_pairs(&fx), 1e-2).unwrap();
    let mut gpu = trainer.into_backend();
    let after = gpu.forward(&fx.model, &fx.graph, false).unwrap();
    assert_eq!(before.z_tx, after.z_tx);
    assert_eq!(before.z_bd, after.z_bd);
}

/// The fixture's graphs as training batches.
fn fixture_training_batches(model: &Model) -> Vec<Batch> {
    fixture_batches(model)
        .into_iter()
        .map(|(graph, pairs)| Batch {
            graph,
            pairs,
            window: [0.0; 3],
        })
        .collect()
}

/// `steps` steps of `engine` over `batches` in turn with train.py's
/// learning rate; before step `lose_before` (0-based), the device is lost.
fn run_engine(
    engine: &mut GpuEngine,
    batches: &[Batch],
    steps: usize,
    lose_before: usize,
) -> Vec<f32> {
    (0..steps)
        .map(|step| {
            if step == lose_before {
                engine
                    .trainer()
                    .expect("still on the GPU")
                    .backend()
                    .lose_device_for_tests();
            }
            let lr = learning_rate(1e-2, step, steps);
            engine.step(&batches[step % batches.len()], lr).unwrap()
        })
        .collect()
}

/// The largest |a − b| over every weight, with the tensor and index.
fn max_weight_error(a: &Model, b: &Model) -> (f32, String, usize) {
    let mut worst = (0.0f32, String::from("none"), 0);
    for ((name, x), (_, y)) in params(a).into_iter().zip(params(b)) {
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            let err = (p - q).abs();
            if err > worst.0 || err.is_nan() {
                worst = (err, name.clone(), i);
            }
        }
    }
    worst
}

/// A device lost mid-training under `--backend auto` (the forward tests'
/// `lose_device_for_tests`, which destroys the device as a driver reset
/// would, before step 6 of 9) with a checkpoint every 4 steps: the engine
/// goes on on the CPU from the checkpoint of step 4, replaying step 5 on
/// the CPU, and the run equals, bit for bit, one that read the GPU's state
/// back after step 4 by itself and ran steps 5–9 with a [`CpuEngine`]
/// built from it (the same weights and moments in, the same CPU arithmetic
/// after); its losses are the GPU's for steps 1–5 and the CPU's after.
/// Between checkpoints a step reads back only its loss; a checkpoint step
/// adds the weights and both moments. Lost before the first step, the run
/// equals a CPU run. Under `--backend gpu` the lost device is an error.
#[test]
fn gpu_engine_goes_on_on_the_cpu_after_a_device_loss() {
    const STEPS: usize = 9;
    const LOST_BEFORE: usize = 5;
    const EVERY: u32 = 4;
    let test = "gpu_engine_goes_on_on_the_cpu_after_a_device_loss";
    let Some(gpu) = backend_or_skip(test, GpuOptions::default()) else {
        return;
    };
    let model = load("model");
    let batches = fixture_training_batches(&model);
    let config = AdamConfig::default();
    let lr = |step| learning_rate(1e-2, step, STEPS);

    let mut engine = GpuEngine::with_checkpoint_every(
        gpu,
        model.clone(),
        config,
        OnGpuError::ResumeOnCpu,
        EVERY,
    );
    // Readbacks per step before the loss: the loss terms, plus the
    // weights and moments on steps 4 (the checkpoint).
    let n_params: u64 = params(&model).iter().map(|(_, t)| t.len() as u64).sum();
    let mut losses = Vec::new();
    for step in 0..LOST_BEFORE {
        let batch = &batches[step % batches.len()];
        let before = engine.trainer().unwrap().backend().stats();
        losses.push(engine.step(batch, lr(step)).unwrap());
        let after = engine.trainer().unwrap().backend().stats();
        let loss_bytes = (4 * (batch.pairs.positive.len() + batch.pairs.negative.len()) as u64)
            .next_multiple_of(8);
        let extra = after.last_readback_bytes - loss_bytes;
        println!(
            "{test}: step {}: {} submission(s), {} bytes read back ({loss_bytes} of loss terms), {} steps since the checkpoint",
            step + 1,
            after.submissions - before.submissions,
            after.last_readback_bytes,
            engine.steps_since_checkpoint()
        );
        assert_eq!(after.submissions, before.submissions + 1);
        if (step as u32 + 1).is_multiple_of(EVERY) {
            // Weights and two moments, each laid out with some padding.
            assert!(
                extra >= 3 * 4 * n_params && extra <= 3 * 4 * n_params + 3 * 4096,
                "step {}: {extra} extra bytes for {n_params} parameters",
                step + 1
            );
            assert_eq!(engine.steps_since_checkpoint(), 0);
        } else {
            assert_eq!(extra, 0, "step {}: only the loss terms come back", step + 1);
            assert_eq!(engine.steps_since_checkpoint(), (step + 1) % EVERY as usize);
        }
    }
    engine.trainer().unwrap().backend().lose_device_for_tests();
    for step in LOST_BEFORE..STEPS {
        losses.push(
            engine
                .step(&batches[step % batches.len()], lr(step))
                .unwrap(),
        );
    }
    assert!(engine.trainer().is_none(), "the lost GPU is dropped");
    let checkpoint = EVERY as usize;
    assert_eq!(engine.cpu_from_step(), Some(checkpoint as u32));
    assert_eq!(engine.steps(), STEPS as u32);
    assert_eq!(engine.kind(), "gpu, then cpu from step 5");
    println!("{test}: {}", engine.describe());
    assert!(
        engine.describe().contains("then cpu"),
        "{}",
        engine.describe()
    );
    let resumed = engine.model().unwrap();

    // The same by hand: the GPU for 5 steps with its state read back after
    // step 4, the CPU from that state for steps 5–9.
    let gpu = backend_or_skip(test, GpuOptions::default()).unwrap();
    let mut trainer = GpuTrainer::with_backend(gpu, &model).with_adam(config);
    let mut expected_losses = Vec::new();
    let mut state = None;
    for step in 0..LOST_BEFORE {
        if step == checkpoint {
            state = Some(trainer.state().unwrap());
        }
        let b = &batches[step % batches.len()];
        expected_losses.push(trainer.step(&b.graph, &b.pairs, lr(step)).unwrap());
    }
    let state = state.unwrap();
    assert_eq!(state.steps, checkpoint as u32);
    let adam = Adam::resume(
        config,
        state.steps,
        &state.model,
        &state.first_moment,
        &state.second_moment,
    )
    .unwrap();
    let mut cpu = CpuEngine::resume(state.model, adam);
    for step in checkpoint..STEPS {
        let loss = cpu.step(&batches[step % batches.len()], lr(step)).unwrap();
        if step >= LOST_BEFORE {
            expected_losses.push(loss);
        }
    }
    let expected = cpu.model().unwrap();
    let (err, name, at) = max_weight_error(&resumed, &expected);
    println!("{test}: resumed vs the CPU from the checkpoint of step {checkpoint}: max |err| {err:e} ({name}[{at}]); losses {losses:?}");
    assert_eq!(losses, expected_losses);
    assert_eq!(params(&resumed), params(&expected));

    // Lost before the first step: the starting weights and zero moments.
    let gpu = backend_or_skip(test, GpuOptions::default()).unwrap();
    let mut engine = GpuEngine::new(gpu, model.clone(), config, OnGpuError::ResumeOnCpu);
    let losses = run_engine(&mut engine, &batches, 2, 0);
    let mut cpu = CpuEngine::new(model.clone(), config);
    let expected_losses: Vec<f32> = (0..2)
        .map(|step| {
            cpu.step(&batches[step], learning_rate(1e-2, step, 2))
                .unwrap()
        })
        .collect();
    assert_eq!(engine.cpu_from_step(), Some(0));
    assert_eq!(losses, expected_losses);
    assert_eq!(
        params(&engine.model().unwrap()),
        params(&cpu.model().unwrap())
    );

    // --backend gpu: the step fails, naming the lost device.
    let gpu = backend_or_skip(test, GpuOptions::default()).unwrap();
    let mut engine = GpuEngine::new(gpu, model, config, OnGpuError::Fail);
    engine.step(&batches[0], 1e-2).unwrap();
    engine.trainer().unwrap().backend().lose_device_for_tests();
    let err = engine.step(&batches[1], 1e-2).unwrap_err();
    let text = format!("{err:#}");
    println!("{test}: --backend gpu: {text}");
    assert!(
        err.downcast_ref::<GpuError>()
            .is_some_and(GpuError::is_device_lost),
        "{text}"
    );
    assert!(text.contains("--backend auto"), "{text}");
}

/// A simulated sample (60 cells) read as `seggpu train` reads it (xenium
/// preset, default graphs, 20 % held out, seed 3), and a new small model
/// (E 8, 2 heads of 8, one mid layer) drawn from the seed.
fn simulated_training() -> (TrainingData, Model, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    simulate(
        &input,
        &SimulateOptions {
            cells: 60,
            seed: 5,
            ..SimulateOptions::default()
        },
    )
    .unwrap();
    let spec = InputArgs {
        xenium: Some(input),
        ..InputArgs::default()
    }
    .resolve()
    .unwrap();
    let mut transcripts = read_transcripts(&spec).unwrap();
    let nuclei = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    check_membership(&mut transcripts, &nuclei, &spec).unwrap();
    let genes = kept_genes(&transcripts);
    let arch = Architecture {
        vocab: genes.len(),
        emb: 8,
        heads: 2,
        hidden: 8,
        out: 8,
        mid_layers: 1,
    };
    let model = random_model(
        arch,
        genes,
        BdFeatureMode::Props,
        &mut stream(SEED, streams::INIT),
    );
    let params = crate::common::training_params();
    let prepared = prepare::run(&mut transcripts, &nuclei, &model, &params).unwrap();
    let data = TrainingData::new(&prepared, &nuclei, &params.graph, 0.2, SEED).unwrap();
    (data, model, dir)
}

const SEED: u64 = 3;

/// `seggpu train`'s loop (`session::train`, its defaults but 60 µm
/// windows) for 50 steps on `engine`.
fn train_50(engine: &mut dyn TrainEngine, data: &TrainingData) -> Outcome {
    let settings = Settings {
        steps: 50,
        minutes: None,
        seed: SEED,
        lr: 5e-3,
        window: WindowSettings {
            size: 60.0,
            supervision_fraction: 0.5,
            random_negatives: 1,
        },
        eval_every: EvalEvery::Steps(25),
        score_cut: defaults::SCORE_CUT,
    };
    session::train(
        engine,
        data,
        &settings,
        &mut CpuBackend::new(),
        &Progress { quiet: true },
    )
    .unwrap()
}

/// Per tensor: ‖a − b‖₂ / ‖b‖₂ and the largest |a − b| with its index,
/// printed; returns the worst tensor's relative error, its name, and the
/// relative error of all weights together.
fn weight_errors(label: &str, a: &Model, b: &Model) -> (f64, String, f64) {
    let mut worst = (0.0f64, String::new());
    let (mut all_diff, mut all_norm) = (0.0f64, 0.0f64);
    for ((name, x), (_, y)) in params(a).into_iter().zip(params(b)) {
        let (mut diff, mut norm, mut max, mut at) = (0.0f64, 0.0f64, 0.0f32, 0);
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            diff += ((p - q) as f64).powi(2);
            norm += (*q as f64).powi(2);
            if (p - q).abs() > max {
                (max, at) = ((p - q).abs(), i);
            }
        }
        (all_diff, all_norm) = (all_diff + diff, all_norm + norm);
        let rel = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
        println!(
            "{label}: {name}: relative error {rel:.2e}, max |err| {max:.2e} at [{at}] ({} vs {})",
            x[at], y[at]
        );
        if rel > worst.0 || rel.is_nan() {
            worst = (rel, name);
        }
    }
    let all = (all_diff / all_norm).sqrt();
    println!(
        "{label}: worst tensor's relative error {:.3e} ({}); all weights {all:.3e}",
        worst.0, worst.1
    );
    (worst.0, worst.1, all)
}

/// Acceptance: 50 steps of `seggpu train`'s loop (session, windows,
/// cosine learning rate, validation) on a simulated sample with the GPU
/// engine and with the CPU engine, same seed, Adam with PyTorch's constants
/// (ε 1e-8): the validation accuracy within 0.5 points, every tensor within
/// 1e-4 relative (‖Δ‖₂/‖w‖₂) and every weight within 1e-5 + 1e-4·|w| of the
/// CPU run's (measured: worst tensor 6.4e-7, all weights 4.5e-8).
///
/// Adam's update lr·m̂/(√v̂ + ε) is scale-free, so a gradient that is zero up
/// to rounding would take steps of ±lr with the rounding's sign and part
/// the runs (before the backward summed GATv2's shift-invariant gradients
/// exactly: worst tensor 6.0e-3, as far as two CPU runs from weights one
/// ulp apart). Every figure is printed.
#[test]
fn gpu_training_matches_cpu_training_on_a_simulated_sample() {
    let test = "gpu_training_matches_cpu_training_on_a_simulated_sample";
    let Some(backend) = backend_or_skip(test, GpuOptions::default()) else {
        return;
    };
    let (data, model, _dir) = simulated_training();
    println!(
        "{test}: {} held out, {} parameters",
        data.counts.held_out,
        params(&model).iter().map(|(_, t)| t.len()).sum::<usize>()
    );
    let config = AdamConfig::default();
    let mut engine = GpuEngine::new(backend, model.clone(), config, OnGpuError::Fail);
    let on_gpu = train_50(&mut engine, &data);
    assert_eq!(engine.kind(), "gpu");
    let on_cpu = train_50(&mut CpuEngine::new(model.clone(), config), &data);
    assert_eq!((on_gpu.steps, on_cpu.steps), (50, 50));
    println!(
        "first losses GPU {:?} CPU {:?}",
        &on_gpu.losses[..3],
        &on_cpu.losses[..3]
    );
    all_close("losses of 50 steps", &on_gpu.losses, &on_cpu.losses, TOL);
    let (acc_gpu, acc_cpu) = (
        on_gpu.last().validation.accuracy,
        on_cpu.last().validation.accuracy,
    );
    println!(
        "validation accuracy GPU {:.2}%, CPU {:.2}% ({:.2} points apart)",
        100.0 * acc_gpu,
        100.0 * acc_cpu,
        100.0 * (acc_gpu - acc_cpu).abs(),
    );
    assert!(
        (acc_gpu - acc_cpu).abs() <= 0.005,
        "validation accuracy GPU {acc_gpu} vs CPU {acc_cpu}"
    );
    let (worst, name, all) = weight_errors("GPU vs CPU", &on_gpu.model, &on_cpu.model);
    assert!(
        all <= 1e-4,
        "all weights: relative error {all:e} above 1e-4"
    );
    assert!(worst <= 1e-4, "{name}: relative error {worst:e} above 1e-4");
    for ((name, got), (_, want)) in params(&on_gpu.model).into_iter().zip(params(&on_cpu.model)) {
        all_close(&format!("{name} after 50 steps"), &got, &want, TOL);
    }
}

/// The training kernels' `exp` (`twin::portable_exp`, also in
/// shaders/train_exp.wgsl) against f64's on every 61st f32 of [-87.3, 88.7]:
/// within 1 ulp of the correctly rounded value (printed: the share that is
/// exact), 0 below the smallest normal, NaN kept.
#[test]
fn portable_exp_is_within_one_ulp() {
    let (mut worst, mut exact, mut total) = (0i64, 0u64, 0u64);
    let mut check = |x: f32| {
        let want = ((x as f64).exp() as f32).to_bits() as i64;
        let ulps = (twin::portable_exp(x).to_bits() as i64 - want).abs();
        worst = worst.max(ulps);
        exact += u64::from(ulps == 0);
        total += 1;
    };
    for bits in (0..=(-87.3f32).to_bits() - (-0.0f32).to_bits()).step_by(61) {
        check(f32::from_bits((-0.0f32).to_bits() + bits));
    }
    for bits in (0..=88.7f32.to_bits()).step_by(61) {
        check(f32::from_bits(bits));
    }
    println!(
        "portable_exp: {total} inputs, max error {worst} ulp, {:.2}% correctly rounded",
        100.0 * exact as f64 / total as f64
    );
    assert!(worst <= 1, "{worst} ulp");
    assert_eq!(twin::portable_exp(0.0), 1.0);
    assert_eq!(twin::portable_exp(-88.0), 0.0);
    assert!(twin::portable_exp(f32::NAN).is_nan());
    assert!(twin::portable_exp(88.72283).is_finite());
}

/// Worst per-tensor ‖a − b‖₂/‖b‖₂ (with the tensor) and that of all weights
/// together, quietly.
fn relative_errors(a: &Model, b: &Model) -> (f64, String, f64) {
    let mut worst = (0.0f64, String::new());
    let (mut all_diff, mut all_norm) = (0.0f64, 0.0f64);
    for ((name, x), (_, y)) in params(a).into_iter().zip(params(b)) {
        let (diff, norm) = x.iter().zip(&y).fold((0.0f64, 0.0f64), |(d, n), (p, q)| {
            (d + ((p - q) as f64).powi(2), n + (*q as f64).powi(2))
        });
        (all_diff, all_norm) = (all_diff + diff, all_norm + norm);
        let rel = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
        if rel > worst.0 || rel.is_nan() {
            worst = (rel, name);
        }
    }
    (worst.0, worst.1, (all_diff / all_norm).sqrt())
}

/// Where GPU and CPU training part: the training loop's windows (the
/// simulated sample, seed 3) stepped in lockstep on the GPU trainer and the
/// CPU engine from the same weights. After steps 1, 5, 10 and 50 it prints
/// how far the weights are apart, and the gradients both compute at the
/// same weights (the CPU run's) for the next window: the rounding of one
/// step, separated from what earlier steps accumulated. Asserted: those
/// gradients and the weights agree within the kernels' tolerance
/// (1e-5 + 1e-4·|x|) at each of those steps, and after one step the weights
/// differ by at most 2·lr (each Adam step moves a weight by at most about lr).
#[test]
fn gpu_training_divergence_per_step() {
    let test = "gpu_training_divergence_per_step";
    let Some(gpu) = backend_or_skip(test, GpuOptions::default()) else {
        return;
    };
    let (data, model, _dir) = simulated_training();
    let window = WindowSettings {
        size: 60.0,
        supervision_fraction: 0.5,
        random_negatives: 1,
    };
    let (steps, lr0) = (50, 5e-3);
    let config = AdamConfig::default();
    let mut rng = stream(SEED, streams::WINDOWS);
    let mut scratch = Default::default();
    let mut trainer = GpuTrainer::with_backend(gpu, &model).with_adam(config);
    let mut cpu = CpuEngine::new(model.clone(), config);
    // A second device for the gradients at the CPU run's weights.
    let mut probe_gpu = backend_or_skip(test, GpuOptions::default());
    let mut sign_flips = 0;
    for step in 0..steps {
        let batch = data.draw(&window, &mut rng, &mut scratch).unwrap();
        let lr = learning_rate(lr0, step, steps);
        let before = cpu.model().unwrap();
        trainer.step(&batch.graph, &batch.pairs, lr).unwrap();
        cpu.step(&batch, lr).unwrap();
        let done = step + 1;
        if done == 1 {
            // Weights the two first updates move in opposite directions.
            let (on_gpu, on_cpu) = (trainer.model().unwrap(), cpu.model().unwrap());
            for (((_, g), (_, c)), (_, w)) in params(&on_gpu)
                .into_iter()
                .zip(params(&on_cpu))
                .zip(params(&before))
            {
                sign_flips += g
                    .iter()
                    .zip(&c)
                    .zip(&w)
                    .filter(|((g, c), w)| (*g - *w) * (*c - *w) < 0.0)
                    .count();
            }
            let (err, name, _) = max_weight_error(&on_gpu, &on_cpu);
            println!("{test}: after step 1: {sign_flips} weights stepped in opposite directions; max |Δw| {err:.3e} ({name}), lr {lr:e}");
            assert!(err <= 2.0 * lr * 1.001, "step 1: {name} {err} apart");
        }
        if [1, 5, 10, 50].contains(&done) {
            let (on_gpu, on_cpu) = (trainer.model().unwrap(), cpu.model().unwrap());
            let (worst, name, all) = relative_errors(&on_gpu, &on_cpu);
            // The next window's gradient at the CPU run's weights, on both.
            let next = data.draw(&window, &mut rng.clone(), &mut scratch).unwrap();
            let (cpu_loss, cpu_grad) = cpu.loss_and_grad(&next).unwrap();
            let mut probe = GpuTrainer::with_backend(probe_gpu.take().unwrap(), &on_cpu);
            let (gpu_loss, gpu_grad) = probe.loss_and_grad(&next.graph, &next.pairs).unwrap();
            probe_gpu = Some(probe.into_backend());
            let (g_worst, g_name, g_all) = relative_errors(&gpu_grad, &cpu_grad);
            let (g_max, g_max_name, _) = max_weight_error(&gpu_grad, &cpu_grad);
            println!(
                "{test}: after step {done}: weights GPU vs CPU: worst tensor {worst:.3e} ({name}), all {all:.3e}; \
                 gradient at the same weights: worst tensor {g_worst:.3e} ({g_name}), all {g_all:.3e}, max |Δ| {g_max:.3e} ({g_max_name}); loss {gpu_loss} vs {cpu_loss}"
            );
            for ((name, g), (_, c)) in params(&gpu_grad).into_iter().zip(params(&cpu_grad)) {
                all_close(&format!("step {done}: gradient of {name}"), &g, &c, TOL);
            }
            for ((name, g), (_, c)) in params(&on_gpu).into_iter().zip(params(&on_cpu)) {
                all_close(&format!("step {done}: {name}"), &g, &c, TOL);
            }
        }
    }
}

/// `seggpu train --backend gpu` (lavapipe here): two runs give the same
/// bytes; the log names the adapter and the weights file says `gpu`.
/// `--backend cpu` says `cpu`. `segment --train --backend gpu` trains on
/// the GPU too.
#[test]
fn train_backend_gpu_on_the_command_line() {
    let test = "train_backend_gpu_on_the_command_line";
    if backend_or_skip(test, GpuOptions::default()).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    simulate(
        &input,
        &SimulateOptions {
            cells: 40,
            seed: 5,
            ..SimulateOptions::default()
        },
    )
    .unwrap();
    let train = |name: &str, backend: &str| {
        let out = dir.path().join(name);
        let mut args = vec![
            "train",
            "--xenium",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--backend",
            backend,
        ];
        args.extend_from_slice(QUICK_TRAIN);
        assert_success(&seggpu().args(&args).output().unwrap());
        let provenance: serde_json::Value =
            serde_json::from_str(&TensorFile::open(&out).unwrap().metadata()["seggpu.training"])
                .unwrap();
        let log: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.with_extension("training.json")).unwrap())
                .unwrap();
        (
            std::fs::read(&out).unwrap(),
            provenance["engine"].as_str().unwrap().to_owned(),
            log["engine"].as_str().unwrap().to_owned(),
        )
    };
    let (a, kind, engine) = train("a.safetensors", "gpu");
    println!("{test}: --backend gpu: {engine}");
    assert_eq!(kind, "gpu");
    assert!(engine.starts_with("gpu: "), "{engine}");
    let (b, _, _) = train("b.safetensors", "gpu");
    assert!(a == b, "two GPU runs differ");
    let (_, kind, engine) = train("c.safetensors", "cpu");
    assert_eq!(kind, "cpu");
    assert!(engine.starts_with("cpu"), "{engine}");

    let out = dir.path().join("segmented");
    assert_success(&segment_quick_train(&input, &out, "gpu"));
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("training_log.json")).unwrap()).unwrap();
    let engine = log["engine"].as_str().unwrap();
    assert!(engine.starts_with("gpu: "), "{engine}");
}
