//! Twin of `shaders/embed.wgsl`: embedding gather followed by ReLU.

use rayon::prelude::*;

use super::ROWS_PER_TASK;

/// One invocation: element `idx` of the `[n, dim]` output,
/// `max(table[tokens[idx / dim], idx % dim], 0)`.
#[inline]
pub fn embed_relu_at(table: &[f32], dim: usize, tokens: &[u32], idx: usize) -> f32 {
    let row = idx / dim;
    let col = idx % dim;
    table[tokens[row] as usize * dim + col].max(0.0)
}

/// `out[i, :] = relu(table[tokens[i], :])` for every row.
pub fn embed_relu(table: &[f32], dim: usize, tokens: &[u32], out: &mut [f32]) {
    assert_eq!(out.len(), tokens.len() * dim);
    out.par_chunks_mut(ROWS_PER_TASK * dim)
        .enumerate()
        .for_each(|(chunk, block)| {
            let base = chunk * ROWS_PER_TASK * dim;
            for (offset, value) in block.iter_mut().enumerate() {
                *value = embed_relu_at(table, dim, tokens, base + offset);
            }
        });
}
