//! The CPU backend against PyTorch Geometric on every golden fixture.

mod common;

use common::{check, Fixture, FIXTURES};
use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::Backend;

/// Tolerances of the core-engine issue: F32 weights 1e-5 + 1e-4·|b|; half weights 1e-2 relative.
fn tolerance(fixture: &Fixture) -> (f32, f32) {
    if fixture.half_weights() {
        (1e-5, 1e-2)
    } else {
        (1e-5, 1e-4)
    }
}

#[test]
fn every_layer_matches_pyg() {
    for name in FIXTURES {
        let fx = Fixture::load(name);
        let (atol, rtol) = tolerance(&fx);
        let out = CpuBackend::new()
            .forward(&fx.model, &fx.graph, true)
            .unwrap();
        assert_eq!(out.layers.len(), fx.model.arch.layers() + 1);
        for (l, act) in out.layers.iter().enumerate() {
            let (shape, tx) = fx.f32(&format!("expected.h_tx.{l}"));
            check(
                &format!("{name} h_tx.{l}"),
                &act.tx,
                &tx,
                shape[1],
                atol,
                rtol,
            );
            let (shape, bd) = fx.f32(&format!("expected.h_bd.{l}"));
            check(
                &format!("{name} h_bd.{l}"),
                &act.bd,
                &bd,
                shape[1],
                atol,
                rtol,
            );
        }
        let (_, z_tx) = fx.f32("expected.z_tx");
        check(
            &format!("{name} z_tx"),
            &out.z_tx,
            &z_tx,
            out.dim,
            atol,
            rtol,
        );
        let (_, z_bd) = fx.f32("expected.z_bd");
        check(
            &format!("{name} z_bd"),
            &out.z_bd,
            &z_bd,
            out.dim,
            atol,
            rtol,
        );
    }
}

#[test]
fn best_nucleus_matches_pyg() {
    for name in FIXTURES {
        let fx = Fixture::load(name);
        let (atol, rtol) = tolerance(&fx);
        let mut cpu = CpuBackend::new();
        let out = cpu.forward(&fx.model, &fx.graph, false).unwrap();
        let rf = fx
            .graph
            .receptive_field
            .as_ref()
            .expect("fixture has rf_index");
        let best = cpu.score(&out, rf).unwrap();
        fx.check_best(name, &best, atol, rtol);
        let score = best.score_or_nan();
        let no_candidate = best.index.iter().filter(|&&i| i < 0).count();
        let exact_zero = score.iter().filter(|&&s| s == 0.0).count();
        println!("{name}: {} transcripts, {no_candidate} without candidate, {exact_zero} with best score exactly 0", score.len());
    }
}

/// `score_tile` is the forward pass then scoring, and needs a receptive field.
#[test]
fn score_tile_is_forward_then_score() {
    for name in FIXTURES {
        let fx = Fixture::load(name);
        let (atol, rtol) = tolerance(&fx);
        let mut cpu = CpuBackend::new();
        let tile = cpu.score_tile(&fx.model, &fx.graph).unwrap();
        let out = cpu.forward(&fx.model, &fx.graph, false).unwrap();
        let rf = fx.graph.receptive_field.as_ref().unwrap();
        assert_eq!(tile, cpu.score(&out, rf).unwrap(), "{name}");
        fx.check_best(&format!("{name} score_tile"), &tile, atol, rtol);
    }
    let mut graph = Fixture::load("small").graph;
    graph.receptive_field = None;
    let model = Fixture::load("small").model;
    let err = CpuBackend::new().score_tile(&model, &graph).unwrap_err();
    assert!(err.to_string().contains("receptive field"), "{err}");
}
