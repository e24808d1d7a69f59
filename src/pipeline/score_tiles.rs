//! Stage `score`: per tile, the graphs (docs/contract.md §5), the model (§6)
//! and the best nucleus of every owned transcript (§8).

use std::time::Instant;

use anyhow::Result;

use super::prepare::Prepared;
use super::progress::Progress;
use crate::backend::Backend;
use crate::graph::build::{build_tile_graph, GraphParams, TileNodes};
use crate::graph::TileGraph;
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
    /// Seconds the backend waited for graphs: all of graph building when
    /// tiles are scored one after the other, only the part not hidden behind
    /// the backend when they overlap ([`score_all`]).
    pub graph: f64,
    /// Seconds in the model and scoring.
    pub model: f64,
    /// Transcripts gathered into tiles (core and margin), for the recompute factor.
    pub gathered: u64,
    /// Seconds spent building graphs, overlapped or not.
    pub built: f64,
}

/// Whether graph building overlaps the backend, as chosen by `--overlap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// The next tile is built on the rayon pool while the backend scores the current one.
    On,
    /// Each tile is built, then scored.
    Off,
}

/// `segment --overlap`: whether graph building overlaps the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OverlapMode {
    /// On for a GPU backend only: on the CPU backend the graph builder and
    /// the kernels share the same cores, and overlapping them measured no
    /// faster at 10M transcripts.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl OverlapMode {
    /// The overlap for `backend`.
    pub fn resolve(self, backend: &dyn Backend) -> Overlap {
        match self {
            OverlapMode::Auto if backend.runs_on_gpu() => Overlap::On,
            OverlapMode::Auto | OverlapMode::Off => Overlap::Off,
            OverlapMode::On => Overlap::On,
        }
    }
}

/// One tile ready for the backend: its graphs and what maps its results
/// back to the source. Built without the backend, so that it can be built
/// on CPU threads while the backend scores another tile.
pub struct BuiltTile {
    /// The tile's core.
    pub cell: Cell,
    graph: TileGraph,
    /// (index into the source, local index) of every transcript the tile owns.
    owned: Vec<(u32, u32)>,
    /// Nucleus index of every local nucleus.
    bd_items: Vec<u32>,
    /// Transcripts gathered (core and margin).
    gathered: u64,
    /// Seconds spent building the graphs.
    seconds: f64,
}

/// Builds the graphs of the tile of core `cell`. Only `source` items within
/// the core's extended region take part, so a source that holds at least
/// those gives the result of the whole sample.
pub fn build_tile(
    source: &TileSource,
    cell: Cell,
    nuclei: &Nuclei,
    params: &GraphParams,
) -> BuiltTile {
    let grid = source.grid;
    let tx_items = tiles::gather(grid, source.members, source.flat, cell);
    let bd_items = tiles::gather(grid, source.bd_members, &nuclei.centroid, cell);
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
    let owned = source
        .members
        .get(cell)
        .iter()
        .map(|&i| {
            let local = tx_items
                .binary_search(&i)
                .expect("owned items are gathered");
            (i, local as u32)
        })
        .collect();
    BuiltTile {
        cell,
        graph,
        owned,
        bd_items,
        gathered: tx_items.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Scores a built tile: the best nucleus of every transcript it owns that
/// has a candidate, appended to `out`.
fn score_built(
    tile: &BuiltTile,
    model: &Model,
    backend: &mut dyn Backend,
    clock: &mut ScoreClock,
    out: &mut Vec<OwnedBest>,
) -> Result<()> {
    clock.gathered += tile.gathered;
    clock.built += tile.seconds;
    let started = Instant::now();
    // One call per tile: on a GPU the embeddings stay on the device and
    // only the best score and index come back.
    let best = backend.score_tile(model, &tile.graph)?;
    clock.model += started.elapsed().as_secs_f64();
    for &(i, local) in &tile.owned {
        let local = local as usize;
        if best.index[local] >= 0 {
            out.push((
                i,
                best.score[local],
                tile.bd_items[best.index[local] as usize] as i32,
            ));
        }
    }
    Ok(())
}

/// Scores `tiles` in order and hands each tile's owned best matches to
/// `merge`, in the same order. With [`Overlap::On`] the next tile is taken
/// from `tiles` (built, and read where the iterator reads) on the rayon pool
/// while the backend scores the current one: one tile is held ahead, and
/// `--threads` bounds the threads, since the backend stays on the calling
/// thread. The results do not depend on the overlap. The first error, of
/// `tiles`, the backend or `merge`, stops the loop once the tile being built
/// is done.
pub fn score_all<I, M>(
    mut tiles: I,
    overlap: Overlap,
    model: &Model,
    backend: &mut dyn Backend,
    clock: &mut ScoreClock,
    mut merge: M,
) -> Result<()>
where
    I: Iterator<Item = Result<BuiltTile>> + Send,
    M: FnMut(Cell, &[OwnedBest]) -> Result<()>,
{
    let mut found = Vec::new();
    let mut score = |tile: &BuiltTile, clock: &mut ScoreClock| -> Result<()> {
        found.clear();
        score_built(tile, model, backend, clock, &mut found)?;
        merge(tile.cell, &found)
    };
    if overlap == Overlap::Off {
        for tile in tiles {
            let tile = tile?;
            clock.graph += tile.seconds;
            score(&tile, clock)?;
        }
        return Ok(());
    }
    let waiting = Instant::now();
    let mut next = tiles.next();
    clock.graph += waiting.elapsed().as_secs_f64();
    while let Some(current) = next.take() {
        let current = current?;
        let mut scored = Ok(());
        let mut done = Instant::now();
        // The calling thread keeps the backend (it need not be `Send`); the
        // build runs as a pool task, so no thread beyond the pool computes.
        rayon::in_place_scope(|scope| {
            scope.spawn(|_| next = tiles.next());
            scored = score(&current, clock);
            done = Instant::now();
        });
        // The backend idled from here until the next tile was built.
        clock.graph += done.elapsed().as_secs_f64();
        scored?;
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
    overlap: Overlap,
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
    let bar = progress.bar("tiles", grid.len() as u64);
    // Every tile owns a transcript (the grid is sparse).
    let tiles = (0..grid.len()).map(|t| Ok(build_tile(&source, grid.tile(t), nuclei, params)));
    score_all(tiles, overlap, model, backend, &mut clock, |_, found| {
        bar.inc(1);
        for &(i, score, index) in found {
            best_score[i as usize] = score;
            best_index[i as usize] = index;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    log::info!(
        "score: graphs built in {:.2} s, the backend waited {:.2} s for them and worked {:.2} s (overlap {})",
        clock.built,
        clock.graph,
        clock.model,
        if overlap == Overlap::On { "on" } else { "off" },
    );
    Ok(TileScores {
        best_score,
        best_index,
        graph_seconds: clock.graph,
        model_seconds: clock.model,
    })
}
