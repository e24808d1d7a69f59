//! Fragments (SPEC §9): transcripts no nucleus claims, grouped into
//! connected components of similar neighbours.

use anyhow::Result;

use crate::backend::Backend;
use crate::graph::knn::{knn_3d, DistanceCap};
use crate::kernels::edge_similarity::HISTOGRAM_BINS;

/// Fragment detection parameters.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FragmentParams {
    /// Neighbours per transcript (self excluded).
    pub k_tx: usize,
    /// Neighbour distance cap (inclusive), `None` for none.
    pub dist_tx: Option<f64>,
    /// Lower bound of the similarity threshold (default: the score cut).
    pub cut: f32,
    /// Smallest component that becomes a fragment.
    pub min_transcripts: usize,
}

/// Lower edge of the bin holding the lower median (0-based rank (n − 1) / 2).
pub fn histogram_median(histogram: &[u32]) -> Option<f32> {
    let n: u64 = histogram.iter().map(|&c| c as u64).sum();
    if n == 0 {
        return None;
    }
    let rank = (n - 1) / 2;
    let mut cumulative = 0u64;
    for (b, &c) in histogram.iter().enumerate() {
        cumulative += c as u64;
        if cumulative > rank {
            return Some((-1.0 + b as f64 * 2.0 / HISTOGRAM_BINS as f64) as f32);
        }
    }
    None
}

/// Rows of the embedding table scaled to unit length (zero rows stay zero).
pub fn normalised_embeddings(table: &[f32], dim: usize) -> Vec<f32> {
    let mut out = table.to_vec();
    for row in out.chunks_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    out
}

/// Fragment-neighbour edges with their similarity.
pub struct SimilarityGraph {
    /// `[n, k]` neighbour lists (−1 padded).
    pub neighbors: Vec<i32>,
    /// Slots per transcript.
    pub k: usize,
    /// Similarity per slot (0 for empty slots).
    pub similarity: Vec<f32>,
    /// [`HISTOGRAM_BINS`] counts of the non-empty slots' similarities.
    pub histogram: Vec<u32>,
}

/// Builds the fragment-neighbour graph among `positions` and scores its
/// edges on `backend`.
pub fn similarity_graph(
    positions: &[[f64; 3]],
    tokens: &[u32],
    unit_embeddings: &[f32],
    dim: usize,
    params: &FragmentParams,
    backend: &mut dyn Backend,
) -> Result<SimilarityGraph> {
    let cap = params
        .dist_tx
        .map_or(DistanceCap::None, DistanceCap::Inclusive);
    let nn = knn_3d(positions, params.k_tx, cap, true);
    let scored = backend.fragment_similarity(&nn.index, nn.k, tokens, unit_embeddings, dim)?;
    Ok(SimilarityGraph {
        neighbors: nn.index,
        k: nn.k,
        similarity: scored.similarity,
        histogram: scored.histogram,
    })
}

/// The similarity threshold: max(sample median, cut), and the median.
pub fn threshold(graph: &SimilarityGraph, cut: f32) -> (f32, Option<f32>) {
    let median = histogram_median(&graph.histogram);
    (median.map_or(cut, |m| m.max(cut)), median)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::edge_similarity::similarity_bin;

    #[test]
    fn the_median_is_the_lower_edge_of_its_bin() {
        let mut histogram = vec![0u32; HISTOGRAM_BINS];
        assert_eq!(histogram_median(&histogram), None);
        for s in [-0.5f32, 0.25, 0.25, 0.75] {
            histogram[similarity_bin(s)] += 1;
        }
        assert_eq!(histogram_median(&histogram), Some(0.25));
    }
}
