//! Stage `score`: per tile, the graphs (docs/contract.md §5), the model (§6)
//! and the best nucleus of every owned transcript (§8).

use std::time::Instant;

use anyhow::Result;

use super::prepare::Prepared;
use super::progress::Progress;
use crate::backend::Backend;
use crate::graph::build::{build_tile_graph, GraphParams, TileNodes};
use crate::io::Nuclei;
use crate::model::Model;
use crate::tiles::{self, Buckets, Cell, TileGrid};

/// The best candidate of every kept transcript, over all tiles.
pub struct TileScores {
    /// Best score per kept transcript (NaN = no candidate).
    pub best_score: Vec<f32>,
    /// Best nucleus per kept transcript (−1 = no candidate).
    pub best_index: Vec<i32>,
    /// Seconds spent building graphs.
    pub graph_seconds: f64,
    /// Seconds spent in the model and scoring.
    pub model_seconds: f64,
}

/// Kept transcripts a tile is gathered from: all of them, or (in the
/// streaming path) those of a bucket and its margin, in ascending input order.
pub struct TileSource<'a> {
    /// The grid of the whole sample.
    pub grid: &'a TileGrid,
    /// `flat` grouped by owning core.
    pub members: &'a Buckets,
    /// (x, y) of every transcript of the source.
    pub flat: &'a [[f64; 2]],
    /// Position of every transcript of the source.
    pub pos: &'a [[f64; 3]],
    /// Model token of every transcript of the source.
    pub tokens: &'a [u32],
    /// Nucleus every transcript of the source belongs to (−1 for none).
    pub member: &'a [i32],
    /// The nuclei grouped by owning core.
    pub bd_members: &'a Buckets,
}

/// The best match of one owned transcript: (index into the source, score, nucleus).
pub type OwnedBest = (u32, f32, i32);

/// Graph and model time of the tiles scored so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScoreClock {
    /// Seconds building graphs.
    pub graph: f64,
    /// Seconds in the model and scoring.
    pub model: f64,
    /// Transcripts gathered into tiles (core and margin), for the recompute factor.
    pub gathered: u64,
}

/// Scores the tile of core `cell`: the best nucleus of every transcript it
/// owns that has a candidate. Only `source` items within the core's
/// extended region take part, so a source that holds at least those gives
/// the result of the whole sample.
#[allow(clippy::too_many_arguments)]
pub fn score_tile(
    source: &TileSource,
    cell: Cell,
    nuclei: &Nuclei,
    model: &Model,
    params: &GraphParams,
    backend: &mut dyn Backend,
    clock: &mut ScoreClock,
    out: &mut Vec<OwnedBest>,
) -> Result<()> {
    let grid = source.grid;
    let owned = source.members.get(cell);
    let tx_items = tiles::gather(grid, source.members, source.flat, cell);
    let bd_items = tiles::gather(grid, source.bd_members, &nuclei.centroid, cell);
    clock.gathered += tx_items.len() as u64;
    let started = Instant::now();
    let tile_pos: Vec<[f64; 3]> = tx_items.iter().map(|&i| source.pos[i as usize]).collect();
    let tile_member: Vec<i32> = tx_items
        .iter()
        .map(|&i| {
            let n = source.member[i as usize];
            if n < 0 {
                return -1;
            }
            bd_items
                .binary_search(&(n as u32))
                .map_or(-1, |local| local as i32)
        })
        .collect();
    let bd_centroid: Vec<[f64; 2]> = bd_items
        .iter()
        .map(|&n| nuclei.centroid[n as usize])
        .collect();
    let bd_x: Vec<f32> = bd_items
        .iter()
        .flat_map(|&n| nuclei.features[n as usize])
        .collect();
    // Only the transcripts this tile owns are scored here.
    let scored: Vec<bool> = tx_items
        .iter()
        .map(|&i| grid.owner(source.flat[i as usize]) == cell)
        .collect();
    let graph = build_tile_graph(
        TileNodes {
            tx_pos: &tile_pos,
            tx_token: tx_items
                .iter()
                .map(|&i| source.tokens[i as usize])
                .collect(),
            tx_member: &tile_member,
            bd_centroid: &bd_centroid,
            bd_x,
            tx_scored: Some(&scored),
        },
        params,
    );
    clock.graph += started.elapsed().as_secs_f64();
    let started = Instant::now();
    // One call per tile: on a GPU the embeddings stay on the device and
    // only the best score and index come back.
    let best = backend.score_tile(model, &graph)?;
    clock.model += started.elapsed().as_secs_f64();
    for &i in owned {
        let local = tx_items
            .binary_search(&i)
            .expect("owned items are gathered");
        if best.index[local] >= 0 {
            out.push((
                i,
                best.score[local],
                bd_items[best.index[local] as usize] as i32,
            ));
        }
    }
    Ok(())
}

/// Runs the model over every tile of `prepared.grid`.
pub fn run(
    prepared: &Prepared,
    nuclei: &Nuclei,
    model: &Model,
    params: &GraphParams,
    backend: &mut dyn Backend,
    progress: &Progress,
) -> Result<TileScores> {
    let grid = &prepared.grid;
    let members = tiles::bucket(grid, &prepared.flat);
    let bd_members = tiles::bucket(grid, &nuclei.centroid);
    let source = TileSource {
        grid,
        members: &members,
        flat: &prepared.flat,
        pos: &prepared.pos,
        tokens: &prepared.tokens,
        member: &prepared.member,
        bd_members: &bd_members,
    };
    let n = prepared.pos.len();
    let mut best_score = vec![f32::NAN; n];
    let mut best_index = vec![-1i32; n];
    let mut clock = ScoreClock::default();
    let mut found = Vec::new();
    let bar = progress.bar("tiles", grid.len() as u64);
    for t in 0..grid.len() {
        bar.inc(1);
        found.clear();
        // Every tile owns a transcript (the grid is sparse).
        score_tile(
            &source,
            grid.tile(t),
            nuclei,
            model,
            params,
            backend,
            &mut clock,
            &mut found,
        )?;
        for &(i, score, index) in &found {
            best_score[i as usize] = score;
            best_index[i as usize] = index;
        }
    }
    bar.finish_and_clear();
    Ok(TileScores {
        best_score,
        best_index,
        graph_seconds: clock.graph,
        model_seconds: clock.model,
    })
}
