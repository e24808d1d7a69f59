//! Shared helpers for the integration tests: golden fixtures made by
//! `tools/reference/make_fixtures.py` and error reports.
#![allow(dead_code)]

use std::path::PathBuf;

use seggpu::graph::TileGraph;
use seggpu::model::Model;
use seggpu::tensorfile::TensorFile;

/// Fixture names in `tests/fixtures/` (`<name>.model.safetensors` + `<name>.graph.safetensors`).
pub const FIXTURES: &[&str] = &["dev", "small", "small_zero"];

/// Path of a file in `tests/fixtures/`.
pub fn fixture_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file)
}

/// A golden fixture: the model, its graph and the PyG results.
pub struct Fixture {
    pub name: String,
    pub model: Model,
    pub graph: TileGraph,
    pub expected: TensorFile,
}

impl Fixture {
    pub fn load(name: &str) -> Self {
        let model = Model::load(&fixture_path(&format!("{name}.model.safetensors")))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        let expected = TensorFile::open(&fixture_path(&format!("{name}.graph.safetensors")))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        let graph = TileGraph::from_tensor_file(&expected, model.arch.vocab)
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        Self {
            name: name.to_owned(),
            model,
            graph,
            expected,
        }
    }

    pub fn f32(&self, tensor: &str) -> (Vec<usize>, Vec<f32>) {
        self.expected
            .f32(tensor)
            .unwrap_or_else(|e| panic!("fixture {}: {e}", self.name))
    }

    pub fn i64(&self, tensor: &str) -> Vec<i64> {
        self.expected
            .i64(tensor)
            .unwrap_or_else(|e| panic!("fixture {}: {e}", self.name))
            .1
    }

    /// Asserts best indices equal PyG's and checks best scores within tolerance.
    pub fn check_best(
        &self,
        label: &str,
        best: &seggpu::backend::BestMatches,
        atol: f32,
        rtol: f32,
    ) {
        let expected_index = self.i64("expected.best_index");
        let mismatches: Vec<usize> = (0..expected_index.len())
            .filter(|&i| i64::from(best.index[i]) != expected_index[i])
            .collect();
        assert!(
            mismatches.is_empty(),
            "{label}: best index differs from PyG at transcripts {mismatches:?}"
        );
        let (_, expected_score) = self.f32("expected.best_score");
        check(
            &format!("{label} best_score"),
            &best.score_or_nan(),
            &expected_score,
            1,
            atol,
            rtol,
        );
    }

    /// Whether the stored weights are half precision (looser tolerance).
    pub fn half_weights(&self) -> bool {
        self.model.dtype != "F32"
    }
}

/// Largest violation of `|a − b| ≤ atol + rtol·|b|`, reported with its place.
pub struct Comparison {
    pub max_abs: f32,
    pub worst_index: usize,
    pub worst_actual: f32,
    pub worst_expected: f32,
    pub ok: bool,
}

/// Compares `actual` with `expected` elementwise (NaN equals NaN).
pub fn compare(actual: &[f32], expected: &[f32], atol: f32, rtol: f32) -> Comparison {
    assert_eq!(actual.len(), expected.len(), "length differs");
    let mut c = Comparison {
        max_abs: 0.0,
        worst_index: 0,
        worst_actual: 0.0,
        worst_expected: 0.0,
        ok: true,
    };
    let mut worst_ratio = -1.0f32;
    for (i, (&a, &b)) in actual.iter().zip(expected).enumerate() {
        if a.is_nan() && b.is_nan() {
            continue;
        }
        let err = (a - b).abs();
        let allowed = atol + rtol * b.abs();
        if err.is_nan() || err > allowed {
            c.ok = false;
        }
        let ratio = if err.is_nan() {
            f32::INFINITY
        } else {
            err / allowed
        };
        if ratio > worst_ratio {
            worst_ratio = ratio;
            c.worst_index = i;
            c.worst_actual = a;
            c.worst_expected = b;
        }
        if err > c.max_abs || err.is_nan() {
            c.max_abs = err;
        }
    }
    c
}

/// Prints and asserts a comparison of a `[rows, width]` tensor.
pub fn check(label: &str, actual: &[f32], expected: &[f32], width: usize, atol: f32, rtol: f32) {
    let c = compare(actual, expected, atol, rtol);
    let (row, col) = (c.worst_index / width.max(1), c.worst_index % width.max(1));
    println!(
        "{label}: max |err| = {:.3e}; tightest at [{row}, {col}]: got {} expected {} (tol {atol:e} + {rtol:e}·|b|)",
        c.max_abs, c.worst_actual, c.worst_expected
    );
    assert!(
        c.ok,
        "{label}: outside tolerance at [{row}, {col}]: got {} expected {}",
        c.worst_actual, c.worst_expected
    );
}
