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
use crate::tiles;

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
    let pos = &prepared.pos;
    let flat = &prepared.flat;
    let tx_members = tiles::bucket(grid, flat);
    let bd_members = tiles::bucket(grid, &nuclei.centroid);
    let mut out = TileScores {
        best_score: vec![f32::NAN; pos.len()],
        best_index: vec![-1i32; pos.len()],
        graph_seconds: 0.0,
        model_seconds: 0.0,
    };
    let bar = progress.bar("tiles", grid.len() as u64);
    for t in 0..grid.len() {
        bar.inc(1);
        // Every tile owns a transcript (the grid is sparse).
        let cell = grid.tile(t);
        let owned = tx_members.get(cell);
        let tx_items = tiles::gather(grid, &tx_members, flat, cell);
        let bd_items = tiles::gather(grid, &bd_members, &nuclei.centroid, cell);
        let clock = Instant::now();
        let tile_pos: Vec<[f64; 3]> = tx_items.iter().map(|&i| pos[i as usize]).collect();
        let tile_member: Vec<i32> = tx_items
            .iter()
            .map(|&i| {
                let n = prepared.member[i as usize];
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
            .map(|&i| grid.owner(flat[i as usize]) == cell)
            .collect();
        let graph = build_tile_graph(
            TileNodes {
                tx_pos: &tile_pos,
                tx_token: tx_items
                    .iter()
                    .map(|&i| prepared.tokens[i as usize])
                    .collect(),
                tx_member: &tile_member,
                bd_centroid: &bd_centroid,
                bd_x,
                tx_scored: Some(&scored),
            },
            params,
        );
        out.graph_seconds += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        // One call per tile: on a GPU the embeddings stay on the device and
        // only the best score and index come back.
        let best = backend.score_tile(model, &graph)?;
        out.model_seconds += clock.elapsed().as_secs_f64();
        for &i in owned {
            let local = tx_items
                .binary_search(&i)
                .expect("owned items are gathered");
            if best.index[local] >= 0 {
                out.best_score[i as usize] = best.score[local];
                out.best_index[i as usize] = bd_items[best.index[local] as usize] as i32;
            }
        }
    }
    bar.finish_and_clear();
    Ok(out)
}
