//! Building one tile's graphs from positions (docs/contract.md §5).

use super::knn::{knn_2d, knn_3d, DistanceCap};
use super::{Csr, ReceptiveField, TileGraph};

/// Graph construction parameters.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct GraphParams {
    /// Neighbours per transcript (self included).
    pub k_tx: usize,
    /// Neighbour distance cap (inclusive), `None` for no cap.
    pub dist_tx: Option<f64>,
    /// Candidate nuclei per transcript.
    pub k_bd: usize,
    /// Candidate distance cap (strict).
    pub dist_bd: f64,
}

/// One tile's nodes, in increasing global order (so index ties break by
/// global transcript and nucleus order, whatever the tiling).
pub struct TileNodes<'a> {
    /// 3-D transcript positions.
    pub tx_pos: &'a [[f64; 3]],
    /// Gene token per transcript.
    pub tx_token: Vec<u32>,
    /// Local nucleus a transcript belongs to (−1 if none).
    pub tx_member: &'a [i32],
    /// Nucleus centroids.
    pub bd_centroid: &'a [[f64; 2]],
    /// Nucleus features `[n_bd, 4]`.
    pub bd_x: Vec<f32>,
    /// Transcripts to score (all when `None`): the others get an empty
    /// receptive field, so no backend computes what only their scores need.
    pub tx_scored: Option<&'a [bool]>,
}

/// Builds the tx–tx neighbour graph, the belongs graph and the receptive field.
pub fn build_tile_graph(nodes: TileNodes, params: &GraphParams) -> TileGraph {
    let n_tx = nodes.tx_pos.len();
    let cap = params
        .dist_tx
        .map_or(DistanceCap::None, DistanceCap::Inclusive);
    let nn = knn_3d(nodes.tx_pos, params.k_tx, cap, false);
    let k = nn.k;
    let neighbors = Csr::from_edges(
        n_tx,
        nn.index.chunks(k.max(1)).enumerate().flat_map(|(i, row)| {
            row.iter()
                .filter(|&&j| j >= 0)
                .map(move |&j| (i as u32, j as u32))
        }),
    );
    let n_bd = nodes.bd_centroid.len();
    let belongs = Csr::from_edges(
        n_bd,
        nodes
            .tx_member
            .iter()
            .enumerate()
            .filter(|(_, &n)| n >= 0)
            .map(|(i, &n)| (i as u32, n as u32)),
    );
    let scored: Vec<usize> = match nodes.tx_scored {
        Some(scored) => (0..n_tx).filter(|&i| scored[i]).collect(),
        None => (0..n_tx).collect(),
    };
    let flat: Vec<[f64; 2]> = scored
        .iter()
        .map(|&i| [nodes.tx_pos[i][0], nodes.tx_pos[i][1]])
        .collect();
    let nearest = knn_2d(
        &flat,
        nodes.bd_centroid,
        params.k_bd,
        DistanceCap::Exclusive(params.dist_bd),
    );
    let mut rf_index = vec![-1i32; n_tx * nearest.k];
    if nearest.k > 0 {
        for (row, &i) in nearest.index.chunks(nearest.k).zip(&scored) {
            rf_index[i * nearest.k..(i + 1) * nearest.k].copy_from_slice(row);
        }
    }
    TileGraph {
        tx_token: nodes.tx_token,
        bd_x: nodes.bd_x,
        neighbors,
        belongs,
        receptive_field: Some(ReceptiveField {
            k: nearest.k,
            index: rf_index,
        }),
    }
}
