//! Stage `prepare`: gene tokens (docs/contract.md §3), nuclear membership
//! (§5 "belongs"), the exact tile margin (§10) and the tile grid.

use std::borrow::Cow;
use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::RTree;

use super::{SegmentParams, UnknownGenes};
use crate::io::{FilterReason, Nuclei, Transcripts};
use crate::model::Model;
use crate::tiles::{self, TileGrid};

/// Most tiles a run may have.
pub const MAX_TILES: usize = 1 << 22;

/// Most times a tile may redo the work of its core, `((size + 2·margin) / size)²`.
pub const MAX_OVERLAP: f64 = 256.0;

/// The kept transcripts, ready for the tiles.
pub struct Prepared {
    /// Input row of every kept transcript, ascending.
    pub kept: Vec<u32>,
    /// Position of every kept transcript.
    pub pos: Vec<[f64; 3]>,
    /// Model token of every kept transcript.
    pub tokens: Vec<u32>,
    /// Nucleus every kept transcript belongs to (−1 for none).
    pub member: Vec<i32>,
    /// The tiles (the occupied cores of the grid).
    pub grid: TileGrid,
    /// (x, y) of every kept transcript.
    pub flat: Vec<[f64; 2]>,
    /// Tile margin in use, µm.
    pub margin: f64,
    /// The exact margin, µm.
    pub exact_margin: f64,
    /// Largest distance from a nucleus centroid to its vertices or members, µm.
    pub largest_radius: f64,
}

/// Applies the unknown-gene policy (marking `transcripts.filter`) and
/// prepares the kept transcripts.
pub fn run(
    transcripts: &mut Transcripts,
    nuclei: &Nuclei,
    model: &Model,
    params: &SegmentParams,
) -> Result<Prepared> {
    let n_rows = transcripts.x.len();
    let row_tokens = tokens_for(transcripts, model, params.unknown_genes)?;
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
    let tokens: Vec<u32> = kept.iter().map(|&r| row_tokens[r as usize]).collect();
    let member = memberships(transcripts, &kept, nuclei)?;
    let largest_radius = largest_radius(nuclei, &pos, &member);
    let exact_margin = tiles::exact_margin(
        model.arch.layers(),
        params.graph.dist_tx.unwrap_or(f64::INFINITY),
        params.graph.dist_bd,
        largest_radius,
    );
    let margin = params.margin.unwrap_or(exact_margin);
    let flat: Vec<[f64; 2]> = pos.iter().map(|p| [p[0], p[1]]).collect();
    let grid = tile_grid(&flat, params.tile_size, margin)?;
    Ok(Prepared {
        kept,
        pos,
        tokens,
        member,
        grid,
        flat,
        margin,
        exact_margin,
        largest_radius,
    })
}

/// The tile grid of `points` (the kept transcripts, or any points with
/// their extent and one in every occupied core) with cores of `tile_size`
/// µm and `margin`: one tile when the margin is unbounded; an error when the
/// tiles would redo too much work or be too many.
pub fn tile_grid(points: &[[f64; 2]], tile_size: f64, margin: f64) -> Result<TileGrid> {
    // Without a distance cap the exact margin is unbounded: one tile then
    // covers the sample, as every tile would span all of it anyway.
    let tile_size = if margin.is_finite() {
        tile_size
    } else {
        f64::INFINITY
    };
    // A tile computes over its core plus the margin on every side: a tiny
    // core redoes its neighbours' work ((size + 2·margin) / size)² times.
    let overlap = ((tile_size + 2.0 * margin) / tile_size).powi(2);
    if margin.is_finite() && overlap > MAX_OVERLAP {
        bail!(
            "--tile-size {tile_size} µm is too small for the tile margin of {margin:.1} µm: each tile would redo the work of {overlap:.0} tiles (at most {MAX_OVERLAP}); use a larger --tile-size, at least {:.1} µm",
            2.0 * margin / (MAX_OVERLAP.sqrt() - 1.0)
        );
    }
    let grid = TileGrid::covering(points, tile_size, margin).with_context(|| {
        format!("--tile-size {tile_size} µm is too small for the sample's extent; use a larger --tile-size (or check for transcripts far from the rest)")
    })?;
    // Only occupied cores are tiles, so this holds for any sample of fewer
    // transcripts; checked before anything is allocated per tile.
    if grid.len() > MAX_TILES {
        bail!(
            "--tile-size {tile_size} µm cuts the transcripts into {} tiles, more than {MAX_TILES}; use a larger --tile-size",
            grid.len()
        );
    }
    Ok(grid)
}

/// The error of genes (among the kept rows) missing from the vocabulary.
pub fn unknown_genes_error(mut missing: Vec<&str>) -> anyhow::Error {
    missing.sort_unstable();
    anyhow::anyhow!(
        "{} gene(s) of the transcripts are not in the model's vocabulary: {}{} (use --unknown-genes skip to mark them filtered)",
        missing.len(),
        missing.iter().take(20).copied().collect::<Vec<_>>().join(", "),
        if missing.len() > 20 { ", …" } else { "" }
    )
}

/// Finds the nucleus a point lies strictly inside (the lowest index when
/// several do; −1 for none).
pub struct NucleusLocator<'a> {
    polygons: Cow<'a, [geo::Polygon<f64>]>,
    tree: RTree<GeomWithData<Rectangle<[f64; 2]>, i32>>,
}

impl<'a> NucleusLocator<'a> {
    /// Indexes the nuclei's bounding boxes (the polygons are read back when
    /// spilled).
    pub fn new(nuclei: &'a Nuclei) -> Result<Self> {
        use geo::BoundingRect;
        let polygons = nuclei.polygons_in(0..nuclei.ids.len())?;
        let tree = RTree::bulk_load(
            polygons
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
        Ok(NucleusLocator { polygons, tree })
    }

    /// The nucleus containing `p`, −1 for none.
    pub fn locate(&self, p: [f64; 2]) -> i32 {
        use geo::Contains;
        self.tree
            .locate_all_at_point(&p)
            .map(|r| r.data)
            .filter(|&n| self.polygons[n as usize].contains(&geo::Point::new(p[0], p[1])))
            .min()
            .unwrap_or(-1)
    }
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
        return Err(unknown_genes_error(missing));
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
fn memberships(transcripts: &Transcripts, kept: &[u32], nuclei: &Nuclei) -> Result<Vec<i32>> {
    if let Some(flags) = &transcripts.nuclear_cell {
        let by_id: HashMap<&str, i32> = nuclei
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id, i as i32))
            .collect();
        return Ok(kept
            .iter()
            .map(|&row| {
                flags[row as usize]
                    .as_deref()
                    .and_then(|cell| by_id.get(cell).copied())
                    .unwrap_or(-1)
            })
            .collect());
    }
    let locator = NucleusLocator::new(nuclei)?;
    use rayon::prelude::*;
    Ok(kept
        .par_iter()
        .map(|&row| locator.locate([transcripts.x[row as usize], transcripts.y[row as usize]]))
        .collect())
}

/// Largest distance from a nucleus centroid to its vertices or members.
fn largest_radius(nuclei: &Nuclei, pos: &[[f64; 3]], member: &[i32]) -> f64 {
    let mut r = polygon_radius(nuclei);
    for (p, &n) in pos.iter().zip(member) {
        r = r.max(member_radius(nuclei, *p, n));
    }
    r
}

/// Largest distance from a nucleus centroid to its vertices.
pub fn polygon_radius(nuclei: &Nuclei) -> f64 {
    nuclei.polygon_radius()
}

/// Distance from the centroid of nucleus `n` to a member at `p` (0 when
/// `n` is −1).
pub fn member_radius(nuclei: &Nuclei, p: [f64; 3], n: i32) -> f64 {
    if n < 0 {
        return 0.0;
    }
    let c = nuclei.centroid[n as usize];
    ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2)).sqrt()
}
