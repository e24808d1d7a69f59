//! The training data of one slide (docs/contract.md, training section): the
//! whole-sample graphs, the held-out nuclear transcripts, and the random
//! windows a step learns from, as `tools/reference/train_real.py` makes them.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::grad::Pairs;
use crate::graph::build::{build_tile_graph, GraphParams, TileNodes};
use crate::graph::{Csr, ReceptiveField, TileGraph};
use crate::io::Nuclei;
use crate::model::BD_FEATURES;
use crate::pipeline::prepare::Prepared;
use crate::tiles::{self, Buckets, TileGrid};

/// Fewest transcripts a window must hold to be used (train.py's rule).
pub const MIN_WINDOW_TRANSCRIPTS: usize = 10;
/// Fewest nuclei a window must hold to be used.
pub const MIN_WINDOW_NUCLEI: usize = 2;
/// Window draws in a row that may come up empty before training gives up.
pub const MAX_EMPTY_DRAWS: usize = 1000;

/// Independent random streams of one seed (held-out split, initial
/// weights, windows), so that changing one use does not shift the others.
pub fn stream(seed: u64, stream: u64) -> StdRng {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// Stream ids of [`stream`].
pub mod streams {
    /// The held-out split.
    pub const HOLDOUT: u64 = 1;
    /// The initial weights.
    pub const INIT: u64 = 2;
    /// The windows, splits and random negatives.
    pub const WINDOWS: u64 = 3;
}

/// How windows and pairs are drawn.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WindowSettings {
    /// Side of a window in µm (capped by the sample's extent).
    pub size: f64,
    /// Fraction of a window's belongs edges taken out of message passing
    /// (supervision-only); the rest stay as message edges.
    pub supervision_fraction: f64,
    /// Random nuclei of the window drawn per positive as negatives.
    pub random_negatives: usize,
}

/// What the slide holds for training, for logs and the weights file.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DataCounts {
    /// Kept transcripts.
    pub transcripts: usize,
    /// Nuclei.
    pub nuclei: usize,
    /// tx–tx neighbour edges of the whole sample.
    pub neighbor_edges: usize,
    /// Nuclear transcripts (belongs edges).
    pub nuclear_transcripts: usize,
    /// Of those, the ones used in training.
    pub training: usize,
    /// Of those, the ones held out for validation.
    pub held_out: usize,
}

/// One step's input: a window's graph (message edges only) and its pairs.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The window's transcripts, nuclei and message edges.
    pub graph: TileGraph,
    /// Positives (every belongs edge of the window) and negatives.
    pub pairs: Pairs,
    /// The window, `[x0, y0, side]` µm.
    pub window: [f64; 3],
}

/// The whole sample, ready for windows and validation.
pub struct TrainingData {
    /// x, y of every kept transcript.
    tx_xy: Vec<[f64; 2]>,
    /// Token of every kept transcript.
    tokens: Vec<u32>,
    /// Nucleus each kept transcript belongs to in training (−1: none, or held out).
    member: Vec<i32>,
    /// Held-out transcripts, ascending.
    pub held_out: Vec<u32>,
    /// Own nucleus of each held-out transcript.
    pub held_out_nucleus: Vec<u32>,
    /// Validation graph: every kept transcript and nucleus, the training
    /// belongs edges only, and the receptive field of the held-out
    /// transcripts only (the other rows empty): what validation scores, so
    /// that the forward pass computes only the rows those scores depend on.
    pub validation: TileGraph,
    /// The receptive field of every transcript (the negatives of a window).
    receptive_field: ReceptiveField,
    /// Nucleus centroids.
    bd_centroid: Vec<[f64; 2]>,
    /// Transcripts by grid cell, for window queries.
    tx_grid: (TileGrid, Buckets),
    /// Nuclei by grid cell.
    bd_grid: (TileGrid, Buckets),
    /// Bounding box of the transcripts, `[x0, y0, x1, y1]`.
    extent: [f64; 4],
    /// Counts for the logs.
    pub counts: DataCounts,
}

/// Side of the grid cells indexing points for window queries, µm.
const INDEX_CELL: f64 = 25.0;

impl TrainingData {
    /// Builds the whole-sample graphs (docs/contract.md §5) and holds out
    /// `holdout` of the nuclear transcripts (drawn with `seed`). Errors when
    /// there is nothing to learn from.
    pub fn new(
        prepared: &Prepared,
        nuclei: &Nuclei,
        params: &GraphParams,
        holdout: f64,
        seed: u64,
    ) -> Result<Self> {
        let n_tx = prepared.pos.len();
        let n_bd = nuclei.ids.len();
        let nuclear: Vec<u32> = (0..n_tx as u32)
            .filter(|&t| prepared.member[t as usize] >= 0)
            .collect();
        if nuclear.is_empty() {
            bail!(
                "nothing to learn from: none of the {n_tx} kept transcripts belongs to a nucleus \
                 (no row is flagged nuclear with a matching cell id, and no nucleus polygon \
                 contains a kept transcript); training needs nuclear transcripts as positives"
            );
        }
        if n_tx < MIN_WINDOW_TRANSCRIPTS || n_bd < MIN_WINDOW_NUCLEI {
            bail!(
                "too few for a training window: {n_tx} kept transcripts and {n_bd} nuclei; a \
                 window needs at least {MIN_WINDOW_TRANSCRIPTS} transcripts and \
                 {MIN_WINDOW_NUCLEI} nuclei"
            );
        }
        let n_hold = (holdout * nuclear.len() as f64).round() as usize;
        if n_hold >= nuclear.len() {
            bail!(
                "--holdout {holdout} holds out all {} nuclear transcripts: none is left to train on",
                nuclear.len()
            );
        }
        let mut order: Vec<u32> = (0..nuclear.len() as u32).collect();
        order.shuffle(&mut stream(seed, streams::HOLDOUT));
        let mut held: Vec<u32> = order[..n_hold]
            .iter()
            .map(|&i| nuclear[i as usize])
            .collect();
        held.sort_unstable();
        let mut member = prepared.member.clone();
        let held_out_nucleus: Vec<u32> = held
            .iter()
            .map(|&t| std::mem::replace(&mut member[t as usize], -1) as u32)
            .collect();

        let bd_x: Vec<f32> = nuclei.features.iter().flatten().copied().collect();
        debug_assert_eq!(bd_x.len(), n_bd * BD_FEATURES);
        let mut validation = build_tile_graph(
            TileNodes {
                tx_pos: &prepared.pos,
                tx_token: prepared.tokens.clone(),
                tx_member: &member,
                bd_centroid: &nuclei.centroid,
                bd_x,
                tx_scored: None,
            },
            params,
        );
        let receptive_field = validation
            .receptive_field
            .replace(ReceptiveField {
                k: 0,
                index: Vec::new(),
            })
            .expect("built with one");
        validation.receptive_field = Some(Self::rows_of(&receptive_field, &held));
        let tx_xy: Vec<[f64; 2]> = prepared.pos.iter().map(|p| [p[0], p[1]]).collect();
        let mut extent = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        for p in &tx_xy {
            extent = [
                extent[0].min(p[0]),
                extent[1].min(p[1]),
                extent[2].max(p[0]),
                extent[3].max(p[1]),
            ];
        }
        let index = |points: &[[f64; 2]]| -> Result<(TileGrid, Buckets)> {
            let grid = TileGrid::covering(points, INDEX_CELL, 0.0)?;
            let members = tiles::bucket(&grid, points);
            Ok((grid, members))
        };
        let counts = DataCounts {
            transcripts: n_tx,
            nuclei: n_bd,
            neighbor_edges: validation.neighbors.n_edges(),
            nuclear_transcripts: nuclear.len(),
            training: nuclear.len() - n_hold,
            held_out: n_hold,
        };
        Ok(Self {
            tx_grid: index(&tx_xy)?,
            bd_grid: index(&nuclei.centroid)?,
            tx_xy,
            tokens: prepared.tokens.clone(),
            member,
            held_out: held,
            held_out_nucleus,
            validation,
            receptive_field,
            bd_centroid: nuclei.centroid.clone(),
            extent,
            counts,
        })
    }

    /// `full` with the rows of the `held` transcripts only (the others empty).
    fn rows_of(full: &ReceptiveField, held: &[u32]) -> ReceptiveField {
        let mut index = vec![-1; full.index.len()];
        for &t in held {
            let row = t as usize * full.k..(t as usize + 1) * full.k;
            index[row.clone()].copy_from_slice(&full.index[row]);
        }
        ReceptiveField { k: full.k, index }
    }

    /// Side of the windows: `size`, capped by the larger side of the extent.
    pub fn window_side(&self, size: f64) -> f64 {
        let span = (self.extent[2] - self.extent[0]).max(self.extent[3] - self.extent[1]);
        size.min(span).max(f64::MIN_POSITIVE)
    }

    /// Draws windows until one holds enough transcripts, nuclei and a
    /// nuclear transcript, and returns its batch. Errors after
    /// [`MAX_EMPTY_DRAWS`] empty draws in a row.
    pub fn draw(
        &self,
        settings: &WindowSettings,
        rng: &mut StdRng,
        scratch: &mut WindowScratch,
    ) -> Result<Batch> {
        let side = self.window_side(settings.size);
        for _ in 0..MAX_EMPTY_DRAWS {
            // train_real.py: the window's corner is uniform over
            // [lo − side/4, hi − 3·side/4] on each axis.
            let corner = |rng: &mut StdRng, lo: f64, hi: f64| {
                let (a, b) = (lo - side / 4.0, hi - 3.0 * side / 4.0);
                if b > a {
                    rng.random_range(a..b)
                } else {
                    (a + b) / 2.0
                }
            };
            let x0 = corner(rng, self.extent[0], self.extent[2]);
            let y0 = corner(rng, self.extent[1], self.extent[3]);
            if let Some(batch) = self.window(x0, y0, side, settings, rng, scratch) {
                return Ok(batch);
            }
        }
        bail!(
            "too few transcripts or nuclei for a training window: none of {MAX_EMPTY_DRAWS} random \
             {side} µm windows held {MIN_WINDOW_TRANSCRIPTS} transcripts, {MIN_WINDOW_NUCLEI} \
             nuclei (by centroid) and a nuclear transcript of its own nuclei; use a larger --window"
        )
    }

    /// Items of `grid` inside `[x0, x0 + side) × [y0, y0 + side)`, ascending.
    fn inside(
        grid: &(TileGrid, Buckets),
        points: &[[f64; 2]],
        x0: f64,
        y0: f64,
        side: f64,
    ) -> Vec<u32> {
        let (grid, members) = grid;
        let [r0, c0] = grid.owner([x0, y0]);
        let [r1, c1] = grid.owner([x0 + side, y0 + side]);
        let mut out = Vec::new();
        for r in r0..=r1 {
            for c in c0..=c1 {
                out.extend(members.get([r, c]).iter().copied().filter(|&i| {
                    let p = points[i as usize];
                    p[0] >= x0 && p[0] < x0 + side && p[1] >= y0 && p[1] < y0 + side
                }));
            }
        }
        out.sort_unstable();
        out
    }

    /// The batch of one window, or `None` when it is too empty to learn from.
    fn window(
        &self,
        x0: f64,
        y0: f64,
        side: f64,
        settings: &WindowSettings,
        rng: &mut StdRng,
        scratch: &mut WindowScratch,
    ) -> Option<Batch> {
        let tx = Self::inside(&self.tx_grid, &self.tx_xy, x0, y0, side);
        let bd = Self::inside(&self.bd_grid, &self.bd_centroid, x0, y0, side);
        if tx.len() < MIN_WINDOW_TRANSCRIPTS || bd.len() < MIN_WINDOW_NUCLEI {
            return None;
        }
        let batch = scratch.with_maps(self, &tx, &bd, |tx_map, bd_map| {
            // Belongs edges of the window: each one a positive; supervision-only
            // with probability `supervision_fraction`, else a message edge too.
            let mut positive = Vec::new();
            let mut messages = Vec::new();
            for (local, &t) in tx.iter().enumerate() {
                let m = self.member[t as usize];
                if m < 0 || bd_map[m as usize] < 0 {
                    continue;
                }
                let pair = (local as u32, bd_map[m as usize] as u32);
                positive.push(pair);
                if rng.random::<f64>() >= settings.supervision_fraction {
                    messages.push(pair);
                }
            }
            if positive.is_empty() {
                return None;
            }
            // Negatives: the other receptive-field nuclei of each positive
            // transcript that lie in the window, then random nuclei of the window.
            let rf = &self.receptive_field;
            let mut negative = Vec::new();
            for &(s, d) in &positive {
                let slots = &rf.index[tx[s as usize] as usize * rf.k..][..rf.k];
                for &n in slots {
                    if n >= 0 && bd_map[n as usize] >= 0 && bd_map[n as usize] as u32 != d {
                        negative.push((s, bd_map[n as usize] as u32));
                    }
                }
            }
            for _ in 0..settings.random_negatives {
                for &(s, d) in &positive {
                    let n = rng.random_range(0..bd.len() as u32);
                    if n != d {
                        negative.push((s, n));
                    }
                }
            }
            // Message edges between window transcripts, grouped by destination.
            let global = &self.validation.neighbors;
            let mut offsets = Vec::with_capacity(tx.len() + 1);
            let mut sources = Vec::new();
            offsets.push(0u32);
            for &t in &tx {
                let (a, b) = (
                    global.offsets[t as usize] as usize,
                    global.offsets[t as usize + 1] as usize,
                );
                sources.extend(
                    global.sources[a..b]
                        .iter()
                        .filter(|&&s| tx_map[s as usize] >= 0)
                        .map(|&s| tx_map[s as usize] as u32),
                );
                offsets.push(sources.len() as u32);
            }
            let bd_x = bd
                .iter()
                .flat_map(|&n| {
                    let n = n as usize;
                    self.validation.bd_x[n * BD_FEATURES..(n + 1) * BD_FEATURES]
                        .iter()
                        .copied()
                })
                .collect();
            Some(Batch {
                graph: TileGraph {
                    tx_token: tx.iter().map(|&t| self.tokens[t as usize]).collect(),
                    bd_x,
                    neighbors: Csr { offsets, sources },
                    belongs: Csr::from_edges(bd.len(), messages.iter().copied()),
                    receptive_field: None,
                },
                pairs: Pairs { positive, negative },
                window: [x0, y0, side],
            })
        });
        batch
    }

    /// The receptive field of every transcript of the sample.
    pub fn receptive_field(&self) -> &ReceptiveField {
        &self.receptive_field
    }
}

/// Global → window index maps, kept between windows so that a window costs
/// its own size, not the sample's.
#[derive(Debug, Default)]
pub struct WindowScratch {
    tx_map: Vec<i32>,
    bd_map: Vec<i32>,
}

impl WindowScratch {
    /// Runs `f` with the maps set for `tx` and `bd`, and resets them after.
    fn with_maps<T>(
        &mut self,
        data: &TrainingData,
        tx: &[u32],
        bd: &[u32],
        f: impl FnOnce(&[i32], &[i32]) -> T,
    ) -> T {
        self.tx_map.resize(data.tx_xy.len(), -1);
        self.bd_map.resize(data.bd_centroid.len(), -1);
        for (local, &t) in tx.iter().enumerate() {
            self.tx_map[t as usize] = local as i32;
        }
        for (local, &n) in bd.iter().enumerate() {
            self.bd_map[n as usize] = local as i32;
        }
        let out = f(&self.tx_map, &self.bd_map);
        for &t in tx {
            self.tx_map[t as usize] = -1;
        }
        for &n in bd {
            self.bd_map[n as usize] = -1;
        }
        out
    }
}
