//! `seggpu segment`: read → tile → graph → model → score → fragments → output.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Result};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::RTree;

use crate::backend::Backend;
use crate::fragments::{self, FragmentParams};
use crate::graph::build::{build_tile_graph, GraphParams, TileNodes};
use crate::io::{FilterReason, Nuclei, Transcripts};
use crate::model::Model;
use crate::output::CellRow;
use crate::score::{self, ScoreStats};
use crate::tiles::{self, TileGrid};

pub mod progress;
pub mod run;

use progress::Progress;

/// What to do with genes the model does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownGenes {
    /// Stop with an error naming the missing genes.
    Error,
    /// Mark those transcripts filtered (`unknown_gene`).
    Skip,
}

/// The assignment threshold.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreCut {
    /// A fixed value in [0, 1].
    Fixed(f32),
    /// The knee of the sorted best-score curve.
    Auto,
}

impl std::str::FromStr for ScoreCut {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(ScoreCut::Auto);
        }
        match s.parse::<f32>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(ScoreCut::Fixed(v)),
            _ => Err(format!("`{s}` is neither `auto` nor a number in [0, 1]")),
        }
    }
}

/// Everything that controls a segmentation run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentParams {
    /// Graph construction.
    pub graph: GraphParams,
    /// Assignment threshold.
    pub score_cut: ScoreCut,
    /// Fragment detection; `None` turns it off.
    pub fragments: Option<FragmentSettings>,
    /// Unknown gene policy.
    pub unknown_genes: UnknownGenes,
    /// Side of a tile core in µm.
    pub tile_size: f64,
    /// Tile margin in µm; `None` for the exact margin.
    pub margin: Option<f64>,
}

/// Fragment settings as given (the cut defaults to the score cut).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FragmentSettings {
    /// Similarity cut, `None` for the score cut in use.
    pub cut: Option<f32>,
    /// Smallest fragment.
    pub min_transcripts: usize,
}

/// Per-row results and summaries of a run.
pub struct Segmentation {
    /// Per input row: segger_cell_id.
    pub cell_id: Vec<String>,
    /// Per input row: best score.
    pub score: Vec<Option<f32>>,
    /// Per input row: assignment kind.
    pub assignment: Vec<&'static str>,
    /// Per input row: filter reason.
    pub filter_reason: Vec<Option<&'static str>>,
    /// Rows of cells.parquet.
    pub cells: Vec<CellRow>,
    /// Facts for the log.
    pub summary: serde_json::Value,
    /// Seconds per stage.
    pub stage_seconds: Vec<(String, f64)>,
}

/// Maps every row's gene to a model token, applying the unknown-gene policy.
fn tokens_for(
    transcripts: &mut Transcripts,
    model: &Model,
    policy: UnknownGenes,
) -> Result<Vec<u32>> {
    let index = model.gene_index();
    let file_to_token: Vec<Option<u32>> = transcripts
        .gene_names
        .iter()
        .map(|g| index.get(g.as_str()).copied())
        .collect();
    let mut missing: Vec<&str> = Vec::new();
    let mut seen = vec![false; file_to_token.len()];
    for (row, &g) in transcripts.gene.iter().enumerate() {
        if transcripts.filter[row].is_none()
            && file_to_token[g as usize].is_none()
            && !seen[g as usize]
        {
            seen[g as usize] = true;
            missing.push(&transcripts.gene_names[g as usize]);
        }
    }
    if !missing.is_empty() && policy == UnknownGenes::Error {
        missing.sort_unstable();
        bail!(
            "{} gene(s) of the transcripts are not in the model's vocabulary: {}{} (use --unknown-genes skip to mark them filtered)",
            missing.len(),
            missing.iter().take(20).copied().collect::<Vec<_>>().join(", "),
            if missing.len() > 20 { ", …" } else { "" }
        );
    }
    let mut tokens = vec![0u32; transcripts.gene.len()];
    for (row, &g) in transcripts.gene.iter().enumerate() {
        match file_to_token[g as usize] {
            Some(t) => tokens[row] = t,
            None if transcripts.filter[row].is_none() => {
                transcripts.filter[row] = Some(FilterReason::UnknownGene)
            }
            None => {}
        }
    }
    Ok(tokens)
}

/// Nucleus each kept transcript belongs to (−1 if none): by the file's
/// nuclear flag and cell id, or else by strict point-in-polygon.
fn memberships(transcripts: &Transcripts, kept: &[u32], nuclei: &Nuclei) -> Vec<i32> {
    if let Some(flags) = &transcripts.nuclear_cell {
        let by_id: HashMap<&str, i32> = nuclei
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i as i32))
            .collect();
        return kept
            .iter()
            .map(|&row| {
                flags[row as usize]
                    .as_deref()
                    .and_then(|cell| by_id.get(cell).copied())
                    .unwrap_or(-1)
            })
            .collect();
    }
    use geo::{BoundingRect, Contains};
    let tree = RTree::bulk_load(
        nuclei
            .polygons
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let r = p.bounding_rect()?;
                Some(GeomWithData::new(
                    Rectangle::from_corners([r.min().x, r.min().y], [r.max().x, r.max().y]),
                    i as i32,
                ))
            })
            .collect(),
    );
    use rayon::prelude::*;
    kept.par_iter()
        .map(|&row| {
            let p = [transcripts.x[row as usize], transcripts.y[row as usize]];
            tree.locate_all_at_point(&p)
                .map(|r| r.data)
                .filter(|&n| nuclei.polygons[n as usize].contains(&geo::Point::new(p[0], p[1])))
                .min()
                .unwrap_or(-1)
        })
        .collect()
}

/// Largest distance from a nucleus centroid to its vertices or members.
fn largest_radius(nuclei: &Nuclei, pos: &[[f64; 3]], member: &[i32]) -> f64 {
    let mut r: f64 = 0.0;
    for (poly, c) in nuclei.polygons.iter().zip(&nuclei.centroid) {
        for v in poly.exterior().coords() {
            r = r.max(((v.x - c[0]).powi(2) + (v.y - c[1]).powi(2)).sqrt());
        }
    }
    for (p, &n) in pos.iter().zip(member) {
        if n >= 0 {
            let c = nuclei.centroid[n as usize];
            r = r.max(((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2)).sqrt());
        }
    }
    r
}

/// Runs the model over every tile; returns the best score (NaN = none) and
/// best nucleus (−1 = none) of every kept transcript.
#[allow(clippy::too_many_arguments)]
fn score_tiles(
    grid: &TileGrid,
    pos: &[[f64; 3]],
    tokens: &[u32],
    member: &[i32],
    nuclei: &Nuclei,
    model: &Model,
    params: &GraphParams,
    backend: &mut dyn Backend,
    progress: &Progress,
) -> Result<(Vec<f32>, Vec<i32>, [f64; 2])> {
    let mut seconds = [0.0f64; 2];
    let flat: Vec<[f64; 2]> = pos.iter().map(|p| [p[0], p[1]]).collect();
    let tx_members = tiles::bucket(grid, &flat);
    let bd_members = tiles::bucket(grid, &nuclei.centroid);
    let mut best_score = vec![f32::NAN; pos.len()];
    let mut best_index = vec![-1i32; pos.len()];
    let bar = progress.bar("tiles", grid.len() as u64);
    for t in 0..grid.len() {
        bar.inc(1);
        if tx_members[t].is_empty() {
            continue;
        }
        let tx_items = tiles::gather(grid, &tx_members, &flat, t);
        let bd_items = tiles::gather(grid, &bd_members, &nuclei.centroid, t);
        let tile_pos: Vec<[f64; 3]> = tx_items.iter().map(|&i| pos[i as usize]).collect();
        let tile_member: Vec<i32> = tx_items
            .iter()
            .map(|&i| {
                let n = member[i as usize];
                if n < 0 {
                    return -1;
                }
                bd_items
                    .binary_search(&(n as u32))
                    .map_or(-1, |local| local as i32)
            })
            .collect();
        let clock = Instant::now();
        let bd_centroid: Vec<[f64; 2]> = bd_items
            .iter()
            .map(|&n| nuclei.centroid[n as usize])
            .collect();
        let bd_x: Vec<f32> = bd_items
            .iter()
            .flat_map(|&n| nuclei.features[n as usize])
            .collect();
        let graph = build_tile_graph(
            TileNodes {
                tx_pos: &tile_pos,
                tx_token: tx_items.iter().map(|&i| tokens[i as usize]).collect(),
                tx_member: &tile_member,
                bd_centroid: &bd_centroid,
                bd_x,
            },
            params,
        );
        seconds[0] += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let embeddings = backend.forward(model, &graph, false)?;
        let rf = graph
            .receptive_field
            .as_ref()
            .expect("built with a receptive field");
        let best = backend.score(&embeddings, rf)?;
        seconds[1] += clock.elapsed().as_secs_f64();
        for &i in &tx_members[t] {
            let local = tx_items
                .binary_search(&i)
                .expect("owned items are gathered");
            if best.index[local] >= 0 {
                best_score[i as usize] = best.score[local];
                best_index[i as usize] = bd_items[best.index[local] as usize] as i32;
            }
        }
    }
    bar.finish_and_clear();
    Ok((best_score, best_index, seconds))
}

/// Segments one sample.
pub fn segment(
    mut transcripts: Transcripts,
    nuclei: &Nuclei,
    model: &Model,
    params: &SegmentParams,
    backend: &mut dyn Backend,
    progress: &Progress,
) -> Result<(Segmentation, Transcripts)> {
    let mut stages = Vec::new();
    let clock = Instant::now();
    let n_rows = transcripts.x.len();
    let tokens = tokens_for(&mut transcripts, model, params.unknown_genes)?;
    let kept: Vec<u32> = (0..n_rows as u32)
        .filter(|&r| transcripts.filter[r as usize].is_none())
        .collect();
    if kept.is_empty() {
        bail!("no transcript is left after filtering ({n_rows} rows read); check --qv-min, the control prefixes and the gene vocabulary");
    }
    let pos: Vec<[f64; 3]> = kept
        .iter()
        .map(|&r| {
            let r = r as usize;
            [transcripts.x[r], transcripts.y[r], transcripts.z[r]]
        })
        .collect();
    let kept_tokens: Vec<u32> = kept.iter().map(|&r| tokens[r as usize]).collect();
    let member = memberships(&transcripts, &kept, nuclei);
    let radius = largest_radius(nuclei, &pos, &member);
    let exact = tiles::exact_margin(
        model.arch.layers(),
        params.graph.dist_tx.unwrap_or(f64::INFINITY),
        params.graph.dist_bd,
        radius,
    );
    let margin = params.margin.unwrap_or(exact);
    let grid = TileGrid::covering(pos.iter().map(|p| [p[0], p[1]]), params.tile_size, margin);
    stages.push(("prepare".to_owned(), clock.elapsed().as_secs_f64()));

    let (best_score, best_index, [graph_seconds, model_seconds]) = score_tiles(
        &grid,
        &pos,
        &kept_tokens,
        &member,
        nuclei,
        model,
        &params.graph,
        backend,
        progress,
    )?;
    stages.push(("graphs".to_owned(), graph_seconds));
    stages.push(("model+score".to_owned(), model_seconds));

    let clock = Instant::now();
    let stats: ScoreStats = score::statistics(&best_score);
    let cut = match params.score_cut {
        ScoreCut::Fixed(v) => v,
        ScoreCut::Auto => stats.knee.map_or(0.5, |k| k as f32),
    };
    let assigned: Vec<bool> = best_score
        .iter()
        .zip(&best_index)
        .map(|(&s, &n)| n >= 0 && s >= cut)
        .collect();

    let mut fragment_of: Vec<Option<usize>> = vec![None; kept.len()];
    let mut fragment_ids: Vec<String> = Vec::new();
    let mut fragment_summary = serde_json::Value::Null;
    if let Some(settings) = params.fragments {
        let fp = FragmentParams {
            k_tx: params.graph.k_tx,
            dist_tx: params.graph.dist_tx,
            cut: settings.cut.unwrap_or(cut),
            min_transcripts: settings.min_transcripts,
        };
        let candidates: Vec<u32> = (0..kept.len() as u32)
            .filter(|&i| !assigned[i as usize])
            .collect();
        let cand_pos: Vec<[f64; 3]> = candidates.iter().map(|&i| pos[i as usize]).collect();
        let cand_tokens: Vec<u32> = candidates
            .iter()
            .map(|&i| kept_tokens[i as usize])
            .collect();
        let unit = fragments::normalised_embeddings(&model.tx_embedding, model.arch.emb);
        let sim = fragments::similarity_graph(
            &cand_pos,
            &cand_tokens,
            &unit,
            model.arch.emb,
            &fp,
            backend,
        )?;
        let (threshold, median) = fragments::threshold(&sim, fp.cut);
        let edges = crate::kernels::edge_similarity::kept_edges(
            &sim.neighbors,
            sim.k,
            &sim.similarity,
            threshold,
        );
        let labels = backend.components(candidates.len(), &edges)?;
        let mut size: HashMap<u32, usize> = HashMap::new();
        for &l in &labels {
            *size.entry(l).or_default() += 1;
        }
        // Smallest transcript id of each component, for its deterministic name.
        let mut smallest: HashMap<u32, usize> = HashMap::new();
        for (c, &l) in labels.iter().enumerate() {
            if size[&l] < fp.min_transcripts {
                continue;
            }
            let row = kept[candidates[c] as usize] as usize;
            let entry = smallest.entry(l).or_insert(row);
            if transcripts.id_key[row] < transcripts.id_key[*entry] {
                *entry = row;
            }
        }
        let mut roots: Vec<(u32, usize)> = smallest.into_iter().collect();
        roots.sort_by(|a, b| {
            transcripts.id_key[a.1]
                .partial_cmp(&transcripts.id_key[b.1])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.0.cmp(&b.0))
        });
        let slot: HashMap<u32, usize> = roots
            .iter()
            .enumerate()
            .map(|(s, &(l, _))| (l, s))
            .collect();
        fragment_ids = roots
            .iter()
            .map(|&(_, row)| format!("fragment-{}", transcripts.id_key[row]))
            .collect();
        for (c, &l) in labels.iter().enumerate() {
            if let Some(&s) = slot.get(&l) {
                fragment_of[candidates[c] as usize] = Some(s);
            }
        }
        fragment_summary = serde_json::json!({
            "candidates": candidates.len(),
            "neighbour_edges": sim.neighbors.iter().filter(|&&j| j >= 0).count(),
            "median_similarity": median,
            "threshold": threshold,
            "kept_edges": edges.len(),
            "fragments": fragment_ids.len(),
            "fragment_transcripts": fragment_of.iter().filter(|f| f.is_some()).count(),
        });
    }
    stages.push(("assign+fragments".to_owned(), clock.elapsed().as_secs_f64()));

    let mut result = Segmentation {
        cell_id: vec!["UNASSIGNED".to_owned(); n_rows],
        score: vec![None; n_rows],
        assignment: vec!["unassigned"; n_rows],
        filter_reason: transcripts
            .filter
            .iter()
            .map(|f| f.map(FilterReason::as_str))
            .collect(),
        cells: Vec::new(),
        summary: serde_json::Value::Null,
        stage_seconds: Vec::new(),
    };
    for (row, reason) in transcripts.filter.iter().enumerate() {
        if reason.is_some() {
            result.assignment[row] = "filtered";
        }
    }
    let mut cell_sum = vec![(0u64, 0.0f64, 0.0f64); nuclei.ids.len()];
    let mut fragment_sum = vec![(0u64, 0.0f64, 0.0f64); fragment_ids.len()];
    for (i, &row) in kept.iter().enumerate() {
        let row = row as usize;
        if best_index[i] >= 0 {
            result.score[row] = Some(best_score[i]);
        }
        let acc = if assigned[i] {
            let n = best_index[i] as usize;
            result.cell_id[row] = nuclei.ids[n].clone();
            result.assignment[row] = "cell";
            &mut cell_sum[n]
        } else if let Some(f) = fragment_of[i] {
            result.cell_id[row] = fragment_ids[f].clone();
            result.assignment[row] = "fragment";
            &mut fragment_sum[f]
        } else {
            continue;
        };
        acc.0 += 1;
        acc.1 += pos[i][0];
        acc.2 += pos[i][1];
    }
    let mean = |(n, sx, sy): (u64, f64, f64)| {
        if n == 0 {
            (None, None)
        } else {
            (Some(sx / n as f64), Some(sy / n as f64))
        }
    };
    for (n, id) in nuclei.ids.iter().enumerate() {
        let (cx, cy) = mean(cell_sum[n]);
        result.cells.push(CellRow {
            id: id.clone(),
            kind: "cell",
            n_transcripts: cell_sum[n].0,
            centroid_x: cx,
            centroid_y: cy,
            nucleus_area: Some(polygon_area(&nuclei.polygons[n]) as f32),
        });
    }
    for (f, id) in fragment_ids.iter().enumerate() {
        let (cx, cy) = mean(fragment_sum[f]);
        result.cells.push(CellRow {
            id: id.clone(),
            kind: "fragment",
            n_transcripts: fragment_sum[f].0,
            centroid_x: cx,
            centroid_y: cy,
            nucleus_area: None,
        });
    }
    let count = |kind: &str| result.assignment.iter().filter(|&&a| a == kind).count();
    let mut filtered_by: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in result.filter_reason.iter().flatten() {
        *filtered_by.entry(r).or_default() += 1;
    }
    result.summary = serde_json::json!({
        "counts": {
            "read": n_rows,
            "filtered": filtered_by,
            "kept": kept.len(),
            "assigned": count("cell"),
            "fragment": count("fragment"),
            "unassigned": count("unassigned"),
            "nuclei": nuclei.ids.len(),
            "nuclei_skipped": nuclei.skipped.len(),
            "cells_with_transcripts": cell_sum.iter().filter(|c| c.0 > 0).count(),
            "fragments": fragment_ids.len(),
        },
        "score_cut": cut,
        "score_cut_mode": match params.score_cut { ScoreCut::Auto => "auto", ScoreCut::Fixed(_) => "fixed" },
        "scores": stats,
        "tiles": { "size": grid.size, "count": grid.len(), "margin": margin, "exact_margin": exact, "largest_nucleus_radius": radius },
        "fragments": fragment_summary,
        "backend": backend.describe(),
    });
    result.stage_seconds = stages;
    Ok((result, transcripts))
}

fn polygon_area(p: &geo::Polygon<f64>) -> f64 {
    use geo::Area;
    p.unsigned_area()
}
