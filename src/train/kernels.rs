//! CPU twins-to-be of the training shaders: the GATv2 forward that keeps its
//! attention weights, every backward kernel and Adam. Each `*_at` function is
//! what one shader invocation computes; reductions run in a fixed order
//! (gradients w.r.t. sources over a source-sorted edge list, parameter
//! gradients over fixed row chunks summed in chunk order), never with atomics,
//! so results do not depend on the thread count.

// Index loops on purpose: the twins read line for line like shaders.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use crate::graph::Csr;
use crate::kernels::gatv2::{Gat, NEGATIVE_SLOPE, SOFTMAX_EPS};

/// Rows whose parameter-gradient contributions one partial sum covers. Fixed,
/// so the reduction tree is the same for any thread count.
pub const REDUCE_ROWS: usize = 256;

#[inline(always)]
fn leaky_relu(v: f32) -> f32 {
    v.max(v * NEGATIVE_SLOPE)
}

#[inline(always)]
fn leaky_relu_slope(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else {
        NEGATIVE_SLOPE
    }
}

/// `exp(x)` as a fixed sequence of f32 operations (Cephes' `expf`:
/// Cody–Waite reduction by ln 2, a degree-7 polynomial in fused
/// multiply-adds, a scale by 2^n),
/// within 1 ulp of the exact value. The training shaders compute the same
/// operations (`shaders/train_exp.wgsl`), where the built-in `exp` is the
/// driver's own approximation: GPU and CPU training then round alike.
/// For `x ≤ 88.72283` (callers clamp); results below f32's smallest normal
/// are 0, since GPUs may flush subnormals.
#[inline]
pub fn portable_exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MIN: f32 = -87.336_54;
    let pow2 = |n: i32| f32::from_bits(((n + 127) as u32) << 23);
    if x.is_nan() {
        return x;
    }
    if x < MIN {
        return 0.0;
    }
    // Every multiply-add is fused (`fma` in the shader): a GPU compiler may
    // fuse a multiply and an add the source keeps apart, never split one.
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let mut r = (-n).mul_add(LN2_HI, x);
    r = (-n).mul_add(LN2_LO, r);
    let r2 = r * r;
    let mut q = 1.987_569_1e-4f32;
    q = q.mul_add(r, 1.398_199_9e-3);
    q = q.mul_add(r, 8.333_452e-3);
    q = q.mul_add(r, 4.166_579_6e-2);
    q = q.mul_add(r, 1.666_666_5e-1);
    q = q.mul_add(r, 0.5);
    let e = q.mul_add(r2, r) + 1.0;
    let k = n as i32;
    let half = k / 2;
    e * pow2(half) * pow2(k - half)
}

/// One invocation of the training forward: destination `dst`, head `head`.
/// As PyG computes it: logits `att · leaky_relu(xl[src] + xr[dst])`, softmax
/// over the incoming edges (max subtracted, 1e-16 added to the sum), weighted
/// sum of messages, bias, optional ReLU. Writes the head's C outputs and the
/// attention weight of its incoming edges to `alpha_dst[e − first edge, head]`.
#[allow(clippy::too_many_arguments)]
pub fn gatv2_forward_at(
    gat: &Gat,
    xl: &[f32],
    xr: &[f32],
    csr: &Csr,
    dst: usize,
    head: usize,
    out: &mut [f32],
    alpha_dst: &mut [f32],
) {
    let (heads, channels) = (gat.heads, gat.channels);
    let hc = heads * channels;
    let base = head * channels;
    let xr_row = &xr[dst * hc + base..dst * hc + base + channels];
    let att = &gat.att[base..base + channels];
    let (begin, end) = (csr.offsets[dst] as usize, csr.offsets[dst + 1] as usize);
    let mut max = f32::MIN;
    for e in begin..end {
        let row = csr.sources[e] as usize * hc + base;
        let mut logit = 0.0f32;
        for c in 0..channels {
            logit += att[c] * leaky_relu(xl[row + c] + xr_row[c]);
        }
        alpha_dst[(e - begin) * heads + head] = logit;
        max = max.max(logit);
    }
    let mut denom = 0.0f32;
    for e in begin..end {
        let slot = &mut alpha_dst[(e - begin) * heads + head];
        *slot = portable_exp(*slot - max);
        denom += *slot;
    }
    out.fill(0.0);
    for e in begin..end {
        let slot = &mut alpha_dst[(e - begin) * heads + head];
        *slot /= denom + SOFTMAX_EPS;
        let a = *slot;
        let row = csr.sources[e] as usize * hc + base;
        for c in 0..channels {
            out[c] += a * xl[row + c];
        }
    }
    for c in 0..channels {
        let v = out[c] + gat.bias[base + c];
        out[c] = if gat.relu { v.max(0.0) } else { v };
    }
}

/// The training forward of one relation: `out` `[n_dst, H·C]`, `alpha` `[E, H]`.
pub fn gatv2_forward(
    gat: &Gat,
    xl: &[f32],
    xr: &[f32],
    csr: &Csr,
    out: &mut [f32],
    alpha: &mut [f32],
) {
    let hc = gat.heads * gat.channels;
    // Each destination owns the alpha entries of its incoming edges.
    let mut alpha_rows: Vec<&mut [f32]> = Vec::with_capacity(csr.n_dst());
    let mut rest = alpha;
    for d in 0..csr.n_dst() {
        let n = (csr.offsets[d + 1] - csr.offsets[d]) as usize * gat.heads;
        let (mine, tail) = rest.split_at_mut(n);
        alpha_rows.push(mine);
        rest = tail;
    }
    out.par_chunks_mut(hc)
        .zip(alpha_rows.into_par_iter())
        .enumerate()
        .for_each(|(dst, (row, alpha_dst))| {
            for (head, head_out) in row.chunks_mut(gat.channels).enumerate() {
                gatv2_forward_at(gat, xl, xr, csr, dst, head, head_out, alpha_dst);
            }
        });
}

/// Gradients one destination sends back through a relation.
pub struct GatGrads<'a> {
    /// `[n_dst, H·C]` d/d xr.
    pub dxr: &'a mut [f32],
    /// `[E, H·C]` each edge's contribution to d/d xl of its source.
    pub dxl_edge: &'a mut [f32],
    /// `[n_dst, H·C]` each destination's contribution to d/d att.
    pub datt_dst: &'a mut [f32],
    /// `[n_dst, H·C]` each destination's contribution to d/d lin_l's bias:
    /// `g + d xr` where it has incoming edges, else 0 (see [`gatv2_backward_at`]).
    pub dbias_l_dst: &'a mut [f32],
}

/// One invocation of the GATv2 backward: destination `dst`, all heads. `g` is
/// d loss / d (output before the bias and ReLU are applied but after the ReLU
/// mask), row `dst`. With α the softmax weights and m = xl[src]:
/// dα_e = g · m_e; de_e = α_e (dα_e − Σ_f α_f dα_f); d att += de · leaky(u);
/// du = de · att · leaky'(u) with u = m + xr; d m = α g + du.
///
/// d xr = Σ_e du_e is summed as Σ_e de_e · att · (leaky'(u_e) − leaky'(u_0)),
/// u_0 that of the first edge: equal in exact arithmetic, since the softmax
/// ignores a shift common to the destination's logits (Σ_e de_e = 0), but
/// exactly 0 where every edge has the same slope, instead of float32
/// rounding noise that Adam (eps 1e-8) would turn into ±lr steps. For the
/// same reason lin_l's bias gradient (Σ over sources of d m) is summed per
/// destination as `g + d xr` (Σ_e α_e = 1) into `dbias_l_row`, 0 without
/// incoming edges.
#[allow(clippy::too_many_arguments)]
pub fn gatv2_backward_at(
    gat: &Gat,
    xl: &[f32],
    xr_row: &[f32],
    csr: &Csr,
    alpha: &[f32],
    g: &[f32],
    dst: usize,
    dxr_row: &mut [f32],
    dxl_edges: &mut [f32],
    datt_row: &mut [f32],
    dbias_l_row: &mut [f32],
) {
    let (heads, channels) = (gat.heads, gat.channels);
    let hc = heads * channels;
    let (begin, end) = (csr.offsets[dst] as usize, csr.offsets[dst + 1] as usize);
    dxr_row.fill(0.0);
    datt_row.fill(0.0);
    dbias_l_row.fill(0.0);
    if begin == end {
        return;
    }
    let first_row = csr.sources[begin] as usize * hc;
    for head in 0..heads {
        let base = head * channels;
        let mut weighted = 0.0f32;
        for e in begin..end {
            let row = csr.sources[e] as usize * hc + base;
            let mut d_alpha = 0.0f32;
            for c in 0..channels {
                d_alpha += g[base + c] * xl[row + c];
            }
            weighted += alpha[e * heads + head] * d_alpha;
        }
        for e in begin..end {
            let row = csr.sources[e] as usize * hc + base;
            let a = alpha[e * heads + head];
            let mut d_alpha = 0.0f32;
            for c in 0..channels {
                d_alpha += g[base + c] * xl[row + c];
            }
            let d_logit = a * (d_alpha - weighted);
            let edge = &mut dxl_edges[(e - begin) * hc + base..(e - begin) * hc + base + channels];
            for c in 0..channels {
                let u = xl[row + c] + xr_row[base + c];
                let u_first = xl[first_row + base + c] + xr_row[base + c];
                datt_row[base + c] += d_logit * leaky_relu(u);
                let d = d_logit * gat.att[base + c];
                let slope = leaky_relu_slope(u);
                dxr_row[base + c] += d * (slope - leaky_relu_slope(u_first));
                edge[c] = a * g[base + c] + d * slope;
            }
        }
    }
    for c in 0..hc {
        dbias_l_row[c] = g[c] + dxr_row[c];
    }
}

/// The GATv2 backward of one relation over every destination.
pub fn gatv2_backward(
    gat: &Gat,
    xl: &[f32],
    xr: &[f32],
    csr: &Csr,
    alpha: &[f32],
    g: &[f32],
    grads: GatGrads,
) {
    let hc = gat.heads * gat.channels;
    let mut edge_rows: Vec<&mut [f32]> = Vec::with_capacity(csr.n_dst());
    let mut rest = grads.dxl_edge;
    for d in 0..csr.n_dst() {
        let n = (csr.offsets[d + 1] - csr.offsets[d]) as usize * hc;
        let (mine, tail) = rest.split_at_mut(n);
        edge_rows.push(mine);
        rest = tail;
    }
    grads
        .dxr
        .par_chunks_mut(hc)
        .zip(grads.datt_dst.par_chunks_mut(hc))
        .zip(grads.dbias_l_dst.par_chunks_mut(hc))
        .zip(edge_rows.into_par_iter())
        .enumerate()
        .for_each(|(dst, (((dxr_row, datt_row), dbias_l_row), edges))| {
            gatv2_backward_at(
                gat,
                xl,
                &xr[dst * hc..(dst + 1) * hc],
                csr,
                alpha,
                &g[dst * hc..(dst + 1) * hc],
                dst,
                dxr_row,
                edges,
                datt_row,
                dbias_l_row,
            );
        });
}

/// One invocation: source `src` sums the contributions of its outgoing edges
/// (`by_source` lists edge ids per source, ascending) into `out` (`[width]`).
pub fn gather_edges_at(
    by_source: &Csr,
    per_edge: &[f32],
    width: usize,
    src: usize,
    out: &mut [f32],
) {
    out.fill(0.0);
    for i in by_source.offsets[src] as usize..by_source.offsets[src + 1] as usize {
        let e = by_source.sources[i] as usize;
        for c in 0..width {
            out[c] += per_edge[e * width + c];
        }
    }
}

/// [`gather_edges_at`] for every source: `out` is `[n_src, width]`.
pub fn gather_edges(by_source: &Csr, per_edge: &[f32], width: usize, out: &mut [f32]) {
    out.par_chunks_mut(width)
        .enumerate()
        .for_each(|(src, row)| gather_edges_at(by_source, per_edge, width, src, row));
}

/// Edge ids grouped by source, ascending: the reduction order of
/// [`gather_edges`]. `n_src` sources.
pub fn edges_by_source(csr: &Csr, n_src: usize) -> Csr {
    Csr::from_edges(
        n_src,
        csr.sources.iter().enumerate().map(|(e, &s)| (e as u32, s)),
    )
}

/// ReLU backward in place: `g[i] = 0` where the layer's output `out[i]` is not positive.
pub fn relu_backward(g: &mut [f32], out: &[f32]) {
    g.par_iter_mut().zip(out.par_iter()).for_each(|(g, &o)| {
        if o <= 0.0 {
            *g = 0.0;
        }
    });
}

/// One invocation of the input gradient of `y = x · wt + b`: row `r`,
/// `dx[r, k] = Σ_o dy[r, o] · wt[k, o]`, o increasing.
pub fn linear_input_grad_at(
    dy_row: &[f32],
    wt: &[f32],
    in_dim: usize,
    out_dim: usize,
    k: usize,
) -> f32 {
    let w = &wt[k * out_dim..(k + 1) * out_dim];
    let mut acc = 0.0f32;
    for o in 0..out_dim {
        acc += dy_row[o] * w[o];
    }
    debug_assert!(k < in_dim);
    acc
}

/// `dx = dy · wtᵀ`: `dy` `[n, out_dim]`, `dx` `[n, in_dim]` (overwritten).
/// Bit-identical to [`linear_input_grad_at`] for every entry: each `dx[r, k]`
/// starts at 0 and adds `dy[r, o] · wt[k, o]` for o increasing, but the
/// loop runs over o outside and k inside, on `wt` transposed, so the k
/// independent sums advance together in vector registers instead of one
/// long chain of dependent additions (the twin's order, several times
/// slower on the CPU).
pub fn linear_input_grad(dy: &[f32], wt: &[f32], in_dim: usize, out_dim: usize, dx: &mut [f32]) {
    let mut w_by_out = vec![0.0f32; in_dim * out_dim];
    for k in 0..in_dim {
        for o in 0..out_dim {
            w_by_out[o * in_dim + k] = wt[k * out_dim + o];
        }
    }
    let avx2 = has_avx2();
    dx.par_chunks_mut(in_dim).enumerate().for_each(|(r, row)| {
        let dy_row = &dy[r * out_dim..(r + 1) * out_dim];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: AVX2 is present (checked by `has_avx2`).
            unsafe { input_grad_row_avx2(dy_row, &w_by_out, in_dim, row) };
            return;
        }
        input_grad_row(dy_row, &w_by_out, in_dim, row);
    });
}

/// Width of the register blocks of the fast backward paths (four AVX registers).
const LANES: usize = 32;

/// Whether the fast paths may use AVX2 (never FMA: a fused multiply-add
/// rounds once where the twins round twice, so results would differ).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One row of [`linear_input_grad`]: `row[k] = Σ_o dy_row[o] · w_by_out[o, k]`,
/// o increasing, LANES columns at a time held in registers.
#[inline(always)]
fn input_grad_row(dy_row: &[f32], w_by_out: &[f32], in_dim: usize, row: &mut [f32]) {
    let mut k0 = 0;
    while k0 < in_dim {
        let width = LANES.min(in_dim - k0);
        let mut acc = [0.0f32; LANES];
        if width == LANES {
            for (o, &g) in dy_row.iter().enumerate() {
                let w = &w_by_out[o * in_dim + k0..o * in_dim + k0 + LANES];
                for j in 0..LANES {
                    acc[j] += g * w[j];
                }
            }
        } else {
            for (o, &g) in dy_row.iter().enumerate() {
                let w = &w_by_out[o * in_dim + k0..o * in_dim + k0 + width];
                for j in 0..width {
                    acc[j] += g * w[j];
                }
            }
        }
        row[k0..k0 + width].copy_from_slice(&acc[..width]);
        k0 += width;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn input_grad_row_avx2(dy_row: &[f32], w_by_out: &[f32], in_dim: usize, row: &mut [f32]) {
    input_grad_row(dy_row, w_by_out, in_dim, row)
}

/// [`linear_weight_grad_chunk`] with the same sums in the same order (each
/// `partial[k, o]` starts at 0 and adds `x[row(r), k] · dy[r, o]` for r
/// increasing), LANES columns of one k held in registers across the
/// chunk's rows instead of read and written back for every row:
/// bit-identical, several times faster.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn weight_grad_chunk(
    x: &[f32],
    rows: Option<&[u32]>,
    dy: &[f32],
    in_dim: usize,
    out_dim: usize,
    chunk: usize,
    n_rows: usize,
    partial: &mut [f32],
) {
    let (r0, r1) = (chunk * REDUCE_ROWS, ((chunk + 1) * REDUCE_ROWS).min(n_rows));
    let source = |r: usize| rows.map_or(r, |rows| rows[r] as usize);
    for k in 0..in_dim {
        let mut o0 = 0;
        while o0 < out_dim {
            let width = LANES.min(out_dim - o0);
            let mut acc = [0.0f32; LANES];
            if width == LANES {
                for r in r0..r1 {
                    let xk = x[source(r) * in_dim + k];
                    let d = &dy[r * out_dim + o0..r * out_dim + o0 + LANES];
                    for j in 0..LANES {
                        acc[j] += xk * d[j];
                    }
                }
            } else {
                for r in r0..r1 {
                    let xk = x[source(r) * in_dim + k];
                    let d = &dy[r * out_dim + o0..r * out_dim + o0 + width];
                    for j in 0..width {
                        acc[j] += xk * d[j];
                    }
                }
            }
            partial[k * out_dim + o0..k * out_dim + o0 + width].copy_from_slice(&acc[..width]);
            o0 += width;
        }
    }
    if partial.len() > in_dim * out_dim {
        let bias = &mut partial[in_dim * out_dim..];
        bias.fill(0.0);
        for r in r0..r1 {
            for o in 0..out_dim {
                bias[o] += dy[r * out_dim + o];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_grad_chunk_avx2(
    x: &[f32],
    rows: Option<&[u32]>,
    dy: &[f32],
    in_dim: usize,
    out_dim: usize,
    chunk: usize,
    n_rows: usize,
    partial: &mut [f32],
) {
    weight_grad_chunk(x, rows, dy, in_dim, out_dim, chunk, n_rows, partial)
}

/// One invocation of the weight gradient: the partial sums of chunk `chunk`
/// (rows `chunk·REDUCE_ROWS ..`), `dwt[k, o] = Σ_r x[row(r), k] · dy[r, o]`
/// into `partial` (`[in_dim · out_dim]`, then `[out_dim]` bias sums when
/// `with_bias`).
#[allow(clippy::too_many_arguments)]
pub fn linear_weight_grad_chunk(
    x: &[f32],
    rows: Option<&[u32]>,
    dy: &[f32],
    in_dim: usize,
    out_dim: usize,
    chunk: usize,
    n_rows: usize,
    partial: &mut [f32],
) {
    partial.fill(0.0);
    let with_bias = partial.len() > in_dim * out_dim;
    for r in chunk * REDUCE_ROWS..((chunk + 1) * REDUCE_ROWS).min(n_rows) {
        let src = rows.map_or(r, |rows| rows[r] as usize);
        let x_row = &x[src * in_dim..(src + 1) * in_dim];
        let dy_row = &dy[r * out_dim..(r + 1) * out_dim];
        for k in 0..in_dim {
            let xk = x_row[k];
            let target = &mut partial[k * out_dim..(k + 1) * out_dim];
            for o in 0..out_dim {
                target[o] += xk * dy_row[o];
            }
        }
        if with_bias {
            let target = &mut partial[in_dim * out_dim..];
            for o in 0..out_dim {
                target[o] += dy_row[o];
            }
        }
    }
}

/// Adds the weight gradient (and bias gradient, when `db` is given) of
/// `y = x[rows] · wt + b` to `dwt` and `db`: partial sums over fixed row
/// chunks ([`linear_weight_grad_chunk`]'s, computed by a faster loop with
/// the same order), then summed in chunk order.
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
    let width = in_dim * out_dim + if db.is_some() { out_dim } else { 0 };
    let chunks = n_rows.div_ceil(REDUCE_ROWS);
    let mut partials = vec![0.0f32; chunks * width];
    // The fast path of the twin `linear_weight_grad_chunk` (bit-identical, unit test).
    let avx2 = has_avx2();
    partials
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(chunk, partial)| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 is present (checked by `has_avx2`).
                unsafe {
                    weight_grad_chunk_avx2(x, rows, dy, in_dim, out_dim, chunk, n_rows, partial)
                };
                return;
            }
            weight_grad_chunk(x, rows, dy, in_dim, out_dim, chunk, n_rows, partial)
        });
    let (weights, bias) = (in_dim * out_dim, db);
    for partial in partials.chunks(width) {
        for (d, p) in dwt.iter_mut().zip(&partial[..weights]) {
            *d += p;
        }
    }
    if let Some(db) = bias {
        for partial in partials.chunks(width) {
            for (d, p) in db.iter_mut().zip(&partial[weights..]) {
                *d += p;
            }
        }
    }
}

/// Adds the column sums of `rows` (`[n, width]`) to `out`: fixed row chunks,
/// summed in chunk order (bias and attention gradients).
pub fn column_sums(rows: &[f32], width: usize, out: &mut [f32]) {
    let n = rows.len() / width;
    let partials: Vec<Vec<f32>> = (0..n.div_ceil(REDUCE_ROWS))
        .into_par_iter()
        .map(|chunk| {
            let mut partial = vec![0.0f32; width];
            for r in chunk * REDUCE_ROWS..((chunk + 1) * REDUCE_ROWS).min(n) {
                for c in 0..width {
                    partial[c] += rows[r * width + c];
                }
            }
            partial
        })
        .collect();
    for partial in &partials {
        for (o, p) in out.iter_mut().zip(partial) {
            *o += p;
        }
    }
}

/// One invocation of the embedding backward: token `token` adds the
/// gradients of its rows (`by_token` lists rows per token, ascending) to its
/// table row.
pub fn embedding_grad_at(
    by_token: &Csr,
    dh: &[f32],
    dim: usize,
    token: usize,
    table_row: &mut [f32],
) {
    for i in by_token.offsets[token] as usize..by_token.offsets[token + 1] as usize {
        let r = by_token.sources[i] as usize;
        for c in 0..dim {
            table_row[c] += dh[r * dim + c];
        }
    }
}

/// Scatter-add of `dh` (`[n, dim]`, rows with token `tokens[r]`) into the
/// table gradient `dtable` (`[vocab, dim]`).
pub fn embedding_grad(tokens: &[u32], dh: &[f32], dim: usize, dtable: &mut [f32]) {
    let vocab = dtable.len() / dim;
    let by_token = Csr::from_edges(
        vocab,
        tokens.iter().enumerate().map(|(r, &t)| (r as u32, t)),
    );
    dtable
        .par_chunks_mut(dim)
        .enumerate()
        .for_each(|(token, row)| embedding_grad_at(&by_token, dh, dim, token, row));
}

/// `log(1 + exp(x))` without overflow.
#[inline]
fn softplus(x: f32) -> f32 {
    x.max(0.0) + portable_exp(-x.abs()).ln_1p()
}

/// One invocation of the pair loss: pair `p` with logit `z_tx[s] · z_bd[d]`
/// (c increasing). Returns (loss term, d loss / d logit) of binary
/// cross-entropy with logits, positives weighted by `pos_weight`, both
/// divided by the number of pairs `n_pairs` (the mean).
pub fn pair_loss_at(
    z_tx: &[f32],
    z_bd: &[f32],
    dim: usize,
    pair: (u32, u32),
    positive: bool,
    pos_weight: f32,
    n_pairs: usize,
) -> (f32, f32) {
    let (s, d) = (pair.0 as usize, pair.1 as usize);
    let mut logit = 0.0f32;
    for c in 0..dim {
        logit += z_tx[s * dim + c] * z_bd[d * dim + c];
    }
    // exp overflows above 88.7; past 88 the sigmoid is 0 to f32 precision.
    let sigmoid = 1.0 / (1.0 + portable_exp((-logit).min(88.0)));
    let n = n_pairs as f32;
    if positive {
        (
            pos_weight * softplus(-logit) / n,
            pos_weight * (sigmoid - 1.0) / n,
        )
    } else {
        (softplus(logit) / n, sigmoid / n)
    }
}

/// One invocation of the pair backward for node `node` of one side: sums
/// `d_logit[p] · other[partner(p)]` over the node's pairs (`by_node` lists
/// pair ids, ascending) into `out` (`[dim]`).
pub fn pair_grad_at(
    by_node: &Csr,
    partner: &[u32],
    d_logit: &[f32],
    other: &[f32],
    dim: usize,
    node: usize,
    out: &mut [f32],
) {
    out.fill(0.0);
    for i in by_node.offsets[node] as usize..by_node.offsets[node + 1] as usize {
        let p = by_node.sources[i] as usize;
        let row = partner[p] as usize * dim;
        for c in 0..dim {
            out[c] += d_logit[p] * other[row + c];
        }
    }
}

/// Adam's constants.
#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub eps: f32,
}

impl Default for AdamConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// One invocation of Adam (PyTorch's update): element `i` at step `t` (1-based).
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn adam_at(
    config: &AdamConfig,
    lr: f32,
    t: u32,
    param: &mut f32,
    grad: f32,
    m: &mut f32,
    v: &mut f32,
) {
    *m = config.beta1 * *m + (1.0 - config.beta1) * grad;
    *v = config.beta2 * *v + (1.0 - config.beta2) * grad * grad;
    let bias1 = 1.0 - config.beta1.powi(t as i32);
    let bias2 = 1.0 - config.beta2.powi(t as i32);
    let denom = v.sqrt() / bias2.sqrt() + config.eps;
    *param -= lr / bias1 * *m / denom;
}

/// Adam over one tensor.
pub fn adam(
    config: &AdamConfig,
    lr: f32,
    t: u32,
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    param
        .par_iter_mut()
        .zip(grad.par_iter())
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .for_each(|((p, &g), (m, v))| adam_at(config, lr, t, p, g, m, v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn linear_weight_grad_is_bit_identical_to_its_twin() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        for (n, in_dim, out_dim, with_rows, with_bias) in [
            (700, 96, 96, false, true),
            (300, 16, 96, true, true),
            (37, 4, 16, false, false),
            (513, 96, 40, true, false),
        ] {
            let n_x = n + 9;
            let x: Vec<f32> = (0..n_x * in_dim)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let dy: Vec<f32> = (0..n * out_dim)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let rows: Vec<u32> = (0..n).map(|_| rng.random_range(0..n_x as u32)).collect();
            let rows = with_rows.then_some(rows.as_slice());
            let mut dwt = vec![0.25f32; in_dim * out_dim];
            let mut db = vec![-0.5f32; out_dim];
            linear_weight_grad(
                &x,
                rows,
                &dy,
                in_dim,
                out_dim,
                &mut dwt,
                with_bias.then_some(db.as_mut_slice()),
            );
            // The twin: its chunk partial sums, added in chunk order.
            let width = in_dim * out_dim + if with_bias { out_dim } else { 0 };
            let mut twin_dwt = vec![0.25f32; in_dim * out_dim];
            let mut twin_db = vec![-0.5f32; out_dim];
            let mut partial = vec![0.0f32; width];
            for chunk in 0..n.div_ceil(REDUCE_ROWS) {
                linear_weight_grad_chunk(&x, rows, &dy, in_dim, out_dim, chunk, n, &mut partial);
                for (d, p) in twin_dwt.iter_mut().zip(&partial) {
                    *d += p;
                }
                if with_bias {
                    for (d, p) in twin_db.iter_mut().zip(&partial[in_dim * out_dim..]) {
                        *d += p;
                    }
                }
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&dwt) == bits(&twin_dwt),
                "weights, [{n}, {in_dim}] → {out_dim}"
            );
            assert!(
                bits(&db) == bits(&twin_db),
                "bias, [{n}, {in_dim}] → {out_dim}"
            );
        }
    }

    /// The twin's GATv2 backward (and the fast engine's) against the
    /// textbook sums in f64: d xr = Σ_e du_e and lin_l's bias = Σ over
    /// sources of d xl, within 1e-5 + 1e-4·|x|. With every input positive
    /// (every leaky ReLU slope 1) d xr is exactly 0 and the bias rows are
    /// exactly g, where the textbook sums are rounding noise.
    #[test]
    fn gatv2_backward_sums_equal_the_textbook_sums() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let (heads, channels, n_src, n_dst) = (2, 8, 60, 80);
        let hc = heads * channels;
        let mut edges = Vec::new();
        for d in 0..n_dst {
            for _ in 0..rng.random_range(0..=10usize) {
                edges.push((rng.random_range(0..n_src as u32), d as u32));
            }
        }
        let csr = Csr::from_edges(n_dst, edges.iter().copied());
        let by_source = edges_by_source(&csr, n_src);
        let edge_dst = crate::train::fast::edge_destinations(&csr);
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (att, bias, g) = (values(hc), values(hc), values(n_dst * hc));
        let (xl, xr) = (values(n_src * hc), values(n_dst * hc));
        let gat = Gat {
            heads,
            channels,
            att: &att,
            bias: &bias,
            relu: false,
        };
        let positive = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        for (all_positive, xl, xr) in [
            (false, xl.clone(), xr.clone()),
            (true, positive(&xl), positive(&xr)),
        ] {
            let mut out = vec![0.0; n_dst * hc];
            let mut alpha = vec![0.0; csr.n_edges() * heads];
            gatv2_forward(&gat, &xl, &xr, &csr, &mut out, &mut alpha);
            let (mut dxr, mut dxl_edge, mut datt, mut dbias_l) = (
                vec![f32::NAN; n_dst * hc],
                vec![f32::NAN; csr.n_edges() * hc],
                vec![f32::NAN; n_dst * hc],
                vec![f32::NAN; n_dst * hc],
            );
            gatv2_backward(
                &gat,
                &xl,
                &xr,
                &csr,
                &alpha,
                &g,
                GatGrads {
                    dxr: &mut dxr,
                    dxl_edge: &mut dxl_edge,
                    datt_dst: &mut datt,
                    dbias_l_dst: &mut dbias_l,
                },
            );
            let (mut fast_dxr, mut fast_dxl, mut fast_datt, mut fast_dbias_l) = (
                vec![f32::NAN; n_dst * hc],
                vec![f32::NAN; n_src * hc],
                vec![f32::NAN; n_dst * hc],
                vec![f32::NAN; n_dst * hc],
            );
            crate::train::fast::gatv2_backward(
                &gat,
                &xl,
                &xr,
                &csr,
                &alpha,
                &g,
                &by_source,
                &edge_dst,
                crate::train::fast::GatBackward {
                    dxr: &mut fast_dxr,
                    dxl: &mut fast_dxl,
                    datt_dst: &mut fast_datt,
                    dbias_l_dst: &mut fast_dbias_l,
                },
            );
            // Textbook: d xr[i] = Σ_e de_e · att · leaky'(u_e); lin_l's bias
            // = Σ_e (α_e g_i + de_e · att · leaky'(u_e)), in f64.
            let mut want_dxr = vec![0.0f64; n_dst * hc];
            let mut want_bias = vec![0.0f64; hc];
            for d in 0..n_dst {
                let (begin, end) = (csr.offsets[d] as usize, csr.offsets[d + 1] as usize);
                for h in 0..heads {
                    let span = h * channels..(h + 1) * channels;
                    let d_alpha = |e: usize| -> f64 {
                        let s = csr.sources[e] as usize * hc;
                        span.clone()
                            .map(|c| g[d * hc + c] as f64 * xl[s + c] as f64)
                            .sum()
                    };
                    let weighted: f64 = (begin..end)
                        .map(|e| alpha[e * heads + h] as f64 * d_alpha(e))
                        .sum();
                    for e in begin..end {
                        let a = alpha[e * heads + h] as f64;
                        let d_logit = a * (d_alpha(e) - weighted);
                        let s = csr.sources[e] as usize * hc;
                        for c in span.clone() {
                            let u = xl[s + c] + xr[d * hc + c];
                            let du = d_logit * att[c] as f64 * leaky_relu_slope(u) as f64;
                            want_dxr[d * hc + c] += du;
                            want_bias[c] += a * g[d * hc + c] as f64 + du;
                        }
                    }
                }
            }
            let mut bias_sums = vec![0.0f32; hc];
            column_sums(&dbias_l, hc, &mut bias_sums);
            let mut fast_bias_sums = vec![0.0f32; hc];
            column_sums(&fast_dbias_l, hc, &mut fast_bias_sums);
            for (what, got, want) in [
                ("twin d xr", &dxr, &want_dxr),
                ("fast d xr", &fast_dxr, &want_dxr),
                ("twin lin_l bias", &bias_sums, &want_bias),
                ("fast lin_l bias", &fast_bias_sums, &want_bias),
            ] {
                let mut worst = 0.0f64;
                for (i, (&x, &w)) in got.iter().zip(want.iter()).enumerate() {
                    let err = (x as f64 - w).abs();
                    assert!(
                        err <= 1e-5 + 1e-4 * w.abs(),
                        "{what}[{i}] (positive {all_positive}): {x} against {w}"
                    );
                    worst = worst.max(err);
                }
                println!("{what} (positive {all_positive}): max |err| {worst:.3e}");
            }
            if all_positive {
                for (side, dxr, dbias_l) in
                    [("twin", &dxr, &dbias_l), ("fast", &fast_dxr, &fast_dbias_l)]
                {
                    assert!(dxr.iter().all(|&v| v == 0.0), "{side}: d xr not exactly 0");
                    for d in 0..n_dst {
                        let has_edges = csr.offsets[d] < csr.offsets[d + 1];
                        for c in 0..hc {
                            let want = if has_edges { g[d * hc + c] } else { 0.0 };
                            assert_eq!(
                                dbias_l[d * hc + c].to_bits(),
                                want.to_bits(),
                                "{side}: lin_l bias row {d}, column {c}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn linear_input_grad_is_bit_identical_to_its_twin() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (n, in_dim, out_dim) in [(37, 96, 96), (5, 16, 96), (300, 96, 64), (3, 4, 16)] {
            let dy: Vec<f32> = (0..n * out_dim)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let wt: Vec<f32> = (0..in_dim * out_dim)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let mut fast = vec![f32::NAN; n * in_dim];
            linear_input_grad(&dy, &wt, in_dim, out_dim, &mut fast);
            for r in 0..n {
                for k in 0..in_dim {
                    let twin = linear_input_grad_at(
                        &dy[r * out_dim..(r + 1) * out_dim],
                        &wt,
                        in_dim,
                        out_dim,
                        k,
                    );
                    assert_eq!(
                        fast[r * in_dim + k].to_bits(),
                        twin.to_bits(),
                        "row {r}, column {k} of [{n}, {in_dim}] from {out_dim}"
                    );
                }
            }
        }
    }
}
