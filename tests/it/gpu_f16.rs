//! The opt-in f16 path (`--precision f16`): activations stored as f16,
//! arithmetic in f32. Runs only where the adapter has `SHADER_F16` and
//! `SEGGPU_F16` is not `off`; its tolerance is looser: 1e-3 absolute + 1e-2
//! relative against PyTorch Geometric.

use crate::common::{all_close, Fixture, Tolerance, FIXTURES};
use seggpu::backend::gpu::test_support::backend_or_skip;
use seggpu::backend::gpu::{f16_disabled_by_env, GpuOptions, Precision};
use seggpu::backend::Backend;

const TOL: Tolerance = Tolerance::new(1e-3, 1e-2);

#[test]
fn gpu_f16_forward_matches_pyg_loosely() {
    if f16_disabled_by_env() {
        println!("gpu_f16_forward_matches_pyg_loosely: SKIPPED: SEGGPU_F16=off");
        return;
    }
    let options = GpuOptions {
        precision: Precision::F16,
        ..GpuOptions::default()
    };
    let Some(mut gpu) = backend_or_skip("gpu_f16_forward_matches_pyg_loosely", options) else {
        return;
    };
    if gpu.precision() != Precision::F16 {
        println!(
            "gpu_f16_forward_matches_pyg_loosely: SKIPPED: adapter {} has no SHADER_F16",
            gpu.adapter().name
        );
        return;
    }
    println!("{}", gpu.describe());
    for name in FIXTURES {
        let fx = Fixture::load(name);
        let out = gpu.forward(&fx.model, &fx.graph, true).unwrap();
        fx.check_embeddings(&format!("{name} f16"), &out, TOL);

        let rf = fx.graph.receptive_field.as_ref().unwrap();
        let best = gpu.score(&out, rf).unwrap();
        all_close(
            &format!("{name} f16 best_score"),
            &best.score_or_nan(),
            &fx.f32("expected.best_score"),
            TOL,
        );
        let expected_index = fx.i64("expected.best_index");
        let scores = fx.f32("expected.scores");
        let k = rf.k;
        // A differing best nucleus is acceptable only where PyG's two best
        // candidates are closer than the tolerance.
        let mut differ = 0;
        for i in 0..expected_index.len() {
            if i64::from(best.index[i]) == expected_index[i] {
                continue;
            }
            differ += 1;
            let mut row: Vec<f32> = scores[i * k..(i + 1) * k].to_vec();
            row.sort_by(|a, b| b.total_cmp(a));
            let gap = row[0] - row[1];
            assert!(
                f64::from(gap) <= TOL.atol + TOL.rtol * f64::from(row[0].abs()),
                "{name}: f16 best index of transcript {i} is {} but PyG's {} wins by {gap}",
                best.index[i],
                expected_index[i]
            );
        }
        println!(
            "{name}: f16 best index differs from PyG on {differ} of {} transcripts (near-ties only)",
            expected_index.len()
        );
    }
}
