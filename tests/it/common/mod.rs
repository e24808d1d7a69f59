//! Shared helpers for the integration tests: paths of the files the
//! repository ships (golden fixtures made by
//! `tools/reference/make_fixtures.py`, the real crops in `tests/data/`), the
//! `seggpu` binary, and the one tolerance check every numeric comparison uses.

pub mod segment;
pub mod tables;
pub mod train_fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use seggpu::backend::{BestMatches, Embeddings};
use seggpu::graph::TileGraph;
use seggpu::model::Model;
use seggpu::tensorfile::TensorFile;

/// The parameters `seggpu train` uses with no flags and a model without
/// stored defaults: the built-in graph, tile size and fixed score cut, no
/// fragments.
pub fn training_params() -> seggpu::pipeline::SegmentParams {
    use seggpu::defaults;
    seggpu::pipeline::SegmentParams {
        graph: seggpu::graph::build::GraphParams {
            k_tx: defaults::K_TX,
            dist_tx: Some(defaults::DIST_TX),
            k_bd: defaults::K_BD,
            dist_bd: defaults::DIST_BD,
        },
        score_cut: seggpu::pipeline::ScoreCut::Fixed(defaults::SCORE_CUT),
        fragments: None,
        unknown_genes: seggpu::pipeline::UnknownGenes::Error,
        tile_size: defaults::TILE_SIZE,
        margin: None,
    }
}

/// Fixture names in `tests/fixtures/` (`<name>.model.safetensors` + `<name>.graph.safetensors`).
pub const FIXTURES: &[&str] = &["dev", "small", "small_zero"];

/// A file or folder of this repository; panics naming it when it is absent,
/// so that a test never passes without its data.
fn repository_path(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(
        path.exists(),
        "test data {} is missing (tests/data/README.md and tests/fixtures/ say what belongs there)",
        path.display()
    );
    path
}

/// Path of a file in `tests/fixtures/`.
pub fn fixture_path(file: &str) -> PathBuf {
    repository_path(&format!("tests/fixtures/{file}"))
}

/// Path of a real vendor crop or model in `tests/data/` (see its README).
pub fn data_path(relative: &str) -> PathBuf {
    repository_path(&format!("tests/data/{relative}"))
}

/// The built-in demo model.
pub fn demo_model() -> PathBuf {
    repository_path("src/demo/demo_model.safetensors")
}

/// Writes `contents` to `dir/name` and returns that path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// A transcripts CSV of one row, for tests about the nuclei (resolving the
/// input needs both files).
pub fn one_transcript_csv(dir: &Path) -> PathBuf {
    write_file(dir, "t.csv", "x_location,y_location,feature_name\n1,1,A\n")
}

/// A vertex table of one triangular nucleus `a`, for tests about the
/// transcripts.
pub fn one_nucleus_csv(dir: &Path) -> PathBuf {
    write_file(
        dir,
        "nuclei.csv",
        "cell_id,vertex_x,vertex_y\na,0,0\na,2,0\na,2,2\n",
    )
}

/// The resolved input of `preset` over two files; CosMx at 1 µm per pixel,
/// so that positions stay as written.
pub fn input_spec(
    preset: seggpu::io::Preset,
    transcripts: &Path,
    boundaries: &Path,
) -> seggpu::io::InputSpec {
    seggpu::io::InputArgs {
        preset: Some(preset),
        transcripts: Some(transcripts.to_path_buf()),
        boundaries: Some(boundaries.to_path_buf()),
        pixel_size: (preset == seggpu::io::Preset::Cosmx).then_some(1.0),
        ..seggpu::io::InputArgs::default()
    }
    .resolve()
    .unwrap_or_else(|e| panic!("{}: {e:#}", transcripts.display()))
}

/// A simulated Xenium folder `dir/name` of `cells` cells (`seggpu simulate`).
pub fn simulated_xenium(dir: &Path, name: &str, cells: usize) -> PathBuf {
    let input = dir.join(name);
    let run = seggpu()
        .args(["simulate", "--out"])
        .arg(&input)
        .args(["--cells", &cells.to_string(), "--seed", "11", "--quiet"])
        .output()
        .expect("run seggpu simulate");
    assert_success(&run);
    input
}

/// The `seggpu` binary of this build.
pub fn seggpu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seggpu"))
}

/// The seggpu binary under a file size limit of `blocks` 512-byte blocks
/// (`ulimit -f`), so that the first large write fails (EFBIG) as on a full
/// disk; SIGXFSZ is ignored so that the write returns the error.
#[cfg(unix)]
pub fn seggpu_with_file_limit(blocks: u32) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            r#"trap '' XFSZ; ulimit -f {blocks}; exec "$0" "$@""#
        ))
        .arg(env!("CARGO_BIN_EXE_seggpu"));
    command
}

/// Asserts that a run succeeded, showing its stderr where it did not;
/// returns the stderr.
pub fn assert_success(run: &Output) -> String {
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    stderr
}

/// Asserts that a run failed with `expect` in its stderr.
pub fn assert_failure(run: &Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("stderr: {stderr}");
    assert!(!run.status.success(), "should fail");
    assert!(
        stderr.contains(expect),
        "error should mention `{expect}`: {stderr}"
    );
}

/// `seggpu forward` on fixture `name`, writing `out`; the caller adds flags.
pub fn forward_command(name: &str, out: &Path) -> Command {
    let mut command = seggpu();
    command
        .arg("forward")
        .arg("--graph")
        .arg(fixture_path(&format!("{name}.graph.safetensors")))
        .arg("--model")
        .arg(fixture_path(&format!("{name}.model.safetensors")))
        .arg("--out")
        .arg(out);
    command
}

/// Elementwise tolerance `|actual − expected| ≤ atol + rtol·|expected|`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    /// Bit for bit (NaN equals NaN).
    pub const EXACT: Self = Self::new(0.0, 0.0);
    /// f32 arithmetic in another order, and F32 weights against PyG: the
    /// core engine's 1e-5 + 1e-4·|b|.
    pub const F32: Self = Self::new(1e-5, 1e-4);
    /// Half-precision weights against PyG: 1e-5 + 1e-2·|b|.
    pub const HALF_WEIGHTS: Self = Self::new(1e-5, 1e-2);

    pub const fn new(atol: f64, rtol: f64) -> Self {
        Self { atol, rtol }
    }

    /// An absolute tolerance only.
    pub const fn abs(atol: f64) -> Self {
        Self::new(atol, 0.0)
    }
}

/// Asserts `actual` equals `expected` within `tol` elementwise (NaN equals
/// only NaN) and prints the largest absolute error. On failure it panics
/// naming `label`, the index of the element furthest outside the tolerance
/// (largest error relative to what it is allowed), both values and the
/// tolerance.
pub fn all_close<T: Copy + Into<f64> + std::fmt::Display>(
    label: &str,
    actual: &[T],
    expected: &[T],
    tol: Tolerance,
) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{label}: {} values, expected {}",
        actual.len(),
        expected.len()
    );
    let (mut max_err, mut outside) = (0.0f64, 0usize);
    // (index, error / allowed, error, allowed) of the element furthest outside.
    let mut worst: Option<(usize, f64, f64, f64)> = None;
    for (i, (&a, &b)) in actual.iter().zip(expected).enumerate() {
        let (a, b): (f64, f64) = (a.into(), b.into());
        if a.is_nan() && b.is_nan() {
            continue;
        }
        // Equal infinities are equal; NaN or an infinity against anything
        // else is the largest error there is.
        let err = if a == b {
            0.0
        } else if a.is_finite() && b.is_finite() {
            (a - b).abs()
        } else {
            f64::INFINITY
        };
        let allowed = tol.atol + tol.rtol * b.abs();
        outside += usize::from(err > allowed || err.is_infinite());
        max_err = max_err.max(err);
        let ratio = if err == 0.0 {
            0.0
        } else if err.is_infinite() || allowed == 0.0 {
            f64::INFINITY
        } else {
            err / allowed
        };
        if worst.is_none_or(|(_, r, e, _)| (ratio, err) > (r, e)) {
            worst = Some((i, ratio, err, allowed));
        }
    }
    let tolerance = format!("{:e} + {:e}·|expected|", tol.atol, tol.rtol);
    let place = |(i, _, err, allowed): (usize, f64, f64, f64)| {
        format!(
            "[{i}]: got {}, expected {} (|err| {err:e}, allowed {allowed:e})",
            actual[i], expected[i]
        )
    };
    println!(
        "{label}: max |err| = {max_err:.3e} over {} values (tolerance {tolerance}); tightest at {}",
        actual.len(),
        worst.map_or("-".to_owned(), place)
    );
    if outside > 0 {
        panic!(
            "{label}: {outside} of {} values outside {tolerance}; furthest at {}",
            actual.len(),
            worst.map_or("-".to_owned(), place)
        );
    }
}

/// [`all_close`] for one value.
pub fn assert_close(label: &str, actual: f64, expected: f64, atol: f64) {
    all_close(label, &[actual], &[expected], Tolerance::abs(atol));
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

    /// The values of an f32 tensor of the PyG results.
    pub fn f32(&self, tensor: &str) -> Vec<f32> {
        self.expected
            .f32(tensor)
            .unwrap_or_else(|e| panic!("fixture {}: {e}", self.name))
            .1
    }

    /// The values of an i64 tensor of the PyG results.
    pub fn i64(&self, tensor: &str) -> Vec<i64> {
        self.expected
            .i64(tensor)
            .unwrap_or_else(|e| panic!("fixture {}: {e}", self.name))
            .1
    }

    /// The tolerance against PyG: looser for half-precision weights.
    pub fn tolerance(&self) -> Tolerance {
        if self.model.dtype == "F32" {
            Tolerance::F32
        } else {
            Tolerance::HALF_WEIGHTS
        }
    }

    /// Checks the final embeddings, and every layer `out` kept, against PyG's.
    pub fn check_embeddings(&self, label: &str, out: &Embeddings, tol: Tolerance) {
        for (l, act) in out.layers.iter().enumerate() {
            for (what, got) in [("h_tx", &act.tx), ("h_bd", &act.bd)] {
                let expected = self.f32(&format!("expected.{what}.{l}"));
                all_close(&format!("{label} {what}.{l}"), got, &expected, tol);
            }
        }
        for (what, got) in [("z_tx", &out.z_tx), ("z_bd", &out.z_bd)] {
            let expected = self.f32(&format!("expected.{what}"));
            all_close(&format!("{label} {what}"), got, &expected, tol);
        }
    }

    /// Asserts best indices equal PyG's and checks best scores within tolerance.
    pub fn check_best(&self, label: &str, best: &BestMatches, tol: Tolerance) {
        let expected_index = self.i64("expected.best_index");
        let mismatches: Vec<usize> = (0..expected_index.len())
            .filter(|&i| i64::from(best.index[i]) != expected_index[i])
            .collect();
        assert!(
            mismatches.is_empty(),
            "{label}: best index differs from PyG at transcripts {mismatches:?}"
        );
        all_close(
            &format!("{label} best_score"),
            &best.score_or_nan(),
            &self.f32("expected.best_score"),
            tol,
        );
    }

    /// Checks a file written by `seggpu forward` against PyG's results.
    pub fn check_forward_file(&self, label: &str, path: &Path) {
        let result = TensorFile::open(path).unwrap_or_else(|e| panic!("{label}: {e}"));
        for what in ["z_tx", "best_score"] {
            let (_, got) = result.f32(what).unwrap();
            let expected = self.f32(&format!("expected.{what}"));
            all_close(
                &format!("{label} {what}"),
                &got,
                &expected,
                self.tolerance(),
            );
        }
        assert_eq!(
            result.i64("best_index").unwrap().1,
            self.i64("expected.best_index"),
            "{label}: best indices"
        );
    }
}

/// Deterministic pseudo-random numbers (xorshift64), the same everywhere.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..below`.
    pub fn below(&mut self, below: usize) -> usize {
        ((self.next_u64() >> 11) % below as u64) as usize
    }

    /// Uniform in [−1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` values uniform in [−1, 1).
    pub fn units(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut p: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

/// `seggpu segment --xenium INPUT --out OUT --train --backend BACKEND -q`
/// with [`QUICK_TRAIN`]'s flags.
pub fn segment_quick_train(input: &Path, out: &Path, backend: &str) -> Output {
    let mut args = vec![
        "segment",
        "--xenium",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--train",
        "--backend",
        backend,
        "-q",
    ];
    args.extend_from_slice(QUICK_TRAIN);
    seggpu().args(&args).output().expect("run seggpu")
}

/// `train` flags for tests: a small architecture, few steps.
pub const QUICK_TRAIN: &[&str] = &[
    "--steps",
    "6",
    "--eval-every",
    "3",
    "--emb",
    "8",
    "--hidden",
    "8",
    "--heads",
    "2",
    "--mid-layers",
    "1",
    "--out-channels",
    "8",
    "--window",
    "60",
];
