//! Tiles with the exact margin change nothing: a tiled run and an untiled
//! run give identical assignments, scores and fragments; every input row
//! appears once.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use seggpu::backend::cpu::CpuBackend;
use seggpu::io::{FilterReason, Nuclei, TranscriptKey, Transcripts};
use seggpu::model::Model;
use seggpu::pipeline::progress::Progress;
use seggpu::pipeline::score_tiles::OverlapMode;
use seggpu::pipeline::{
    segment, Assignment, FragmentSettings, ScoreCut, SegmentParams, Segmentation, UnknownGenes,
};

use crate::common;

/// An in-memory sample: round nuclei on a jittered grid, transcripts
/// spread around them and in between, some nuclear (flagged), some filtered.
fn sample(model: &Model, seed: u64) -> (Transcripts, Nuclei) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut nuclei = Nuclei::default();
    let side = 12;
    for gy in 0..side {
        for gx in 0..side {
            let c = [
                gx as f64 * 18.0 + rng.random_range(0.0..4.0),
                gy as f64 * 18.0 + rng.random_range(0.0..4.0),
            ];
            let r = rng.random_range(3.0..5.0);
            let ring: Vec<(f64, f64)> = (0..20)
                .map(|k| {
                    let a = k as f64 / 20.0 * std::f64::consts::TAU;
                    (c[0] + r * a.cos(), c[1] + r * a.sin())
                })
                .collect();
            nuclei.ids.push(format!("cell{:04}", gy * side + gx));
            nuclei.polygons.push(geo::Polygon::new(ring.into(), vec![]));
            nuclei.centroid.push(c);
            nuclei
                .features
                .push([(std::f64::consts::PI * r * r) as f32, 1.0, 0.8, 3.1]);
        }
    }
    let n = 12_000usize;
    let mut t = Transcripts {
        x: Vec::new(),
        y: Vec::new(),
        z: Vec::new(),
        gene: Vec::new(),
        gene_names: model.genes.clone(),
        id_key: Vec::new(),
        nuclear_cell: Some(Vec::new()),
        filter: Vec::new(),
        passthrough: Vec::new(),
        columns: Vec::new(),
    };
    for i in 0..n {
        let home = rng.random_range(0..nuclei.ids.len());
        let c = nuclei.centroid[home];
        let (dx, dy): (f64, f64) = (rng.random_range(-9.0..9.0), rng.random_range(-9.0..9.0));
        let (x, y) = (c[0] + dx, c[1] + dy);
        t.x.push(x);
        t.y.push(y);
        t.z.push(rng.random_range(0.0..3.0));
        t.gene.push(rng.random_range(0..model.genes.len() as u32));
        t.id_key
            .push(TranscriptKey::U64(1_000_000 + (i as u64 * 7919) % n as u64));
        let inside = (dx * dx + dy * dy).sqrt() < 2.5;
        t.nuclear_cell
            .as_mut()
            .unwrap()
            .push(inside.then(|| nuclei.ids[home].to_string()));
        t.filter.push(if i.is_multiple_of(50) {
            Some(FilterReason::Qv)
        } else {
            None
        });
    }
    let ids: Vec<u64> = t
        .id_key
        .iter()
        .map(|k| match k {
            TranscriptKey::U64(v) => *v,
            _ => 0,
        })
        .collect();
    t.passthrough = vec![(
        "transcript_id".into(),
        Arc::new(arrow::array::UInt64Array::from(ids)) as arrow::array::ArrayRef,
    )];
    (t, nuclei)
}

fn run(model: &Model, tile_size: f64) -> Segmentation {
    let (transcripts, nuclei) = sample(model, 3);
    let params = SegmentParams {
        graph: seggpu::graph::build::GraphParams {
            k_tx: 5,
            dist_tx: Some(5.0),
            k_bd: 4,
            dist_bd: 12.0,
        },
        score_cut: ScoreCut::Auto,
        fragments: Some(FragmentSettings {
            cut: Some(0.2),
            min_transcripts: 3,
        }),
        unknown_genes: UnknownGenes::Error,
        tile_size,
        margin: None,
    };
    let (result, _) = segment(
        transcripts,
        &nuclei,
        model,
        &params,
        &mut CpuBackend::new(),
        &Progress { quiet: true },
        OverlapMode::Auto,
    )
    .unwrap();
    result
}

#[test]
fn tiled_and_untiled_runs_agree_exactly() {
    let model = Model::load(&common::fixture_path("dev.model.safetensors")).unwrap();
    let whole = run(&model, 10_000.0);
    let tiled = run(&model, 40.0);
    println!("untiled: {:?}", whole.summary.tiles);
    println!("tiled:   {:?}", tiled.summary.tiles);
    assert_eq!(whole.summary.tiles.count, 1);
    assert!(tiled.summary.tiles.count >= 25);
    let n = whole.len();
    assert_eq!(n, 12_000, "every input row appears once");
    let differ: Vec<usize> = (0..n)
        .filter(|&i| {
            whole.segger_cell_id(i) != tiled.segger_cell_id(i)
                || whole.score[i].to_bits() != tiled.score[i].to_bits()
        })
        .collect();
    println!("counts: {:?}", whole.summary.counts);
    println!(
        "scores: {:?} cut {}",
        whole.summary.scores, whole.summary.score_cut
    );
    let kinds = |r: &Segmentation, k: Assignment| r.assignment.iter().filter(|&&a| a == k).count();
    assert!(
        kinds(&whole, Assignment::Cell) > 1000,
        "the test sample should assign many transcripts"
    );
    assert!(
        kinds(&whole, Assignment::Fragment) > 0,
        "the test sample should form fragments"
    );
    assert_eq!(kinds(&whole, Assignment::Filtered), 240);
    assert!(
        differ.is_empty(),
        "{} rows differ, first {:?}",
        differ.len(),
        &differ[..differ.len().min(10)]
    );
}
