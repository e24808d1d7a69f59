//! Stage `fragments` (docs/contract.md §9): transcripts no nucleus claims,
//! grouped into connected components of similar fragment neighbours.

use std::collections::HashMap;

use anyhow::Result;

use super::prepare::Prepared;
use crate::backend::{Backend, FragmentSlots};
use crate::graph::knn::{knn_3d, DistanceCap};
use crate::io::TranscriptKey;
use crate::kernels::edge_similarity::{kept_edges, HISTOGRAM_BINS, NO_NODE};
use crate::model::Model;

/// Fragment detection parameters.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FragmentParams {
    /// Neighbours per transcript, itself included (so k_tx − 1 others).
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

/// Per kept transcript: at most `k_tx − 1` fragment neighbours (docs/contract.md
/// §5): its `k_tx` nearest kept transcripts within `dist_tx`, itself
/// included, then itself removed — the tx–tx neighbour lists without the
/// self loop. `[n, k_tx]`, −1 padded. With duplicate coordinates a
/// transcript may not be among its own `k_tx` nearest (lower indices at
/// distance 0 come first); it then keeps all `k_tx`.
pub fn fragment_neighbours(positions: &[[f64; 3]], k_tx: usize, dist_tx: Option<f64>) -> Vec<i32> {
    let cap = dist_tx.map_or(DistanceCap::None, DistanceCap::Inclusive);
    let mut nn = knn_3d(positions, k_tx, cap, false);
    if k_tx > 0 {
        for (i, row) in nn.index.chunks_mut(k_tx).enumerate() {
            if let Some(at) = row.iter().position(|&j| j == i as i32) {
                row.copy_within(at + 1.., at);
                row[k_tx - 1] = -1;
            }
        }
    }
    nn.index
}

/// The fragments of a sample.
pub struct Fragments {
    /// Per kept transcript: its fragment, an index into `ids`.
    pub fragment_of: Vec<Option<u32>>,
    /// `fragment-<smallest transcript_id>` of every fragment, in that id's order.
    pub ids: Vec<String>,
    /// Facts for the log.
    pub summary: FragmentSummary,
}

/// What the fragment stage found, for the log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FragmentSummary {
    /// Kept transcripts no nucleus claimed.
    pub candidates: usize,
    /// Fragment-neighbour pairs of all kept transcripts (the median's sample).
    pub neighbour_edges: usize,
    /// Of those, pairs whose two ends are both unclaimed.
    pub candidate_edges: usize,
    /// Sample-wide median similarity (`None` without any pair).
    pub median_similarity: Option<f32>,
    /// Similarity an edge needs: max(median, cut).
    pub threshold: f32,
    /// Candidate pairs at or above the threshold.
    pub kept_edges: usize,
    /// Components of at least `min_transcripts`.
    pub fragments: usize,
    /// Transcripts in them.
    pub fragment_transcripts: usize,
}

/// Groups the unclaimed kept transcripts into fragments (docs/contract.md §9).
pub fn run(
    prepared: &Prepared,
    assigned: &[bool],
    id_key: &[TranscriptKey],
    model: &Model,
    params: &FragmentParams,
    backend: &mut dyn Backend,
) -> Result<Fragments> {
    let dim = model.arch.emb;
    let unit = normalised_embeddings(&model.tx_embedding, dim);
    let neighbors = fragment_neighbours(&prepared.pos, params.k_tx, params.dist_tx);
    let k = params.k_tx;
    let scored = backend.fragment_similarity(FragmentSlots {
        neighbors: &neighbors,
        k,
        tokens: &prepared.tokens,
        unit: &unit,
        dim,
    })?;
    let median = histogram_median(&scored.histogram);
    let threshold = median.map_or(params.cut, |m| m.max(params.cut));

    // Components run over the unclaimed transcripts only, so that a claimed
    // one can never become a fragment of its own (min_transcripts = 1).
    let mut candidate_of = vec![NO_NODE; assigned.len()];
    let mut candidates: Vec<u32> = Vec::new();
    for (i, _) in assigned.iter().enumerate().filter(|(_, &a)| !a) {
        candidate_of[i] = candidates.len() as u32;
        candidates.push(i as u32);
    }
    let (edges, candidate_edges) =
        kept_edges(&neighbors, k, &scored.similarity, threshold, &candidate_of);
    let labels = backend.components(candidates.len(), &edges)?;

    let (fragment_of, ids) = name_components(
        &labels,
        &candidates,
        &prepared.kept,
        id_key,
        params.min_transcripts,
    );
    let summary = FragmentSummary {
        candidates: candidates.len(),
        neighbour_edges: neighbors.iter().filter(|&&j| j >= 0).count(),
        candidate_edges,
        median_similarity: median,
        threshold,
        kept_edges: edges.len(),
        fragments: ids.len(),
        fragment_transcripts: fragment_of.iter().filter(|f| f.is_some()).count(),
    };
    Ok(Fragments {
        fragment_of,
        ids,
        summary,
    })
}

/// Fragments from the components of the candidates: `labels[c]` is the
/// component of candidate `c` (kept transcript `candidates[c]`, input row
/// `kept[candidates[c]]`), any label order-preserving in the smallest
/// candidate of the component. Components of at least `min_transcripts`
/// become fragments, named `fragment-<smallest transcript id>` and listed
/// in that id's order. Returns the fragment of every kept transcript and
/// the ids.
pub fn name_components(
    labels: &[u32],
    candidates: &[u32],
    kept: &[u32],
    id_key: &[TranscriptKey],
    min_transcripts: usize,
) -> (Vec<Option<u32>>, Vec<String>) {
    let mut size: HashMap<u32, usize> = HashMap::new();
    for &l in labels {
        *size.entry(l).or_default() += 1;
    }
    // Smallest transcript id of each component, for its deterministic name.
    let row_of = |c: usize| kept[candidates[c] as usize] as usize;
    let mut smallest: HashMap<u32, usize> = HashMap::new();
    for (c, &l) in labels.iter().enumerate() {
        if size[&l] < min_transcripts {
            continue;
        }
        let row = row_of(c);
        let entry = smallest.entry(l).or_insert(row);
        if id_key[row] < id_key[*entry] {
            *entry = row;
        }
    }
    let mut roots: Vec<(u32, usize)> = smallest.into_iter().collect();
    roots.sort_by(|a, b| {
        id_key[a.1]
            .partial_cmp(&id_key[b.1])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.0.cmp(&b.0))
    });
    let slot: HashMap<u32, u32> = roots
        .iter()
        .enumerate()
        .map(|(s, &(l, _))| (l, s as u32))
        .collect();
    let ids: Vec<String> = roots
        .iter()
        .map(|&(_, row)| format!("fragment-{}", id_key[row]))
        .collect();
    let mut fragment_of = vec![None; kept.len()];
    for (c, &l) in labels.iter().enumerate() {
        if let Some(&s) = slot.get(&l) {
            fragment_of[candidates[c] as usize] = Some(s);
        }
    }
    (fragment_of, ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::edge_similarity::similarity_bin;

    #[test]
    fn fragment_neighbours_are_the_tx_tx_lists_without_self() {
        let line: Vec<[f64; 3]> = (0..4).map(|i| [i as f64, 0.0, 0.0]).collect();
        // Equal distances go to the lower index; the cap is inclusive.
        assert_eq!(
            fragment_neighbours(&line, 3, Some(1.0)),
            vec![1, -1, -1, 0, 2, -1, 1, 3, -1, 2, -1, -1]
        );
        assert_eq!(
            fragment_neighbours(&line, 3, None),
            vec![1, 2, -1, 0, 2, -1, 1, 3, -1, 2, 1, -1]
        );
        // Three transcripts at one spot: the third's two nearest are the
        // lower-index duplicates, so it keeps both.
        let same = [[0.0; 3]; 3];
        assert_eq!(
            fragment_neighbours(&same, 2, Some(1.0)),
            vec![1, -1, 0, -1, 0, 1]
        );
        assert!(fragment_neighbours(&line, 0, None).is_empty());
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
