//! Twin of `shaders/score.wgsl`: receptive-field scoring (docs/contract.md §8). For each
//! transcript, score every candidate nucleus and keep the best one.

use rayon::prelude::*;

use crate::graph::ReceptiveField;

/// Score of one transcript–nucleus dot product: sigmoid, except an exact
/// zero (segger's padding) scores 0.
#[inline(always)]
pub fn score_of(dot: f32) -> f32 {
    if dot == 0.0 {
        0.0
    } else {
        1.0 / (1.0 + (-dot).exp())
    }
}

/// Receptive-field slots scored together.
pub const SLOT_BATCH: usize = 8;

/// One invocation: transcript `tx`. Returns `(best score, best nucleus)`;
/// ties go to the lower nucleus index; `(0.0, -1)` when there is no candidate.
#[inline]
pub fn best_at(
    z_tx: &[f32],
    z_bd: &[f32],
    dim: usize,
    rf: &ReceptiveField,
    tx: usize,
) -> (f32, i32) {
    let tx_row = &z_tx[tx * dim..(tx + 1) * dim];
    let mut best_score = -1.0f32;
    let mut best_index = -1i32;
    // Candidates are scored in batches so their dot products (each summed
    // over c in increasing order) pipeline; the shader batches the same way.
    let mut batch_begin = 0;
    while batch_begin < rf.k {
        let batch_len = SLOT_BATCH.min(rf.k - batch_begin);
        let nuclei = &rf.index[tx * rf.k + batch_begin..tx * rf.k + batch_begin + batch_len];
        let mut dots = [0.0f32; SLOT_BATCH];
        for c in 0..dim {
            for (dot, &nucleus) in dots.iter_mut().zip(nuclei) {
                if nucleus >= 0 {
                    *dot += tx_row[c] * z_bd[nucleus as usize * dim + c];
                }
            }
        }
        for (&dot, &nucleus) in dots.iter().zip(nuclei) {
            if nucleus < 0 {
                continue;
            }
            let score = score_of(dot);
            if score > best_score || (score == best_score && nucleus < best_index) {
                best_score = score;
                best_index = nucleus;
            }
        }
        batch_begin += batch_len;
    }
    if best_index < 0 {
        best_score = 0.0;
    }
    (best_score, best_index)
}

/// Best score and nucleus for every transcript of the receptive field.
pub fn best(z_tx: &[f32], z_bd: &[f32], dim: usize, rf: &ReceptiveField) -> (Vec<f32>, Vec<i32>) {
    let n_tx = z_tx.len() / dim.max(1);
    let pairs: Vec<(f32, i32)> = (0..n_tx)
        .into_par_iter()
        .with_min_len(1024)
        .map(|tx| best_at(z_tx, z_bd, dim, rf, tx))
        .collect();
    pairs.into_iter().unzip()
}
