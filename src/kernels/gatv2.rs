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

/// The online softmax of one destination and head: the running maximum of
/// the logits seen so far, the denominator, and (in the caller's `out`) the
/// weighted sum of the messages, shared by the scalar and vectorised paths.
struct OnlineSoftmax {
    running_max: f32,
    denom: f32,
}

impl OnlineSoftmax {
    fn new() -> Self {
        Self {
            // The lowest finite float, as in the shader (WGSL has no infinity
            // literal); the first batch always raises it.
            running_max: f32::MIN,
            denom: 0.0,
        }
    }

    /// One batch: `logits[b]` is the logit of the edge whose message is
    /// `xl[rows[b]..rows[b] + channels]`.
    #[inline]
    fn add_batch(
        &mut self,
        logits: &[f32],
        rows: &[usize],
        xl: &[f32],
        channels: usize,
        out: &mut [f32],
    ) {
        let mut new_max = self.running_max;
        for &logit in logits {
            new_max = new_max.max(logit);
        }
        // Before the first batch there is nothing to rescale (and
        // exp(f32::MIN − m) would take libm's slow underflow path).
        if new_max > self.running_max {
            if self.denom > 0.0 {
                let rescale = (self.running_max - new_max).exp();
                self.denom *= rescale;
                for value in out.iter_mut() {
                    *value *= rescale;
                }
            }
            self.running_max = new_max;
        }
        for (&logit, &row) in logits.iter().zip(rows) {
            let weight = (logit - self.running_max).exp();
            self.denom += weight;
            let message = &xl[row..row + channels];
            for (o, &m) in out.iter_mut().zip(message) {
                *o += weight * m;
            }
        }
    }

    /// The head's outputs: the normalised sum plus the bias, ReLU'd when asked.
    fn finish(&self, gat: &Gat, base: usize, out: &mut [f32]) {
        for c in 0..gat.channels {
            let v = out[c] / (self.denom + SOFTMAX_EPS) + gat.bias[base + c];
            out[c] = if gat.relu { v.max(0.0) } else { v };
        }
    }
}

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
    let mut softmax = OnlineSoftmax::new();
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
        softmax.add_batch(&logits[..batch_len], &rows, xl, gat.channels, out);
        batch_begin += batch_len;
    }
    softmax.finish(gat, base, out);
}

/// `out[d, :]` for every destination of `csr`; `out` is `[n_dst, H·C]`.
pub fn gatv2(gat: &Gat, xl: &[f32], xr: &[f32], csr: &Csr, out: &mut [f32]) {
    let hc = gat.heads * gat.channels;
    assert_eq!(out.len(), csr.n_dst() * hc);
    assert_eq!(xr.len(), csr.n_dst() * hc);
    let max_source = csr.sources.iter().max().map_or(0, |&s| s as usize + 1);
    assert!(xl.len() >= max_source * hc, "xl has a row per source");
    #[cfg(target_arch = "x86_64")]
    let avx2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    out.par_chunks_mut(hc)
        .enumerate()
        .with_min_len(64)
        .for_each(|(dst, row)| {
            #[cfg(target_arch = "x86_64")]
            if dst + PREFETCH_AHEAD < csr.n_dst() {
                x86::prefetch_sources(xl, hc, csr, dst + PREFETCH_AHEAD);
            }
            for (head, head_out) in row.chunks_mut(gat.channels).enumerate() {
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2 is present (checked above); every source
                    // row lies in `xl` (asserted above) and `dst` in `xr`.
                    unsafe { x86::gatv2_at_avx2(gat, xl, xr, csr, dst, head, head_out) };
                    continue;
                }
                gatv2_at(gat, xl, xr, csr, dst, head, head_out);
            }
        });
}

/// Destinations ahead of the current one whose message rows are prefetched:
/// the rows are gathered from all over `xl`, so without it most loads wait
/// for memory.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 4;

/// [`gatv2_at`] with the logits of a batch computed in one AVX2 register,
/// lane `b` holding edge `b`: the same operations in the same order per
/// logit (each a sum over c in increasing order of `att[c] · leaky_relu(…)`,
/// a multiply then an add), so the results are bit-identical.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Gat, OnlineSoftmax, EDGE_BATCH, NEGATIVE_SLOPE};
    use crate::graph::Csr;

    /// Asks for the message rows (all heads) of `dst`'s sources to be
    /// brought into cache; no effect on results.
    #[inline]
    pub(super) fn prefetch_sources(xl: &[f32], hc: usize, csr: &Csr, dst: usize) {
        const LINE: usize = 16;
        for &s in csr.sources_of(dst) {
            let row = &xl[s as usize * hc..(s as usize + 1) * hc];
            for line in row.chunks(LINE) {
                // SAFETY: prefetching has no memory effects; the pointer is in `xl`.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
            }
        }
    }

    /// Transposes 8 rows of 8 floats: lane `b` of result `c` is `rows[b][c]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// `logits += att[c] · leaky_relu(v + xr[c])`, lanes independent.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn logit_step(logits: __m256, v: __m256, xr: f32, att: f32) -> __m256 {
        let t = _mm256_add_ps(v, _mm256_set1_ps(xr));
        let leaky = _mm256_max_ps(t, _mm256_mul_ps(t, _mm256_set1_ps(NEGATIVE_SLOPE)));
        _mm256_add_ps(logits, _mm256_mul_ps(_mm256_set1_ps(att), leaky))
    }

    /// # Safety
    /// AVX2 must be present; `xl` must hold a row of `H·C` values for every
    /// source in `csr` and `xr` one for `dst`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gatv2_at_avx2(
        gat: &Gat,
        xl: &[f32],
        xr: &[f32],
        csr: &Csr,
        dst: usize,
        head: usize,
        out: &mut [f32],
    ) {
        let channels = gat.channels;
        let hc = gat.heads * channels;
        let base = head * channels;
        let xr_row = &xr[dst * hc + base..dst * hc + base + channels];
        let att = &gat.att[base..base + channels];
        let edge_begin = csr.offsets[dst] as usize;
        let edge_end = csr.offsets[dst + 1] as usize;
        let mut softmax = OnlineSoftmax::new();
        out.fill(0.0);
        let full_blocks = channels / 8;
        let mut batch_begin = edge_begin;
        while batch_begin < edge_end {
            let batch_len = EDGE_BATCH.min(edge_end - batch_begin);
            let mut rows = [0usize; EDGE_BATCH];
            for b in 0..EDGE_BATCH {
                // Lanes past the batch repeat its first edge; their logits are unused.
                let edge = batch_begin + if b < batch_len { b } else { 0 };
                rows[b] = csr.sources[edge] as usize * hc + base;
            }
            let ptr = xl.as_ptr();
            let mut logits = _mm256_setzero_ps();
            for block in 0..full_blocks {
                let c0 = block * 8;
                // SAFETY: rows[b] + c0 + 8 <= rows[b] + channels, inside source row.
                let mut loaded = [_mm256_setzero_ps(); 8];
                for b in 0..8 {
                    loaded[b] = _mm256_loadu_ps(ptr.add(rows[b] + c0));
                }
                let columns = transpose8(loaded);
                for (c, &v) in columns.iter().enumerate() {
                    logits = logit_step(logits, v, xr_row[c0 + c], att[c0 + c]);
                }
            }
            for c in full_blocks * 8..channels {
                let lane = |b: usize| xl[rows[b] + c];
                let v = _mm256_setr_ps(
                    lane(0),
                    lane(1),
                    lane(2),
                    lane(3),
                    lane(4),
                    lane(5),
                    lane(6),
                    lane(7),
                );
                logits = logit_step(logits, v, xr_row[c], att[c]);
            }
            let mut logit = [0.0f32; EDGE_BATCH];
            // SAFETY: `logit` holds 8 floats.
            unsafe { _mm256_storeu_ps(logit.as_mut_ptr(), logits) };
            softmax.add_batch(&logit[..batch_len], &rows, xl, channels, out);
            batch_begin += batch_len;
        }
        softmax.finish(gat, base, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel (and, where available, vectorised) evaluation equals the
    /// one-invocation twin bit for bit, for in-degrees 0 to 20 (partial and
    /// several batches) and widths with and without a partial 8-channel block.
    #[test]
    fn fast_path_equals_single_invocation() {
        let mut seed = 12345u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        };
        for (heads, channels) in [(3, 32), (2, 16), (1, 5), (2, 12), (4, 8)] {
            let hc = heads * channels;
            let (n_src, n_dst) = (37, 21);
            let edges: Vec<(u32, u32)> = (0..n_dst as u32)
                .flat_map(|d| (0..d).map(move |i| ((d * 7 + i * 3) % n_src as u32, d)))
                .collect();
            let csr = Csr::from_edges(n_dst, edges.iter().copied());
            let xl: Vec<f32> = (0..n_src * hc).map(|_| next()).collect();
            let xr: Vec<f32> = (0..n_dst * hc).map(|_| next()).collect();
            let att: Vec<f32> = (0..hc).map(|_| next()).collect();
            let bias: Vec<f32> = (0..hc).map(|_| next()).collect();
            for relu in [false, true] {
                let gat = Gat {
                    heads,
                    channels,
                    att: &att,
                    bias: &bias,
                    relu,
                };
                let mut out = vec![0.0; n_dst * hc];
                gatv2(&gat, &xl, &xr, &csr, &mut out);
                for dst in 0..n_dst {
                    for head in 0..heads {
                        let mut twin = vec![0.0; channels];
                        gatv2_at(&gat, &xl, &xr, &csr, dst, head, &mut twin);
                        let got = &out[dst * hc + head * channels..][..channels];
                        for c in 0..channels {
                            assert_eq!(
                                got[c].to_bits(),
                                twin[c].to_bits(),
                                "H {heads} C {channels} dst {dst} head {head} c {c}"
                            );
                        }
                    }
                }
            }
        }
    }
}
