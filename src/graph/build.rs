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
    let flat: Vec<[f64; 2]> = nodes.tx_pos.iter().map(|p| [p[0], p[1]]).collect();
    let rf = knn_2d(
        &flat,
        nodes.bd_centroid,
        params.k_bd,
        DistanceCap::Exclusive(params.dist_bd),
    );
    TileGraph {
        tx_token: nodes.tx_token,
        bd_x: nodes.bd_x,
        neighbors,
        belongs,
        receptive_field: Some(ReceptiveField {
            k: rf.k,
            index: rf.index,
        }),
    }
}
