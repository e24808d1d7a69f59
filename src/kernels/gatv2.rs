//! Twin of `shaders/gatv2.wgsl`: one GATv2 aggregation per destination and
//! head, fused — attention logits, online softmax, weighted sum of messages,
//! bias and optional ReLU — with no per-edge temporaries.

use rayon::prelude::*;

use crate::graph::Csr;

/// PyG's softmax adds this to the denominator.
pub const SOFTMAX_EPS: f32 = 1e-16;
/// GATv2's leaky ReLU slope.
pub const NEGATIVE_SLOPE: f32 = 0.2;

/// Per-layer constants of one aggregation.
#[derive(Clone, Copy)]
pub struct Gat<'a> {
    /// Heads H.
    pub heads: usize,
    /// Channels per head C.
    pub channels: usize,
    /// Attention vector `[H·C]`.
    pub att: &'a [f32],
    /// Output bias `[H·C]`.
    pub bias: &'a [f32],
    /// Apply ReLU to the output.
    pub relu: bool,
}

#[inline(always)]
fn leaky_relu(v: f32) -> f32 {
    // Equals `if v > 0 { v } else { v · slope }` for a slope in (0, 1), without a branch.
    v.max(v * NEGATIVE_SLOPE)
}

/// Edges whose logits one invocation computes together: their sums are
/// independent, so they pipeline, and the softmax rescales once per batch.
pub const EDGE_BATCH: usize = 8;

/// One invocation: destination `dst`, head `head`. `xl` is `[n_src, H·C]`
/// (messages), `xr` is `[n_dst, H·C]`; writes the head's C outputs to `out`.
/// Incoming edges are taken in batches of [`EDGE_BATCH`]: logits of a batch
/// (each summed over c in increasing order), then one online-softmax step.
#[inline]
pub fn gatv2_at(
    gat: &Gat,
    xl: &[f32],
    xr: &[f32],
    csr: &Csr,
    dst: usize,
    head: usize,
    out: &mut [f32],
) {
    let hc = gat.heads * gat.channels;
    let base = head * gat.channels;
    let xr_row = &xr[dst * hc + base..dst * hc + base + gat.channels];
    let att = &gat.att[base..base + gat.channels];
    let edge_begin = csr.offsets[dst] as usize;
    let edge_end = csr.offsets[dst + 1] as usize;
    // The running maximum starts at the lowest finite float, as in the shader
    // (WGSL has no infinity literal); the first batch always raises it.
    let mut running_max = f32::MIN;
    let mut denom = 0.0f32;
    out.fill(0.0);
    let mut batch_begin = edge_begin;
    while batch_begin < edge_end {
        let batch_len = EDGE_BATCH.min(edge_end - batch_begin);
        let mut rows = [0usize; EDGE_BATCH];
        for b in 0..batch_len {
            rows[b] = csr.sources[batch_begin + b] as usize * hc + base;
        }
        let mut logits = [0.0f32; EDGE_BATCH];
        for c in 0..gat.channels {
            for b in 0..batch_len {
                logits[b] += att[c] * leaky_relu(xl[rows[b] + c] + xr_row[c]);
            }
        }
        let mut new_max = running_max;
        for &logit in &logits[..batch_len] {
            new_max = new_max.max(logit);
        }
        // Before the first batch there is nothing to rescale (and
        // exp(f32::MIN − m) would take libm's slow underflow path).
        if new_max > running_max {
            if denom > 0.0 {
                let rescale = (running_max - new_max).exp();
                denom *= rescale;
                for value in out.iter_mut() {
                    *value *= rescale;
                }
            }
            running_max = new_max;
        }
        for b in 0..batch_len {
            let weight = (logits[b] - running_max).exp();
            denom += weight;
            let message = &xl[rows[b]..rows[b] + gat.channels];
            for c in 0..gat.channels {
                out[c] += weight * message[c];
            }
        }
        batch_begin += batch_len;
    }
    for c in 0..gat.channels {
        let v = out[c] / (denom + SOFTMAX_EPS) + gat.bias[base + c];
        out[c] = if gat.relu { v.max(0.0) } else { v };
    }
}

/// `out[d, :]` for every destination of `csr`; `out` is `[n_dst, H·C]`.
pub fn gatv2(gat: &Gat, xl: &[f32], xr: &[f32], csr: &Csr, out: &mut [f32]) {
    let hc = gat.heads * gat.channels;
    assert_eq!(out.len(), csr.n_dst() * hc);
    assert_eq!(xr.len(), csr.n_dst() * hc);
    out.par_chunks_mut(hc).enumerate().for_each(|(dst, row)| {
        for (head, head_out) in row.chunks_mut(gat.channels).enumerate() {
            gatv2_at(gat, xl, xr, csr, dst, head, head_out);
        }
    });
}
