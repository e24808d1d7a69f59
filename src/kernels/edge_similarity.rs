//! Twin of `shaders/edge_similarity.wgsl`: the similarity of every
//! fragment-neighbour slot (docs/contract.md §9), the histogram bin rule and the
//! histogram of the similarities; and the edges a threshold keeps.

use rayon::prelude::*;

/// Bins of the similarity histogram over [−1, 1].
pub const HISTOGRAM_BINS: usize = 1 << 16;

/// Negative similarities of at most this magnitude (2^−54) share the bin of
/// 0: in f64, 1 + s rounds to 1 for them (ties to even).
const ROUNDS_TO_ONE: f32 = 5.551_115e-17;

/// Items handed to one rayon task.
const ITEMS_PER_TASK: usize = 4096;

/// Histogram bin of a similarity in [−1, 1]: ⌊(s + 1) / 2 · 2^16⌋ with
/// s + 1 in f64, clamped to the bins. Computed as ⌊s · 2^15⌋ + 2^15, which
/// is exact in f32, so that the shader (no f64 there) gets the same bin for
/// every f32.
#[inline]
pub fn similarity_bin(s: f32) -> usize {
    let half = (HISTOGRAM_BINS / 2) as f32;
    let mut below = (s * half).floor();
    if (-ROUNDS_TO_ONE..0.0).contains(&s) {
        below = 0.0;
    }
    (below + half).clamp(0.0, (HISTOGRAM_BINS - 1) as f32) as usize
}

/// One invocation: slot `e` of the `[n, k]` neighbour lists. Cosine of the
/// unit embedding rows of the two transcripts' genes; 0 for an empty slot.
#[inline]
pub fn edge_similarity_at(
    neighbors: &[i32],
    k: usize,
    tokens: &[u32],
    unit: &[f32],
    dim: usize,
    e: usize,
) -> f32 {
    let j = neighbors[e];
    let mut dot = 0.0f32;
    if j >= 0 {
        let a = tokens[e / k] as usize * dim;
        let b = tokens[j as usize] as usize * dim;
        for c in 0..dim {
            dot += unit[a + c] * unit[b + c];
        }
    }
    dot
}

/// Similarity of every neighbour slot.
pub fn edge_similarity(
    neighbors: &[i32],
    k: usize,
    tokens: &[u32],
    unit: &[f32],
    dim: usize,
) -> Vec<f32> {
    (0..neighbors.len())
        .into_par_iter()
        .with_min_len(ITEMS_PER_TASK)
        .map(|e| edge_similarity_at(neighbors, k, tokens, unit, dim, e))
        .collect()
}

/// Histogram of the similarities of the non-empty slots over [−1, 1]
/// ([`similarity_bin`]); the shader counts the same slots with atomics.
pub fn similarity_histogram(neighbors: &[i32], similarity: &[f32]) -> Vec<u32> {
    let mut histogram = vec![0u32; HISTOGRAM_BINS];
    for (&j, &s) in neighbors.iter().zip(similarity) {
        if j >= 0 {
            histogram[similarity_bin(s)] += 1;
        }
    }
    histogram
}

/// `node` of a transcript that takes no part in the components.
pub const NO_NODE: u32 = u32::MAX;

/// Undirected edges `[node[i], node[j]]` of the slots at or above
/// `threshold` whose two ends both have a node (not [`NO_NODE`]), and the
/// number of slots with both ends, kept or not.
pub fn kept_edges(
    neighbors: &[i32],
    k: usize,
    similarity: &[f32],
    threshold: f32,
    node: &[u32],
) -> (Vec<[u32; 2]>, usize) {
    let mut both_ends = 0;
    let mut edges = Vec::new();
    for (e, (&j, &s)) in neighbors.iter().zip(similarity).enumerate() {
        if j < 0 {
            continue;
        }
        let (a, b) = (node[e / k], node[j as usize]);
        if a == NO_NODE || b == NO_NODE {
            continue;
        }
        both_ends += 1;
        if s >= threshold {
            edges.push([a, b]);
        }
    }
    (edges, both_ends)
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
    fn empty_slots_score_zero_and_are_not_counted() {
        let unit = [1.0, 0.0, 0.6, 0.8];
        let neighbors = [1, -1, 0, -1];
        let sim = edge_similarity(&neighbors, 2, &[0, 1], &unit, 2);
        assert_eq!(sim, vec![0.6, 0.0, 0.6, 0.0]);
        let histogram = similarity_histogram(&neighbors, &sim);
        assert_eq!(histogram.iter().sum::<u32>(), 2);
        assert_eq!(histogram[similarity_bin(0.6)], 2);
        assert_eq!(
            kept_edges(&neighbors, 2, &sim, 0.5, &[0, 1]),
            (vec![[0, 1], [1, 0]], 2)
        );
        assert_eq!(kept_edges(&neighbors, 2, &sim, 0.7, &[0, 1]), (vec![], 2));
        // Ends renumbered, and pairs with a left-out end skipped.
        assert_eq!(
            kept_edges(&neighbors, 2, &sim, 0.5, &[1, 0]),
            (vec![[1, 0], [0, 1]], 2)
        );
        assert_eq!(
            kept_edges(&neighbors, 2, &sim, 0.5, &[0, NO_NODE]),
            (vec![], 0)
        );
    }
}
