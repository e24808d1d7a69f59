//! Fragments (SPEC §9): transcripts no nucleus claims, grouped into
//! connected components of similar neighbours.

use anyhow::Result;

use crate::backend::Backend;
use crate::graph::knn::{knn_3d, DistanceCap};

/// Bins of the similarity histogram over [−1, 1].
pub const HISTOGRAM_BINS: usize = 1 << 16;

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

/// Negative similarities of at most this magnitude (2^−54) share the bin of
/// 0: in f64, 1 + s rounds to 1 for them (ties to even).
const ROUNDS_TO_ONE: f32 = 5.551_115e-17;

/// Histogram bin of a similarity in [−1, 1]: ⌊(s + 1) / 2 · 2^16⌋ with
/// s + 1 in f64, clamped to the bins. Computed as ⌊s · 2^15⌋ + 2^15, which
/// is exact in f32, so that `shaders/fragments.wgsl` (no f64 there) gets the
/// same bin for every f32.
#[inline]
pub fn similarity_bin(s: f32) -> usize {
    let half = (HISTOGRAM_BINS / 2) as f32;
    let mut below = (s * half).floor();
    if (-ROUNDS_TO_ONE..0.0).contains(&s) {
        below = 0.0;
    }
    (below + half).clamp(0.0, (HISTOGRAM_BINS - 1) as f32) as usize
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

    /// The definition, in f64.
    fn bin_f64(s: f32) -> usize {
        let b = ((s as f64 + 1.0) / 2.0 * HISTOGRAM_BINS as f64).floor();
        b.clamp(0.0, (HISTOGRAM_BINS - 1) as f64) as usize
    }

    /// `v` moved by `ulps` representable f32 values (finite `v`).
    fn step(v: f32, ulps: i64) -> f32 {
        let magnitude = i64::from(v.abs().to_bits());
        let at = if v < 0.0 { -magnitude } else { magnitude } + ulps;
        let moved = f32::from_bits(at.unsigned_abs() as u32);
        if at < 0 {
            -moved
        } else {
            moved
        }
    }

    #[test]
    fn the_f32_bin_equals_the_f64_definition() {
        assert_eq!(ROUNDS_TO_ONE, 2f32.powi(-54));
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            1.5,
            -1.5,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            ROUNDS_TO_ONE,
            -ROUNDS_TO_ONE,
            -ROUNDS_TO_ONE * 1.000_001,
            -ROUNDS_TO_ONE * 0.999_999,
            2f32.powi(-29),
            -(2f32.powi(-29)),
        ];
        // Every bin edge and its f32 neighbours.
        for b in 0..=HISTOGRAM_BINS as i32 {
            let edge = b as f32 / (HISTOGRAM_BINS / 2) as f32 - 1.0;
            for ulps in -3..=3 {
                values.push(step(edge, ulps));
            }
        }
        // Tiny magnitudes, where f64 rounds 1 + s.
        let mut v = 1e-30f32;
        while v < 1e-3 {
            values.extend([v, -v, step(v, 1), -step(v, 1)]);
            v *= 1.37;
        }
        // Pseudo-random values over [−1.1, 1.1].
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push((x >> 40) as f32 / (1u64 << 24) as f32 * 2.2 - 1.1);
        }
        for s in values {
            assert_eq!(similarity_bin(s), bin_f64(s), "s = {s:e}");
        }
    }

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
