//! The CPU backend against PyTorch Geometric on every golden fixture, with
//! the core engine's tolerance (`Fixture::tolerance`): F32 weights
//! 1e-5 + 1e-4·|b|; half weights 1e-2 relative.

use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::Backend;

use crate::common::{Fixture, FIXTURES};

#[test]
fn every_layer_matches_pyg() {
    for name in FIXTURES {
        let fx = Fixture::load(name);
        let out = CpuBackend::new()
            .forward(&fx.model, &fx.graph, true)
            .unwrap();
        assert_eq!(out.layers.len(), fx.model.arch.layers() + 1);
        fx.check_embeddings(name, &out, fx.tolerance());
    }
}

#[test]
fn best_nucleus_matches_pyg() {
    for name in FIXTURES {
        let fx = Fixture::load(name);
        let mut cpu = CpuBackend::new();
        let out = cpu.forward(&fx.model, &fx.graph, false).unwrap();
        let rf = fx
            .graph
            .receptive_field
            .as_ref()
            .expect("fixture has rf_index");
        let best = cpu.score(&out, rf).unwrap();
        fx.check_best(name, &best, fx.tolerance());
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
        let mut cpu = CpuBackend::new();
        let tile = cpu.score_tile(&fx.model, &fx.graph).unwrap();
        let out = cpu.forward(&fx.model, &fx.graph, false).unwrap();
        let rf = fx.graph.receptive_field.as_ref().unwrap();
        assert_eq!(tile, cpu.score(&out, rf).unwrap(), "{name}");
        fx.check_best(&format!("{name} score_tile"), &tile, fx.tolerance());
    }
    let mut graph = Fixture::load("small").graph;
    graph.receptive_field = None;
    let model = Fixture::load("small").model;
    let err = CpuBackend::new().score_tile(&model, &graph).unwrap_err();
    assert!(err.to_string().contains("receptive field"), "{err}");
}
