//! The CPU engine's fast training kernels: the same mathematics as the
//! shader twins in [`super::kernels`] (which stay the GPU's reference),
//! evaluated in the order a CPU is fast at. Sums over the channels of a head
//! run in 8 lanes added in a fixed tree, products are fused multiply-adds,
//! the GATv2 backward sends each source its gradient directly (no per-edge
//! buffer), the input gradient runs on the register-blocked kernel of
//! inference ([`crate::kernels::linear`]) and the weight gradient on a
//! register-blocked kernel of its own that reads the activations in place. Results differ from the twins by
//! rounding only (unit tests bound the difference); every reduction still
//! runs in an order fixed by the graph, never by the thread count, and
//! `f32::mul_add` rounds the same with or without hardware FMA, so the same
//! inputs give the same bits on any machine and any number of threads.

// Index loops on purpose: they read like the twins they mirror.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use super::kernels::{portable_exp, AdamConfig, REDUCE_ROWS};
use crate::graph::Csr;
use crate::kernels::gatv2::{Gat, NEGATIVE_SLOPE, SOFTMAX_EPS};
use crate::kernels::linear::{self, Linear};

/// Lanes of the channel sums: one AVX register.
const LANES: usize = 8;

type Lanes = [f32; LANES];

#[inline(always)]
fn lanes(s: &[f32]) -> Lanes {
    let mut v = [0.0; LANES];
    v.copy_from_slice(&s[..LANES]);
    v
}

/// `Σ_c att[c] · leaky_relu(a[c] + b[c])` over one head's channels (a
/// multiple of [`LANES`]): lane-wise fused sums, then the lanes in a fixed tree.
#[inline(always)]
fn attention_logit(att: &[f32], a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for c0 in (0..att.len()).step_by(LANES) {
        let (w, x, y) = (lanes(&att[c0..]), lanes(&a[c0..]), lanes(&b[c0..]));
        for i in 0..LANES {
            let u = x[i] + y[i];
            acc[i] = w[i].mul_add(u.max(u * NEGATIVE_SLOPE), acc[i]);
        }
    }
    lane_sum(acc)
}

/// `Σ_c a[c] · b[c]` over a multiple of [`LANES`] channels, as [`attention_logit`] sums.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for c0 in (0..a.len()).step_by(LANES) {
        let (x, y) = (lanes(&a[c0..]), lanes(&b[c0..]));
        for i in 0..LANES {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    lane_sum(acc)
}

#[inline(always)]
fn lane_sum(v: Lanes) -> f32 {
    let q = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (q[0] + q[2]) + (q[1] + q[3])
}

/// [`attention_logit`] in AVX2 registers (the sums' lanes in one register):
/// the same fused sums per lane and the same tree over the lanes, so the
/// same bits. The compiler vectorised the portable loop two lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn attention_logit_fma(att: &[f32], a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    assert!(att.len().is_multiple_of(LANES) && a.len() >= att.len() && b.len() >= att.len());
    let slope = _mm256_set1_ps(NEGATIVE_SLOPE);
    let mut acc = _mm256_setzero_ps();
    for c0 in (0..att.len()).step_by(LANES) {
        // SAFETY: c0 + LANES <= att.len() <= a.len(), b.len() (asserted above).
        let (w, x, y) = unsafe {
            (
                _mm256_loadu_ps(att.as_ptr().add(c0)),
                _mm256_loadu_ps(a.as_ptr().add(c0)),
                _mm256_loadu_ps(b.as_ptr().add(c0)),
            )
        };
        let u = _mm256_add_ps(x, y);
        // `u.max(u · slope)`: the two differ only where u is NaN, and then
        // both operands are NaN.
        let leaky = _mm256_max_ps(_mm256_mul_ps(u, slope), u);
        acc = _mm256_fmadd_ps(w, leaky, acc);
    }
    lane_sum_fma(acc)
}

/// [`dot`] in AVX2 registers, as [`attention_logit_fma`]: the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    assert!(a.len().is_multiple_of(LANES) && b.len() >= a.len());
    let mut acc = _mm256_setzero_ps();
    for c0 in (0..a.len()).step_by(LANES) {
        // SAFETY: c0 + LANES <= a.len() <= b.len() (asserted above).
        let (x, y) = unsafe {
            (
                _mm256_loadu_ps(a.as_ptr().add(c0)),
                _mm256_loadu_ps(b.as_ptr().add(c0)),
            )
        };
        acc = _mm256_fmadd_ps(x, y, acc);
    }
    lane_sum_fma(acc)
}

/// [`lane_sum`] of one AVX register: `(v0 + v4) + (v2 + v6)` plus
/// `(v1 + v5) + (v3 + v7)`, the same tree.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn lane_sum_fma(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let r = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
}

/// [`attention_logit`], in AVX2 registers where `avx` says the CPU has them.
#[inline(always)]
fn attention_logit_on(avx: bool, att: &[f32], a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: `avx` is `simd_available()`: the features are present.
        return unsafe { attention_logit_fma(att, a, b) };
    }
    let _ = avx;
    attention_logit(att, a, b)
}

/// [`dot`], in AVX2 registers where `avx` says the CPU has them.
#[inline(always)]
fn dot_on(avx: bool, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: `avx` is `simd_available()`: the features are present.
        return unsafe { dot_fma(a, b) };
    }
    let _ = avx;
    dot(a, b)
}

/// Asks for `row` in the cache ahead of its use: the kernels gather rows
/// by index, which the hardware prefetchers do not foresee. A hint only:
/// no effect on any result.
#[inline(always)]
fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of x86_64; a prefetch reads and writes nothing.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// [`prefetch`] of the `xl` rows of destination `dst + 1`'s sources, while
/// `dst`'s are computed: a destination has few edges (about five), so a
/// prefetch one edge ahead left each destination's first row a cache miss.
#[inline(always)]
fn prefetch_next_sources(xl: &[f32], hc: usize, csr: &Csr, dst: usize) {
    if dst + 2 < csr.offsets.len() {
        let next = csr.offsets[dst + 1] as usize..csr.offsets[dst + 2] as usize;
        for &src in &csr.sources[next] {
            prefetch(&xl[src as usize * hc..(src as usize + 1) * hc]);
        }
    }
}

#[inline(always)]
fn leaky_relu_slope(u: f32) -> f32 {
    if u > 0.0 {
        1.0
    } else {
        NEGATIVE_SLOPE
    }
}

/// Whether the fast GATv2 kernels cover `gat` (channels a multiple of the
/// lanes); otherwise the twins run.
fn lanes_fit(gat: &Gat) -> bool {
    gat.channels.is_multiple_of(LANES)
}

/// Whether the CPU has AVX2 and FMA, for which the kernels' `*_simd`
/// copies are compiled. The results are the same either way: `mul_add` is
/// fused with or without hardware FMA, and no sum is left to the compiler to
/// reorder.
fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$simd`, `$body` compiled for AVX2 and FMA, and `$dispatch`,
/// which calls it where the CPU has them and `$body` elsewhere; where the
/// CPU has AVX-512F too (unless `avx2 only:`), a copy compiled for it,
/// whose element-wise loops run 16 lanes wide (no sum is left to the
/// compiler to reorder, so the same bits). The GATv2 forward is `avx2
/// only`: its AVX-512 copy took about a quarter more time.
macro_rules! simd_copy {
    ($dispatch:ident, $simd:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        simd_copy!(@ $dispatch, $simd, $body, ($($arg: $ty),*), {
            #[target_feature(enable = "avx2,fma,avx512f")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn wide($($arg: $ty),*) {
                $body($($arg),*)
            }
            if crate::kernels::avx512_available() {
                // SAFETY: AVX-512F is present (checked just now), AVX2 and
                // FMA by the contract of the function this block opens.
                return wide($($arg),*);
            }
        });
    };
    (avx2 only: $dispatch:ident, $simd:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        simd_copy!(@ $dispatch, $simd, $body, ($($arg: $ty),*), {});
    };
    (@ $dispatch:ident, $simd:ident, $body:ident, ($($arg:ident: $ty:ty),*), {$($wide:tt)*}) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $simd($($arg: $ty),*) {
            $($wide)*
            $body($($arg),*)
        }

        #[allow(clippy::too_many_arguments)]
        fn $dispatch(simd: bool, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `simd` is `simd_available()`: the features are present.
                return unsafe { $simd($($arg),*) };
            }
            let _ = simd;
            $body($($arg),*)
        }
    };
}

simd_copy!(avx2 only: forward_destination_dispatch, forward_destination_simd, forward_destination,
    (avx: bool, gat: &Gat, xl: &[f32], xr: &[f32], csr: &Csr, dst: usize, out: &mut [f32],
     alpha_dst: &mut [f32]));
simd_copy!(backward_destination_dispatch, backward_destination_simd, backward_destination,
    (avx: bool, gat: &Gat, xl: &[f32], xr: &[f32], csr: &Csr, alpha: &[f32], g: &[f32], dst: usize,
     dxr_row: &mut [f32], datt_row: &mut [f32], dbias_l_row: &mut [f32], d_logit_dst: &mut [f32]));
simd_copy!(backward_source_dispatch, backward_source_simd, backward_source,
    (gat: &Gat, xl: &[f32], xr: &[f32], alpha: &[f32], g: &[f32], d_logit: &[f32],
     by_source: &Csr, edge_dst: &[u32], src: usize, row: &mut [f32]));

/// Splits `flat` into one slice per destination of `csr`, `per_edge` values per edge.
fn per_destination<'a>(csr: &Csr, per_edge: usize, flat: &'a mut [f32]) -> Vec<&'a mut [f32]> {
    let mut parts = Vec::with_capacity(csr.n_dst());
    let mut rest = flat;
    for d in 0..csr.n_dst() {
        let n = (csr.offsets[d + 1] - csr.offsets[d]) as usize * per_edge;
        let (mine, tail) = rest.split_at_mut(n);
        parts.push(mine);
        rest = tail;
    }
    parts
}

/// The training forward of one relation, as [`super::kernels::gatv2_forward`]
/// computes it: `out` `[n_dst, H·C]`, `alpha` `[E, H]`.
pub fn gatv2_forward(
    gat: &Gat,
    xl: &[f32],
    xr: &[f32],
    csr: &Csr,
    out: &mut [f32],
    alpha: &mut [f32],
) {
    if !lanes_fit(gat) {
        return super::kernels::gatv2_forward(gat, xl, xr, csr, out, alpha);
    }
    let hc = gat.heads * gat.channels;
    let alpha_rows = per_destination(csr, gat.heads, alpha);
    let simd = simd_available();
    out.par_chunks_mut(hc)
        .zip(alpha_rows.into_par_iter())
        .enumerate()
        .for_each(|(dst, (row, alpha_dst))| {
            forward_destination_dispatch(simd, simd, gat, xl, xr, csr, dst, row, alpha_dst)
        });
}

/// Every head of destination `dst`: logits, softmax (max subtracted, sum
/// plus 1e-16, edges in order), then the weighted sum of messages, all
/// heads of one edge at a time.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_destination(
    avx: bool,
    gat: &Gat,
    xl: &[f32],
    xr: &[f32],
    csr: &Csr,
    dst: usize,
    out: &mut [f32],
    alpha_dst: &mut [f32],
) {
    let (heads, channels) = (gat.heads, gat.channels);
    let hc = heads * channels;
    let xr_row = &xr[dst * hc..(dst + 1) * hc];
    let (begin, end) = (csr.offsets[dst] as usize, csr.offsets[dst + 1] as usize);
    let sources = &csr.sources[begin..end];
    prefetch_next_sources(xl, hc, csr, dst);
    for (i, &src) in sources.iter().enumerate() {
        let xl_row = &xl[src as usize * hc..(src as usize + 1) * hc];
        for head in 0..heads {
            let span = head * channels..(head + 1) * channels;
            alpha_dst[i * heads + head] = attention_logit_on(
                avx,
                &gat.att[span.clone()],
                &xl_row[span.clone()],
                &xr_row[span],
            );
        }
    }
    for head in 0..heads {
        let mut max = f32::MIN;
        for i in 0..sources.len() {
            max = max.max(alpha_dst[i * heads + head]);
        }
        let mut denom = 0.0f32;
        for i in 0..sources.len() {
            let slot = &mut alpha_dst[i * heads + head];
            *slot = portable_exp(*slot - max);
            denom += *slot;
        }
        for i in 0..sources.len() {
            alpha_dst[i * heads + head] /= denom + SOFTMAX_EPS;
        }
    }
    out.fill(0.0);
    for (i, &src) in sources.iter().enumerate() {
        let xl_row = &xl[src as usize * hc..(src as usize + 1) * hc];
        for head in 0..heads {
            let a = alpha_dst[i * heads + head];
            let span = head * channels..(head + 1) * channels;
            for (o, &m) in out[span.clone()].iter_mut().zip(&xl_row[span]) {
                *o = a.mul_add(m, *o);
            }
        }
    }
    for c in 0..hc {
        let v = out[c] + gat.bias[c];
        out[c] = if gat.relu { v.max(0.0) } else { v };
    }
}

/// What [`gatv2_backward`] writes.
pub struct GatBackward<'a> {
    /// `[n_dst, H·C]` d/d xr.
    pub dxr: &'a mut [f32],
    /// `[n_src, H·C]` d/d xl: each source's outgoing edges summed in the
    /// order of `by_source`.
    pub dxl: &'a mut [f32],
    /// `[n_dst, H·C]` each destination's contribution to d/d att.
    pub datt_dst: &'a mut [f32],
    /// `[n_dst, H·C]` each destination's contribution to d/d lin_l's bias
    /// (`g + d xr`, 0 without incoming edges).
    pub dbias_l_dst: &'a mut [f32],
}

/// The GATv2 backward of one relation, as [`super::kernels::gatv2_backward`]
/// followed by [`super::kernels::gather_edges`] computes it, without the
/// per-edge buffer: destinations first (d logit of every edge and head, d xr,
/// d att), then each source sums `α g + d logit · att · leaky'(u)` over its
/// outgoing edges (`by_source`: edge ids per source, ascending; `edge_dst`:
/// each edge's destination). `g` is d loss / d output (ReLU mask applied).
#[allow(clippy::too_many_arguments)]
pub fn gatv2_backward(
    gat: &Gat,
    xl: &[f32],
    xr: &[f32],
    csr: &Csr,
    alpha: &[f32],
    g: &[f32],
    by_source: &Csr,
    edge_dst: &[u32],
    grads: GatBackward,
) {
    let hc = gat.heads * gat.channels;
    if !lanes_fit(gat) {
        let mut dxl_edge = vec![0.0; csr.n_edges() * hc];
        super::kernels::gatv2_backward(
            gat,
            xl,
            xr,
            csr,
            alpha,
            g,
            super::kernels::GatGrads {
                dxr: grads.dxr,
                dxl_edge: &mut dxl_edge,
                datt_dst: grads.datt_dst,
                dbias_l_dst: grads.dbias_l_dst,
            },
        );
        return super::kernels::gather_edges(by_source, &dxl_edge, hc, grads.dxl);
    }
    let simd = simd_available();
    let mut d_logit = vec![0.0f32; csr.n_edges() * gat.heads];
    let d_logit_rows = per_destination(csr, gat.heads, &mut d_logit);
    grads
        .dxr
        .par_chunks_mut(hc)
        .zip(grads.datt_dst.par_chunks_mut(hc))
        .zip(grads.dbias_l_dst.par_chunks_mut(hc))
        .zip(d_logit_rows.into_par_iter())
        .enumerate()
        .for_each(|(dst, (((dxr_row, datt_row), dbias_l_row), d_logit_dst))| {
            backward_destination_dispatch(
                simd,
                simd,
                gat,
                xl,
                xr,
                csr,
                alpha,
                g,
                dst,
                dxr_row,
                datt_row,
                dbias_l_row,
                d_logit_dst,
            )
        });
    grads
        .dxl
        .par_chunks_mut(hc)
        .enumerate()
        .for_each(|(src, row)| {
            backward_source_dispatch(
                simd, gat, xl, xr, alpha, g, &d_logit, by_source, edge_dst, src, row,
            )
        });
}

/// Destination `dst` of [`gatv2_backward`]: per head, dα_e = g · m_e,
/// d logit_e = α_e (dα_e − Σ_f α_f dα_f) (into `d_logit_dst`); then d xr
/// (relative to the first edge's slope, as the twin
/// [`super::kernels::gatv2_backward_at`] explains), d att and lin_l's bias
/// row `g + d xr` over the edges in order.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_destination(
    avx: bool,
    gat: &Gat,
    xl: &[f32],
    xr: &[f32],
    csr: &Csr,
    alpha: &[f32],
    g: &[f32],
    dst: usize,
    dxr_row: &mut [f32],
    datt_row: &mut [f32],
    dbias_l_row: &mut [f32],
    d_logit_dst: &mut [f32],
) {
    let (heads, channels) = (gat.heads, gat.channels);
    let hc = heads * channels;
    let (begin, end) = (csr.offsets[dst] as usize, csr.offsets[dst + 1] as usize);
    let sources = &csr.sources[begin..end];
    let g_row = &g[dst * hc..(dst + 1) * hc];
    let xr_row = &xr[dst * hc..(dst + 1) * hc];
    dxr_row.fill(0.0);
    datt_row.fill(0.0);
    let Some(&first) = sources.first() else {
        dbias_l_row.fill(0.0);
        return;
    };
    let first_row = &xl[first as usize * hc..(first as usize + 1) * hc];
    prefetch_next_sources(xl, hc, csr, dst);
    for (i, &src) in sources.iter().enumerate() {
        let xl_row = &xl[src as usize * hc..(src as usize + 1) * hc];
        for head in 0..heads {
            let span = head * channels..(head + 1) * channels;
            d_logit_dst[i * heads + head] = dot_on(avx, &g_row[span.clone()], &xl_row[span]);
        }
    }
    for head in 0..heads {
        let mut weighted = 0.0f32;
        for i in 0..sources.len() {
            let a = alpha[(begin + i) * heads + head];
            weighted = a.mul_add(d_logit_dst[i * heads + head], weighted);
        }
        for i in 0..sources.len() {
            let a = alpha[(begin + i) * heads + head];
            let slot = &mut d_logit_dst[i * heads + head];
            *slot = a * (*slot - weighted);
        }
    }
    for (i, &src) in sources.iter().enumerate() {
        let xl_row = &xl[src as usize * hc..(src as usize + 1) * hc];
        for head in 0..heads {
            let d = d_logit_dst[i * heads + head];
            let span = head * channels..(head + 1) * channels;
            for (((((datt, dxr), &w), &m), &m_first), &r) in datt_row[span.clone()]
                .iter_mut()
                .zip(&mut dxr_row[span.clone()])
                .zip(&gat.att[span.clone()])
                .zip(&xl_row[span.clone()])
                .zip(&first_row[span.clone()])
                .zip(&xr_row[span])
            {
                let u = m + r;
                let slope_change = leaky_relu_slope(u) - leaky_relu_slope(m_first + r);
                *datt = d.mul_add(u.max(u * NEGATIVE_SLOPE), *datt);
                *dxr = (d * w).mul_add(slope_change, *dxr);
            }
        }
    }
    for ((bias, &grad), &dxr) in dbias_l_row.iter_mut().zip(g_row).zip(&*dxr_row) {
        *bias = grad + dxr;
    }
}

/// Source `src` of [`gatv2_backward`]: d m = α g + d logit · att · leaky'(u)
/// summed over its outgoing edges in `by_source` order.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_source(
    gat: &Gat,
    xl: &[f32],
    xr: &[f32],
    alpha: &[f32],
    g: &[f32],
    d_logit: &[f32],
    by_source: &Csr,
    edge_dst: &[u32],
    src: usize,
    row: &mut [f32],
) {
    let (heads, channels) = (gat.heads, gat.channels);
    let hc = heads * channels;
    let xl_row = &xl[src * hc..(src + 1) * hc];
    row.fill(0.0);
    let edges =
        &by_source.sources[by_source.offsets[src] as usize..by_source.offsets[src + 1] as usize];
    // The next source's destination rows, while this source's are computed
    // (as [`prefetch_next_sources`]).
    if src + 2 < by_source.offsets.len() {
        let next = by_source.offsets[src + 1] as usize..by_source.offsets[src + 2] as usize;
        for &e in &by_source.sources[next] {
            let dst = edge_dst[e as usize] as usize;
            prefetch(&g[dst * hc..(dst + 1) * hc]);
            prefetch(&xr[dst * hc..(dst + 1) * hc]);
        }
    }
    for &e in edges {
        let e = e as usize;
        let dst = edge_dst[e] as usize;
        let g_row = &g[dst * hc..(dst + 1) * hc];
        let xr_row = &xr[dst * hc..(dst + 1) * hc];
        for head in 0..heads {
            let a = alpha[e * heads + head];
            let d = d_logit[e * heads + head];
            let span = head * channels..(head + 1) * channels;
            for ((((out, &w), &m), &r), &grad) in row[span.clone()]
                .iter_mut()
                .zip(&gat.att[span.clone()])
                .zip(&xl_row[span.clone()])
                .zip(&xr_row[span.clone()])
                .zip(&g_row[span])
            {
                let u = m + r;
                *out += a.mul_add(grad, (d * w) * leaky_relu_slope(u));
            }
        }
    }
}

/// ReLU backward in place, as [`super::kernels::relu_backward`]: `g[i] = 0`
/// where the layer's output `out[i]` is not positive; in blocks of rows
/// (one task per element costs more than the element). Every element is
/// written (a select, not a branch), so that the loop vectorises.
pub fn relu_backward(g: &mut [f32], out: &[f32]) {
    const BLOCK: usize = 1 << 14;
    g.par_chunks_mut(BLOCK)
        .zip(out.par_chunks(BLOCK))
        .for_each(|(g, out)| {
            for (g, &o) in g.iter_mut().zip(out) {
                *g = if o <= 0.0 { 0.0 } else { *g };
            }
        });
}

/// Adds the column sums of `rows` (`[n, width]`) to `out`, as
/// [`super::kernels::column_sums`] does (per column: each chunk of
/// [`REDUCE_ROWS`] rows summed from zero in row order, then the chunks in
/// order; the same bits), a chunk's rows added whole rows at a time so that
/// the columns run in vector lanes.
pub fn column_sums(rows: &[f32], width: usize, out: &mut [f32]) {
    let n = rows.len() / width;
    let mut partials = vec![0.0f32; n.div_ceil(REDUCE_ROWS) * width];
    let simd = simd_available();
    partials
        .par_chunks_mut(width)
        .zip(rows.par_chunks(REDUCE_ROWS * width))
        .for_each(|(partial, chunk)| column_sums_chunk(simd, chunk, partial));
    for partial in partials.chunks_exact(width) {
        for (o, p) in out.iter_mut().zip(partial) {
            *o += p;
        }
    }
}

/// `partial[c] += Σ_r rows[r, c]`, r increasing (`partial` starts at zero).
#[inline(always)]
fn column_sums_chunk_body(rows: &[f32], partial: &mut [f32]) {
    for row in rows.chunks_exact(partial.len()) {
        for (p, &v) in partial.iter_mut().zip(row) {
            *p += v;
        }
    }
}

simd_copy!(column_sums_chunk, column_sums_chunk_simd, column_sums_chunk_body,
    (rows: &[f32], partial: &mut [f32]));

/// Adam over one tensor, as [`super::kernels::adam`] computes it (the same
/// expression per element, so the same bits), with the bias corrections
/// worked out once instead of per element and the elements in blocks
/// instead of one task each.
pub fn adam(
    config: &AdamConfig,
    lr: f32,
    t: u32,
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    const BLOCK: usize = 1 << 13;
    let bias1 = 1.0 - config.beta1.powi(t as i32);
    let bias2 = 1.0 - config.beta2.powi(t as i32);
    let (step, root2) = (lr / bias1, bias2.sqrt());
    param
        .par_chunks_mut(BLOCK)
        .zip(grad.par_chunks(BLOCK))
        .zip(m.par_chunks_mut(BLOCK).zip(v.par_chunks_mut(BLOCK)))
        .for_each(|((param, grad), (m, v))| {
            for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m).zip(v) {
                *m = config.beta1 * *m + (1.0 - config.beta1) * g;
                *v = config.beta2 * *v + (1.0 - config.beta2) * g * g;
                let denom = v.sqrt() / root2 + config.eps;
                *p -= step * *m / denom;
            }
        });
}

/// `next[at[i]] += add[i]` for every row i of each `(at, add)` in turn
/// (`dim` values per row; each `at` ascending), as a loop over the pairs
/// then their rows would add them, in blocks of `next`'s rows in parallel.
pub fn scatter_add_rows<const N: usize>(next: &mut [f32], dim: usize, adds: [(&[u32], &[f32]); N]) {
    const BLOCK: usize = 256;
    for (at, add) in &adds {
        assert!(at.is_sorted() && add.len() == at.len() * dim);
        assert!(at
            .last()
            .is_none_or(|&r| (r as usize + 1) * dim <= next.len()));
    }
    next.par_chunks_mut(BLOCK * dim)
        .enumerate()
        .for_each(|(block, next)| {
            let first = (block * BLOCK) as u32;
            let end = first + (next.len() / dim) as u32;
            for (at, add) in &adds {
                let (lo, hi) = (
                    at.partition_point(|&r| r < first),
                    at.partition_point(|&r| r < end),
                );
                for (&row, d) in at[lo..hi]
                    .iter()
                    .zip(add[lo * dim..hi * dim].chunks_exact(dim))
                {
                    let target = &mut next[(row - first) as usize * dim..][..dim];
                    for (v, d) in target.iter_mut().zip(d) {
                        *v += d;
                    }
                }
            }
        });
}

/// Each edge's destination: `[E]`, from the offsets of `csr`.
pub fn edge_destinations(csr: &Csr) -> Vec<u32> {
    let mut out = Vec::with_capacity(csr.n_edges());
    for d in 0..csr.n_dst() {
        let n = (csr.offsets[d + 1] - csr.offsets[d]) as usize;
        out.extend(std::iter::repeat_n(d as u32, n));
    }
    out
}

/// `dx = dy · wtᵀ` (`dy` `[n, out_dim]`, `wt` `[in_dim, out_dim]`, `dx`
/// `[n, in_dim]`, overwritten): the inference linear kernel on `wt`
/// transposed, each entry a fused sum over o increasing.
pub fn linear_input_grad(dy: &[f32], wt: &[f32], in_dim: usize, out_dim: usize, dx: &mut [f32]) {
    let mut w_by_out = vec![0.0f32; in_dim * out_dim];
    for k in 0..in_dim {
        for o in 0..out_dim {
            w_by_out[o * in_dim + k] = wt[k * out_dim + o];
        }
    }
    let layer = Linear {
        in_dim: out_dim,
        out_dim: in_dim,
        wt: &w_by_out,
        bias: None,
        relu: false,
    };
    linear::linear(dy, None, &layer, dx);
}

/// Adds the weight gradient (and the bias gradient, when `db` is given) of
/// `y = x[rows] · wt + b` to `dwt` and `db`, as
/// [`super::kernels::linear_weight_grad`] does: partial sums over the same
/// fixed chunks of [`REDUCE_ROWS`] rows, added in chunk order. Each chunk's
/// `xᵀ · dy` is a fused sum over the chunk's rows in order
/// ([`weight_grad_chunk`]), read from `x` and `dy` in place.
pub fn linear_weight_grad(
    x: &[f32],
    rows: Option<&[u32]>,
    dy: &[f32],
    in_dim: usize,
    out_dim: usize,
    dwt: &mut [f32],
    db: Option<&mut [f32]>,
) {
    let n_rows = dy.len() / out_dim;
    let weights = in_dim * out_dim;
    let width = weights + if db.is_some() { out_dim } else { 0 };
    // The partial sums' memory is kept from call to call (a fresh zeroed
    // megabyte per call cost more than the sums of small layers); every
    // chunk overwrites its own part.
    let mut partials = PARTIALS.take();
    partials.resize(n_rows.div_ceil(REDUCE_ROWS) * width, 0.0);
    let simd = simd_available();
    partials
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(chunk, partial)| {
            let (r0, r1) = (chunk * REDUCE_ROWS, ((chunk + 1) * REDUCE_ROWS).min(n_rows));
            let (weight_part, bias_part) = partial.split_at_mut(weights);
            weight_grad_chunk(
                simd,
                simd,
                x,
                rows,
                dy,
                in_dim,
                out_dim,
                r0..r1,
                weight_part,
            );
            if !bias_part.is_empty() {
                bias_part.fill(0.0);
                for r in r0..r1 {
                    for o in 0..out_dim {
                        bias_part[o] += dy[r * out_dim + o];
                    }
                }
            }
        });
    // Each entry adds the chunks' partial sums in chunk order; blocks of
    // entries in parallel (a serial pass here was a step's longest one at 2 threads).
    const ENTRIES: usize = 1 << 10;
    dwt.par_chunks_mut(ENTRIES)
        .enumerate()
        .for_each(|(block, dwt)| {
            for partial in partials.chunks(width) {
                for (d, p) in dwt.iter_mut().zip(&partial[block * ENTRIES..weights]) {
                    *d += p;
                }
            }
        });
    if let Some(db) = db {
        for partial in partials.chunks(width) {
            for (d, p) in db.iter_mut().zip(&partial[weights..]) {
                *d += p;
            }
        }
    }
    PARTIALS.set(partials);
}

thread_local! {
    /// [`linear_weight_grad`]'s partial sums, kept for its next call on
    /// this thread (a call nested in another's finds it empty and
    /// allocates its own).
    static PARTIALS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Weight-gradient entries (k) one register block covers.
const GRAD_K: usize = 6;
/// Weight-gradient entries (o) one register block covers: two AVX registers.
const GRAD_O: usize = 2 * LANES;
/// Rows a weight-gradient block streams before the next block takes them.
const GRAD_PIECE: usize = 32;

/// `partial[k, o] = Σ_{r ∈ span} x[row(r), k] · dy[r, o]` (overwritten):
/// each entry one fused sum from zero, r increasing, in blocks of
/// [`GRAD_K`] × [`GRAD_O`] entries held in registers while [`GRAD_PIECE`]
/// rows stream by.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn weight_grad_chunk_body(
    blocks: bool,
    x: &[f32],
    rows: Option<&[u32]>,
    dy: &[f32],
    in_dim: usize,
    out_dim: usize,
    span: std::ops::Range<usize>,
    partial: &mut [f32],
) {
    let source = |r: usize| rows.map_or(r, |rows| rows[r] as usize);
    let x_rows = span.clone().map(source).max().map_or(0, |m| m + 1);
    assert!(x.len() >= x_rows * in_dim && dy.len() >= span.end * out_dim);
    assert_eq!(partial.len(), in_dim * out_dim);
    partial.fill(0.0);
    let wide = blocks && crate::kernels::avx512_available();
    let (k_step, o_step) = if wide {
        (WIDE_GRAD_K, WIDE_GRAD_O)
    } else {
        (GRAD_K, GRAD_O)
    };
    // Rows in pieces whose x and dy rows stay in the L1 cache while every
    // block streams them; a block's sums go on from where the last piece
    // left them, so each entry is still one fused sum, r increasing.
    for piece in (span.start..span.end).step_by(GRAD_PIECE) {
        let piece = piece..(piece + GRAD_PIECE).min(span.end);
        for k0 in (0..in_dim).step_by(k_step) {
            let kn = k_step.min(in_dim - k0);
            for o0 in (0..out_dim).step_by(o_step) {
                let on = o_step.min(out_dim - o0);
                #[cfg(target_arch = "x86_64")]
                if wide && kn == WIDE_GRAD_K && on == WIDE_GRAD_O {
                    // SAFETY: AVX-512F is present (`wide`); the block reads
                    // and writes as the AVX2 block below does, with
                    // WIDE_GRAD_K and WIDE_GRAD_O in place of GRAD_K and
                    // GRAD_O (k0 + WIDE_GRAD_K <= in_dim, o0 + WIDE_GRAD_O <= out_dim).
                    unsafe {
                        weight_grad_block_avx512(
                            x, rows, dy, in_dim, out_dim, &piece, k0, o0, partial,
                        )
                    };
                    continue;
                }
                #[cfg(target_arch = "x86_64")]
                if blocks && kn == GRAD_K && on == GRAD_O {
                    // SAFETY: AVX2 and FMA are present (`blocks` is
                    // `simd_available()`); the block reads
                    // x[row(r) · in_dim + k0 ..][..GRAD_K] and dy[r · out_dim + o0 ..][..GRAD_O]
                    // for r in `piece` ⊂ `span` (in bounds by the assertions above, as
                    // k0 + GRAD_K <= in_dim and o0 + GRAD_O <= out_dim) and
                    // reads and writes GRAD_O values at (k0 + i, o0) of `partial`.
                    unsafe {
                        weight_grad_block_fma(x, rows, dy, in_dim, out_dim, &piece, k0, o0, partial)
                    };
                    continue;
                }
                let mut acc = [[0.0f32; WIDE_GRAD_O]; WIDE_GRAD_K];
                for (i, acc_row) in acc.iter_mut().enumerate().take(kn) {
                    acc_row[..on].copy_from_slice(&partial[(k0 + i) * out_dim + o0..][..on]);
                }
                for r in piece.clone() {
                    let x_row = &x[source(r) * in_dim + k0..][..kn];
                    let dy_row = &dy[r * out_dim + o0..][..on];
                    for (acc_row, &v) in acc.iter_mut().zip(x_row) {
                        for (a, &d) in acc_row.iter_mut().zip(dy_row) {
                            *a = v.mul_add(d, *a);
                        }
                    }
                }
                for (i, acc_row) in acc.iter().enumerate().take(kn) {
                    partial[(k0 + i) * out_dim + o0..][..on].copy_from_slice(&acc_row[..on]);
                }
            }
        }
    }
    let _ = blocks;
}

// The tails' `mul_add`s are inlined FMA instructions in the AVX2 copy, not
// calls to the C library's `fmaf`.
simd_copy!(weight_grad_chunk, weight_grad_chunk_simd, weight_grad_chunk_body,
    (blocks: bool, x: &[f32], rows: Option<&[u32]>, dy: &[f32], in_dim: usize, out_dim: usize,
     span: std::ops::Range<usize>, partial: &mut [f32]));

/// Weight-gradient entries (k) one AVX-512 register block covers.
const WIDE_GRAD_K: usize = 8;
/// Weight-gradient entries (o) one AVX-512 register block covers: three registers.
const WIDE_GRAD_O: usize = 48;

/// [`weight_grad_block_fma`] in AVX-512 registers: a block of
/// [`WIDE_GRAD_K`] × [`WIDE_GRAD_O`] entries (24 of the 32 registers), each
/// entry the same fused sum, r increasing.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_grad_block_avx512(
    x: &[f32],
    rows: Option<&[u32]>,
    dy: &[f32],
    in_dim: usize,
    out_dim: usize,
    span: &std::ops::Range<usize>,
    k0: usize,
    o0: usize,
    partial: &mut [f32],
) {
    use std::arch::x86_64::*;
    const V: usize = WIDE_GRAD_O / 16;
    let block = partial.as_mut_ptr().add(k0 * out_dim + o0);
    let mut regs = [[_mm512_setzero_ps(); V]; WIDE_GRAD_K];
    for (i, reg) in regs.iter_mut().enumerate() {
        for (v, reg) in reg.iter_mut().enumerate() {
            *reg = _mm512_loadu_ps(block.add(i * out_dim + v * 16));
        }
    }
    for r in span.clone() {
        let src = rows.map_or(r, |rows| *rows.get_unchecked(r) as usize);
        let x_ptr = x.as_ptr().add(src * in_dim + k0);
        let dy_ptr = dy.as_ptr().add(r * out_dim + o0);
        let mut d = [_mm512_setzero_ps(); V];
        for (v, d) in d.iter_mut().enumerate() {
            *d = _mm512_loadu_ps(dy_ptr.add(v * 16));
        }
        for (i, reg) in regs.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*x_ptr.add(i));
            for v in 0..V {
                reg[v] = _mm512_fmadd_ps(xv, d[v], reg[v]);
            }
        }
    }
    for (i, reg) in regs.iter().enumerate() {
        for (v, reg) in reg.iter().enumerate() {
            _mm512_storeu_ps(block.add(i * out_dim + v * 16), *reg);
        }
    }
}

/// One full block of [`weight_grad_chunk`] in AVX2 registers: the block's
/// sums in `partial` go on over the rows of `span`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_grad_block_fma(
    x: &[f32],
    rows: Option<&[u32]>,
    dy: &[f32],
    in_dim: usize,
    out_dim: usize,
    span: &std::ops::Range<usize>,
    k0: usize,
    o0: usize,
    partial: &mut [f32],
) {
    use std::arch::x86_64::*;
    let block = partial.as_mut_ptr().add(k0 * out_dim + o0);
    let mut regs: [[__m256; 2]; GRAD_K] = std::array::from_fn(|i| {
        let at = block.add(i * out_dim);
        [_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(LANES))]
    });
    for r in span.clone() {
        let src = rows.map_or(r, |rows| *rows.get_unchecked(r) as usize);
        let x_ptr = x.as_ptr().add(src * in_dim + k0);
        let dy_ptr = dy.as_ptr().add(r * out_dim + o0);
        let d0 = _mm256_loadu_ps(dy_ptr);
        let d1 = _mm256_loadu_ps(dy_ptr.add(LANES));
        for (i, reg) in regs.iter_mut().enumerate() {
            let v = _mm256_set1_ps(*x_ptr.add(i));
            reg[0] = _mm256_fmadd_ps(v, d0, reg[0]);
            reg[1] = _mm256_fmadd_ps(v, d1, reg[1]);
        }
    }
    for (i, reg) in regs.iter().enumerate() {
        let out = block.add(i * out_dim);
        _mm256_storeu_ps(out, reg[0]);
        _mm256_storeu_ps(out.add(LANES), reg[1]);
    }
}

#[cfg(test)]
mod tests {
    //! The fast kernels against their twins in [`super::super::kernels`] on
    //! random graphs (some destinations and sources without edges, some
    //! high-degree ones): every output within 1e-5 + 1e-4·|twin| (f32
    //! rounding of sums over up to a few hundred terms in another order);
    //! the maximum error and where it occurs are printed.
    use super::*;
    use crate::train::kernels;
    use rand::{Rng, SeedableRng};

    const ATOL: f32 = 1e-5;
    const RTOL: f32 = 1e-4;

    fn values(rng: &mut rand::rngs::StdRng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    /// Asserts `fast` within the tolerance of `twin`; prints the maximum error.
    fn assert_near(what: &str, fast: &[f32], twin: &[f32]) {
        assert_eq!(fast.len(), twin.len(), "{what}: lengths");
        let (mut worst, mut at) = (0.0f32, 0);
        for (i, (&f, &t)) in fast.iter().zip(twin).enumerate() {
            let err = (f - t).abs();
            assert!(
                err <= ATOL + RTOL * t.abs(),
                "{what}[{i}]: fast {f}, twin {t}, |err| {err:.3e}"
            );
            if err > worst {
                (worst, at) = (err, i);
            }
        }
        println!(
            "{what}: max |err| {worst:.3e} at [{at}] (twin {:.4e}), {} values",
            twin.get(at).copied().unwrap_or(0.0),
            twin.len()
        );
    }

    /// `n_dst` destinations with 0..=`max_degree` random sources each;
    /// destination 0 has none, destination 1 three times the most.
    fn random_csr(
        rng: &mut rand::rngs::StdRng,
        n_src: usize,
        n_dst: usize,
        max_degree: usize,
    ) -> Csr {
        let mut edges = Vec::new();
        for d in 0..n_dst {
            let degree = match d {
                0 => 0,
                1 => 3 * max_degree,
                _ => rng.random_range(0..=max_degree),
            };
            for _ in 0..degree {
                edges.push((rng.random_range(0..n_src as u32), d as u32));
            }
        }
        let csr = Csr::from_edges(n_dst, edges.iter().copied());
        csr
    }

    #[test]
    fn gatv2_forward_and_backward_agree_with_the_twins() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        for (heads, channels, n_src, n_dst, relu) in [
            (3, 32, 300, 250, true),
            (2, 16, 40, 90, false),
            (1, 8, 5, 7, true),
        ] {
            let hc = heads * channels;
            let csr = random_csr(&mut rng, n_src, n_dst, 12);
            let (att, bias) = (values(&mut rng, hc, 1.0), values(&mut rng, hc, 0.5));
            let gat = Gat {
                heads,
                channels,
                att: &att,
                bias: &bias,
                relu,
            };
            let xl = values(&mut rng, n_src * hc, 2.0);
            let xr = values(&mut rng, n_dst * hc, 2.0);
            let label = format!("H {heads} C {channels}, {} edges", csr.n_edges());

            let mut out = vec![f32::NAN; n_dst * hc];
            let mut alpha = vec![f32::NAN; csr.n_edges() * heads];
            gatv2_forward(&gat, &xl, &xr, &csr, &mut out, &mut alpha);
            let mut twin_out = vec![f32::NAN; n_dst * hc];
            let mut twin_alpha = vec![f32::NAN; csr.n_edges() * heads];
            kernels::gatv2_forward(&gat, &xl, &xr, &csr, &mut twin_out, &mut twin_alpha);
            assert_near(&format!("{label}: forward out"), &out, &twin_out);
            assert_near(&format!("{label}: forward alpha"), &alpha, &twin_alpha);

            let g = values(&mut rng, n_dst * hc, 1.0);
            let by_source = kernels::edges_by_source(&csr, n_src);
            let edge_dst = edge_destinations(&csr);
            let (mut dxr, mut dxl, mut datt, mut dbias_l) = (
                vec![f32::NAN; n_dst * hc],
                vec![f32::NAN; n_src * hc],
                vec![f32::NAN; n_dst * hc],
                vec![f32::NAN; n_dst * hc],
            );
            let grads = GatBackward {
                dxr: &mut dxr,
                dxl: &mut dxl,
                datt_dst: &mut datt,
                dbias_l_dst: &mut dbias_l,
            };
            gatv2_backward(
                &gat,
                &xl,
                &xr,
                &csr,
                &twin_alpha,
                &g,
                &by_source,
                &edge_dst,
                grads,
            );
            let (mut twin_dxr, mut dxl_edge, mut twin_datt, mut twin_dbias_l) = (
                vec![f32::NAN; n_dst * hc],
                vec![f32::NAN; csr.n_edges() * hc],
                vec![f32::NAN; n_dst * hc],
                vec![f32::NAN; n_dst * hc],
            );
            let twin_grads = kernels::GatGrads {
                dxr: &mut twin_dxr,
                dxl_edge: &mut dxl_edge,
                datt_dst: &mut twin_datt,
                dbias_l_dst: &mut twin_dbias_l,
            };
            kernels::gatv2_backward(&gat, &xl, &xr, &csr, &twin_alpha, &g, twin_grads);
            let mut twin_dxl = vec![f32::NAN; n_src * hc];
            kernels::gather_edges(&by_source, &dxl_edge, hc, &mut twin_dxl);
            assert_near(&format!("{label}: d xr"), &dxr, &twin_dxr);
            assert_near(&format!("{label}: d xl"), &dxl, &twin_dxl);
            assert_near(
                &format!("{label}: d att per destination"),
                &datt,
                &twin_datt,
            );
            assert_near(
                &format!("{label}: d lin_l bias per destination"),
                &dbias_l,
                &twin_dbias_l,
            );
        }
    }

    #[test]
    fn linear_gradients_agree_with_the_twins() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (n, in_dim, out_dim, with_rows, with_bias) in [
            (700, 96, 96, false, true),
            (300, 16, 96, true, true),
            (37, 4, 16, false, false),
            (513, 96, 40, true, false),
        ] {
            let label = format!("[{n}, {in_dim}] → {out_dim}");
            let n_x = n + 9;
            let x = values(&mut rng, n_x * in_dim, 2.0);
            let dy = values(&mut rng, n * out_dim, 1.0);
            let wt = values(&mut rng, in_dim * out_dim, 1.0);
            let rows: Vec<u32> = (0..n).map(|_| rng.random_range(0..n_x as u32)).collect();
            let rows = with_rows.then_some(rows.as_slice());

            let (mut dwt, mut db) = (vec![0.25f32; in_dim * out_dim], vec![-0.5f32; out_dim]);
            let (mut twin_dwt, mut twin_db) = (dwt.clone(), db.clone());
            linear_weight_grad(
                &x,
                rows,
                &dy,
                in_dim,
                out_dim,
                &mut dwt,
                with_bias.then_some(db.as_mut_slice()),
            );
            kernels::linear_weight_grad(
                &x,
                rows,
                &dy,
                in_dim,
                out_dim,
                &mut twin_dwt,
                with_bias.then_some(twin_db.as_mut_slice()),
            );
            assert_near(&format!("{label}: d weight"), &dwt, &twin_dwt);
            assert_near(&format!("{label}: d bias"), &db, &twin_db);

            let mut dx = vec![f32::NAN; n * in_dim];
            linear_input_grad(&dy, &wt, in_dim, out_dim, &mut dx);
            let mut twin_dx = vec![f32::NAN; n * in_dim];
            kernels::linear_input_grad(&dy, &wt, in_dim, out_dim, &mut twin_dx);
            assert_near(&format!("{label}: d x"), &dx, &twin_dx);
        }
    }

    /// The register blocks of the weight gradient (AVX-512 where the CPU
    /// has it, else AVX2) give the portable sums' bits (both fused, rows in
    /// the same order), tails included.
    #[test]
    fn weight_gradient_blocks_equal_the_portable_sums() {
        if !simd_available() {
            println!("no AVX2 + FMA: only the portable sums run");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for (n, in_dim, out_dim) in [(256, 96, 96), (200, 16, 96), (37, 13, 40)] {
            let x = values(&mut rng, (n + 5) * in_dim, 2.0);
            let dy = values(&mut rng, n * out_dim, 1.0);
            let rows: Vec<u32> = (0..n).map(|_| rng.random_range(0..n as u32 + 5)).collect();
            let (mut blocked, mut portable) = (
                vec![f32::NAN; in_dim * out_dim],
                vec![f32::NAN; in_dim * out_dim],
            );
            weight_grad_chunk(
                true,
                true,
                &x,
                Some(&rows),
                &dy,
                in_dim,
                out_dim,
                0..n,
                &mut blocked,
            );
            weight_grad_chunk(
                false,
                false,
                &x,
                Some(&rows),
                &dy,
                in_dim,
                out_dim,
                0..n,
                &mut portable,
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&blocked),
                bits(&portable),
                "[{n}, {in_dim}] → {out_dim}"
            );
        }
    }

    /// Same expression per element: the same bits as the twin, over
    /// several steps (the bias corrections change with the step).
    #[test]
    fn adam_equals_the_twin() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let n = 20_000;
        let config = AdamConfig::default();
        let mut fast = (values(&mut rng, n, 1.0), vec![0.0; n], vec![0.0; n]);
        let mut twin = fast.clone();
        for t in 1..=5 {
            let grad = values(&mut rng, n, 2.0);
            let (p, m, v) = &mut fast;
            adam(&config, 1e-3, t, p, &grad, m, v);
            let (p, m, v) = &mut twin;
            kernels::adam(&config, 1e-3, t, p, &grad, m, v);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast.0), bits(&twin.0), "weights");
        assert_eq!(bits(&fast.1), bits(&twin.1), "first moments");
        assert_eq!(bits(&fast.2), bits(&twin.2), "second moments");
    }

    #[test]
    fn relu_backward_equals_the_twin() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let out = values(&mut rng, 40_000, 1.0);
        let g = values(&mut rng, 40_000, 1.0);
        let (mut fast_g, mut twin_g) = (g.clone(), g);
        relu_backward(&mut fast_g, &out);
        kernels::relu_backward(&mut twin_g, &out);
        assert_eq!(fast_g, twin_g);
        assert!(fast_g.iter().filter(|&&v| v == 0.0).count() > 10_000);
    }

    /// The AVX2 channel sums give the portable sums' bits (the same fused
    /// sums per lane, the same tree), zeros and signs of zero included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn register_channel_sums_equal_the_portable_sums() {
        assert!(simd_available(), "this test needs AVX2 and FMA");
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let bits = |v: f32| v.to_bits();
        for channels in [8, 32, 64] {
            for _ in 0..2_000 {
                let mut a = values(&mut rng, channels, 3.0);
                let (att, b) = (
                    values(&mut rng, channels, 1.0),
                    values(&mut rng, channels, 3.0),
                );
                a[0] = -b[0];
                a[1] = 0.0;
                // SAFETY: the CPU has AVX2 and FMA (asserted above).
                let (logit, product) =
                    unsafe { (attention_logit_fma(&att, &a, &b), dot_fma(&a, &b)) };
                assert_eq!(bits(logit), bits(attention_logit(&att, &a, &b)), "logit");
                assert_eq!(bits(product), bits(dot(&a, &b)), "dot");
            }
        }
    }

    /// The blocks add each row's values in the order the plain loop over
    /// the pairs and then their rows does: the same bits.
    #[test]
    fn scatter_add_rows_equals_the_plain_loop() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let (n, dim) = (1_000, 96);
        let subset = |rng: &mut rand::rngs::StdRng, p: f64| -> Vec<u32> {
            (0..n as u32).filter(|_| rng.random_bool(p)).collect()
        };
        let (at_a, at_b) = (subset(&mut rng, 0.8), subset(&mut rng, 0.1));
        let add_a = values(&mut rng, at_a.len() * dim, 1.0);
        let add_b = values(&mut rng, at_b.len() * dim, 1.0);
        let start = values(&mut rng, n * dim, 1.0);
        let mut fast = start.clone();
        scatter_add_rows(
            &mut fast,
            dim,
            [(&at_a[..], &add_a[..]), (&at_b[..], &add_b[..])],
        );
        let mut plain = start.clone();
        for (at, add) in [(&at_a, &add_a), (&at_b, &add_b)] {
            for (&row, d) in at.iter().zip(add.chunks_exact(dim)) {
                for (v, d) in plain[row as usize * dim..][..dim].iter_mut().zip(d) {
                    *v += d;
                }
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast), bits(&plain));
        assert_ne!(fast, start, "rows were added to");
    }

    /// The column sums and the ReLU backward give the twins' bits, on
    /// widths and row counts with partial chunks, zeros of both signs and
    /// a NaN.
    #[test]
    fn column_sums_and_relu_backward_equal_the_twins() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (n, width) in [(1_000, 96), (256, 16), (7, 5), (0, 8)] {
            let mut rows = values(&mut rng, n * width, 3.0);
            for (i, v) in rows.iter_mut().enumerate().step_by(11) {
                *v = if i % 2 == 0 { 0.0 } else { -0.0 };
            }
            let start = values(&mut rng, width, 1.0);
            let (mut fast, mut twin) = (start.clone(), start.clone());
            column_sums(&rows, width, &mut fast);
            kernels::column_sums(&rows, width, &mut twin);
            assert_eq!(bits(&fast), bits(&twin), "column sums, {n} x {width}");
            assert!(n == 0 || fast != start, "columns were added to");

            let mut out = values(&mut rng, n * width, 1.0);
            if let Some(o) = out.get_mut(3) {
                *o = f32::NAN;
            }
            let (mut fast, mut twin) = (rows.clone(), rows.clone());
            relu_backward(&mut fast, &out);
            kernels::relu_backward(&mut twin, &out);
            assert_eq!(bits(&fast), bits(&twin), "ReLU backward, {n} x {width}");
        }
    }
}
