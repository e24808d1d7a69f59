//! Building the next tile's graphs while the backend scores the current one
//! (`segment --overlap`, on by default for GPU backends) changes no result, on the CPU and on a
//! GPU; an error in a tile, of the backend or of the tile source, stops the
//! run at that tile without hanging.

use std::process::Output;

use anyhow::{anyhow, Result};
use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::gpu::test_support::backend_or_skip;
use seggpu::backend::gpu::GpuOptions;
use seggpu::backend::{Backend, BestMatches, EdgeSimilarity, Embeddings, FragmentSlots};
use seggpu::graph::build::GraphParams;
use seggpu::graph::{ReceptiveField, TileGraph};
use seggpu::io::{InputArgs, Nuclei};
use seggpu::model::Model;
use seggpu::pipeline::prepare::{self, Prepared};
use seggpu::pipeline::progress::Progress;
use seggpu::pipeline::score_tiles::{
    self, build_tile, Overlap, ScoreClock, TileScores, TileSource,
};
use seggpu::pipeline::{FragmentSettings, ScoreCut, SegmentParams, UnknownGenes};
use seggpu::tiles;

use crate::common::{self, assert_failure, assert_success, seggpu};

/// A simulated sample prepared for scoring, cut into small tiles.
struct Sample {
    prepared: Prepared,
    nuclei: Nuclei,
    model: Model,
    graph: GraphParams,
}

/// `cells` simulated cells (about 14 µm apart) in 40 µm tiles.
fn sample(name: &str, cells: usize) -> Sample {
    let dir = tempfile::tempdir().unwrap();
    let folder = common::simulated_xenium(dir.path(), name, cells);
    let model = Model::load(&common::demo_model()).unwrap();
    let spec = InputArgs {
        xenium: Some(folder),
        ..InputArgs::default()
    }
    .resolve()
    .unwrap();
    let mut transcripts = seggpu::io::read_transcripts(&spec).unwrap();
    let nuclei = seggpu::io::read_nuclei(&spec, model.bd_features).unwrap();
    seggpu::io::check_membership(&mut transcripts, &nuclei, &spec).unwrap();
    let params = SegmentParams {
        graph: GraphParams {
            k_tx: 5,
            dist_tx: Some(5.0),
            k_bd: 4,
            dist_bd: 12.0,
        },
        score_cut: ScoreCut::Fixed(0.5),
        fragments: Some(FragmentSettings {
            cut: None,
            min_transcripts: 5,
        }),
        unknown_genes: UnknownGenes::Error,
        tile_size: 40.0,
        margin: None,
    };
    let prepared = prepare::run(&mut transcripts, &nuclei, &model, &params).unwrap();
    assert!(
        prepared.grid.len() >= 4,
        "{name}: {} tiles, the test needs several",
        prepared.grid.len()
    );
    Sample {
        prepared,
        nuclei,
        model,
        graph: params.graph,
    }
}

fn scores(s: &Sample, backend: &mut dyn Backend, overlap: Overlap) -> TileScores {
    score_tiles::run(
        &s.prepared,
        &s.nuclei,
        &s.model,
        &s.graph,
        backend,
        &Progress { quiet: true },
        overlap,
    )
    .unwrap()
}

/// Scores and nuclei equal bit for bit, and enough transcripts matched for
/// the comparison to mean something.
fn assert_identical(label: &str, overlapped: &TileScores, sequential: &TileScores) {
    let n = sequential.best_index.len();
    let matched = sequential.best_index.iter().filter(|&&i| i >= 0).count();
    println!("{label}: {matched} of {n} kept transcripts have a candidate");
    assert!(matched > n / 2, "{label}: only {matched} of {n} matched");
    assert_eq!(overlapped.best_index, sequential.best_index, "{label}");
    let differ = (0..n)
        .filter(|&i| overlapped.best_score[i].to_bits() != sequential.best_score[i].to_bits())
        .count();
    assert_eq!(differ, 0, "{label}: {differ} scores differ");
}

#[test]
fn overlap_gives_the_sequential_scores_on_the_cpu() {
    let s = sample("cpu", 200);
    let sequential = scores(&s, &mut CpuBackend::new(), Overlap::Off);
    let overlapped = scores(&s, &mut CpuBackend::new(), Overlap::On);
    assert_identical("cpu", &overlapped, &sequential);
    // One pool thread (`--threads 1`): the build task and the kernels take
    // turns on it, with the same result and no deadlock.
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let one_thread = single.install(|| scores(&s, &mut CpuBackend::new(), Overlap::On));
    assert_identical("cpu, one thread", &one_thread, &sequential);
}

#[test]
fn overlap_gives_the_sequential_scores_on_the_gpu() {
    let test = "overlap_gives_the_sequential_scores_on_the_gpu";
    let Some(mut gpu) = backend_or_skip(test, GpuOptions::default()) else {
        return;
    };
    // Few cells: lavapipe computes every tile's margin on two CPU cores.
    let s = sample("gpu", 60);
    let sequential = scores(&s, &mut gpu, Overlap::Off);
    let overlapped = scores(&s, &mut gpu, Overlap::On);
    assert_identical("gpu", &overlapped, &sequential);
}

/// The CPU backend, failing at its `fail_at`-th tile.
struct FailingBackend {
    inner: CpuBackend,
    tiles: usize,
    fail_at: usize,
}

impl Backend for FailingBackend {
    fn describe(&self) -> String {
        "failing cpu".into()
    }

    fn forward(&mut self, model: &Model, graph: &TileGraph, keep: bool) -> Result<Embeddings> {
        self.inner.forward(model, graph, keep)
    }

    fn score(&mut self, embeddings: &Embeddings, rf: &ReceptiveField) -> Result<BestMatches> {
        self.inner.score(embeddings, rf)
    }

    fn score_tile(&mut self, model: &Model, graph: &TileGraph) -> Result<BestMatches> {
        self.tiles += 1;
        if self.tiles == self.fail_at {
            return Err(anyhow!("device lost at tile {}", self.tiles));
        }
        self.inner.score_tile(model, graph)
    }

    fn fragment_similarity(&mut self, slots: FragmentSlots) -> Result<EdgeSimilarity> {
        self.inner.fragment_similarity(slots)
    }

    fn components(&mut self, n: usize, edges: &[[u32; 2]]) -> Result<Vec<u32>> {
        self.inner.components(n, edges)
    }
}

#[test]
fn a_backend_error_stops_the_run_at_that_tile() {
    let s = sample("failing", 200);
    for overlap in [Overlap::On, Overlap::Off] {
        let mut backend = FailingBackend {
            inner: CpuBackend::new(),
            tiles: 0,
            fail_at: 3,
        };
        let err = score_tiles::run(
            &s.prepared,
            &s.nuclei,
            &s.model,
            &s.graph,
            &mut backend,
            &Progress { quiet: true },
            overlap,
        )
        .err()
        .unwrap_or_else(|| panic!("{overlap:?}: the run should fail"));
        assert_eq!(format!("{err:#}"), "device lost at tile 3", "{overlap:?}");
        assert_eq!(
            backend.tiles, 3,
            "{overlap:?}: no tile scored after the error"
        );
    }
}

#[test]
fn a_tile_source_error_stops_the_run_at_that_tile() {
    let s = sample("source", 200);
    let grid = &s.prepared.grid;
    let members = tiles::bucket(grid, &s.prepared.flat);
    let bd_members = tiles::bucket(grid, &s.nuclei.centroid);
    let source = TileSource {
        grid,
        members: &members,
        flat: &s.prepared.flat,
        pos: &s.prepared.pos,
        tokens: &s.prepared.tokens,
        member: &s.prepared.member,
        bd_members: &bd_members,
    };
    for overlap in [Overlap::On, Overlap::Off] {
        let tiles = (0..grid.len()).map(|t| {
            if t == 4 {
                return Err(anyhow!("bucket file of tile {t} is truncated"));
            }
            Ok(build_tile(&source, grid.tile(t), &s.nuclei, &s.graph))
        });
        let mut merged = Vec::new();
        let err = score_tiles::score_all(
            tiles,
            overlap,
            &s.model,
            &mut CpuBackend::new(),
            &mut ScoreClock::default(),
            |cell, _| {
                merged.push(cell);
                Ok(())
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{overlap:?}: the run should fail"));
        assert_eq!(
            format!("{err:#}"),
            "bucket file of tile 4 is truncated",
            "{overlap:?}"
        );
        let expected: Vec<_> = (0..4).map(|t| grid.tile(t)).collect();
        assert_eq!(merged, expected, "{overlap:?}: the tiles before, in order");
    }
}

/// `seggpu segment --overlap overlap`.
fn segment(input: &[String], out: &std::path::Path, backend: &str, overlap: &str) -> Output {
    seggpu()
        .arg("segment")
        .args(input)
        .arg("--out")
        .arg(out)
        .args(["--backend", backend, "--quiet", "--tile-size", "40"])
        .args(["--outputs", "transcripts,cells", "--overlap", overlap])
        .output()
        .expect("run seggpu")
}

#[test]
fn segment_outputs_are_byte_identical_with_and_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let folder = common::simulated_xenium(dir.path(), "sim", 200);
    let input = common::segment::simulated_input(&folder);
    let on = dir.path().join("on");
    let off = dir.path().join("off");
    assert_success(&segment(&input, &on, "cpu", "on"));
    assert_success(&segment(&input, &off, "cpu", "off"));
    for file in ["segger_transcripts.parquet", "cells.parquet"] {
        let a = std::fs::read(on.join(file)).unwrap();
        let b = std::fs::read(off.join(file)).unwrap();
        assert!(a == b, "{file} differs with and without overlap");
    }
    let bad = segment(&input, &dir.path().join("bad"), "cpu", "sometimes");
    assert_failure(&bad, "invalid value 'sometimes' for '--overlap <OVERLAP>'");
}
