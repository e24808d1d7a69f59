//! Twin of `shaders/linear.wgsl`: `y[r, o] = Σ_k x[row(r), k] · wt[k, o] + b[o]`,
//! optionally followed by ReLU. The sum runs over k from 0 upwards in one f32
//! accumulator that starts at zero, each step a fused multiply-add; the bias
//! is added after the sum — the order and rounding the shader uses. Rows may be gathered through an index list.

use rayon::prelude::*;

use super::ROWS_PER_TASK;

/// Weights and options of one dense layer.
#[derive(Clone, Copy)]
pub struct Linear<'a> {
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// Weight, transposed: `[in_dim, out_dim]`.
    pub wt: &'a [f32],
    /// Bias `[out_dim]`, if any.
    pub bias: Option<&'a [f32]>,
    /// Apply ReLU to the result.
    pub relu: bool,
}

impl Linear<'_> {
    /// Finishes one output element from its accumulated sum.
    #[inline(always)]
    fn finish(&self, acc: f32, o: usize) -> f32 {
        let v = match self.bias {
            Some(b) => acc + b[o],
            None => acc,
        };
        if self.relu {
            v.max(0.0)
        } else {
            v
        }
    }

    /// One invocation: output element `(r, o)` reading input row `x_row`.
    #[inline]
    pub fn at(&self, x_row: &[f32], o: usize) -> f32 {
        let mut acc = 0.0f32;
        for k in 0..self.in_dim {
            acc = x_row[k].mul_add(self.wt[k * self.out_dim + o], acc);
        }
        self.finish(acc, o)
    }
}

/// Output columns one register block covers.
const COLS: usize = 16;
/// Rows one register block covers.
const ROWS: usize = 6;

/// `out = linear(x[rows])`: `x` is `[n_in, in_dim]`; `rows` selects (and
/// orders) the input rows, or all rows when `None`; `out` is `[n_out, out_dim]`.
pub fn linear(x: &[f32], rows: Option<&[u32]>, layer: &Linear, out: &mut [f32]) {
    let n_out = out.len() / layer.out_dim;
    assert_eq!(out.len(), n_out * layer.out_dim);
    assert_eq!(layer.wt.len(), layer.in_dim * layer.out_dim);
    if rows.is_none() {
        assert_eq!(x.len(), n_out * layer.in_dim);
    }
    let input_row = |r: usize| -> &[f32] {
        let src = rows.map_or(r, |rows| rows[r] as usize);
        &x[src * layer.in_dim..(src + 1) * layer.in_dim]
    };
    out.par_chunks_mut(ROWS_PER_TASK * layer.out_dim)
        .enumerate()
        .for_each(|(chunk, block)| {
            let first = chunk * ROWS_PER_TASK;
            run_block(layer, first, block, &input_row);
        });
}

fn run_block<'x>(
    layer: &Linear,
    first: usize,
    block: &mut [f32],
    input_row: &(dyn Fn(usize) -> &'x [f32] + Sync),
) {
    let (in_dim, out_dim) = (layer.in_dim, layer.out_dim);
    let n_rows = block.len() / out_dim;
    #[cfg(target_arch = "x86_64")]
    if out_dim >= WIDE && super::avx512_available() {
        // SAFETY: AVX-512F is present (checked just now).
        return unsafe { run_block_avx512(layer, first, block, input_row) };
    }
    #[cfg(target_arch = "x86_64")]
    let fma =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let mut r = 0;
    while r < n_rows {
        let rows_here = ROWS.min(n_rows - r);
        let inputs: [&[f32]; ROWS] =
            std::array::from_fn(|i| &input_row(first + r + i.min(rows_here - 1))[..in_dim]);
        let mut o0 = 0;
        while o0 + COLS <= out_dim {
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: AVX2 and FMA are present (checked above); the
                // kernel reads `inputs[i][..in_dim]` and `wt[k * out_dim + o0..][..COLS]`
                // for k < in_dim, all in bounds since o0 + COLS <= out_dim,
                // and writes COLS values at column o0 of `rows_here` rows of `block`.
                unsafe {
                    tile_fma_x86(
                        layer,
                        o0,
                        &inputs,
                        &mut block[r * out_dim..(r + rows_here) * out_dim],
                    )
                };
                o0 += COLS;
                continue;
            }
            let mut acc = [[0.0f32; COLS]; ROWS];
            tile_portable(layer.wt, out_dim, o0, &inputs, &mut acc);
            for (i, acc_row) in acc.iter().enumerate().take(rows_here) {
                let out_row = &mut block[(r + i) * out_dim..(r + i + 1) * out_dim];
                for c in 0..COLS {
                    out_row[o0 + c] = layer.finish(acc_row[c], o0 + c);
                }
            }
            o0 += COLS;
        }
        for (i, input) in inputs.iter().enumerate().take(rows_here) {
            for o in o0..out_dim {
                block[(r + i) * out_dim + o] = layer.at(input, o);
            }
        }
        r += rows_here;
    }
}

/// Lanes of one AVX-512 register.
const WIDE: usize = 16;
/// Rows one AVX-512 register block covers.
const WIDE_ROWS: usize = 8;

/// [`run_block`] in AVX-512 registers: blocks of 8 rows × 48 columns (24
/// accumulators of the 32 registers), then 32 or 16 columns, then the
/// columns left one by one as the twin computes them. Every output is the
/// same fused sum over k increasing, bias added after, as in the AVX2 and
/// portable paths: the width of a register changes which outputs are
/// computed together, not how each is computed, so the bits are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_block_avx512<'x>(
    layer: &Linear,
    first: usize,
    block: &mut [f32],
    input_row: &(dyn Fn(usize) -> &'x [f32] + Sync),
) {
    let (in_dim, out_dim) = (layer.in_dim, layer.out_dim);
    let n_rows = block.len() / out_dim;
    let mut r = 0;
    while r < n_rows {
        let rows_here = WIDE_ROWS.min(n_rows - r);
        let inputs: [&[f32]; WIDE_ROWS] =
            std::array::from_fn(|i| &input_row(first + r + i.min(rows_here - 1))[..in_dim]);
        let out = &mut block[r * out_dim..(r + rows_here) * out_dim];
        let mut o0 = 0;
        // SAFETY (each tile): AVX-512F is present (this function's
        // feature); the tile reads `inputs[i][..in_dim]` and V · 16 weights
        // at `wt[k · out_dim + o0..]` for k < in_dim, in bounds since
        // o0 + V · 16 <= out_dim, and writes as many columns of the rows of `out`.
        while o0 + 3 * WIDE <= out_dim {
            tile_avx512::<3>(layer, o0, &inputs, out);
            o0 += 3 * WIDE;
        }
        if o0 + 2 * WIDE <= out_dim {
            tile_avx512::<2>(layer, o0, &inputs, out);
            o0 += 2 * WIDE;
        }
        if o0 + WIDE <= out_dim {
            tile_avx512::<1>(layer, o0, &inputs, out);
            o0 += WIDE;
        }
        for (i, input) in inputs.iter().enumerate().take(rows_here) {
            for o in o0..out_dim {
                out[i * out_dim + o] = layer.at(input, o);
            }
        }
        r += rows_here;
    }
}

/// [`tile_fma_x86`] in AVX-512 registers: 8 rows × `V` · 16 columns at
/// column `o0` of the rows of `out` (at most 8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_avx512<const V: usize>(
    layer: &Linear,
    o0: usize,
    inputs: &[&[f32]; WIDE_ROWS],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let out_dim = layer.out_dim;
    let mut regs = [[_mm512_setzero_ps(); V]; WIDE_ROWS];
    let in_dim = inputs[0].len();
    let w_ptr = layer.wt.as_ptr().add(o0);
    for k in 0..in_dim {
        let mut w = [_mm512_setzero_ps(); V];
        for (v, w) in w.iter_mut().enumerate() {
            *w = _mm512_loadu_ps(w_ptr.add(k * out_dim + v * WIDE));
        }
        for i in 0..WIDE_ROWS {
            let x = _mm512_set1_ps(*inputs[i].get_unchecked(k));
            for v in 0..V {
                regs[i][v] = _mm512_fmadd_ps(x, w[v], regs[i][v]);
            }
        }
    }
    if let Some(bias) = layer.bias {
        for v in 0..V {
            let b = _mm512_loadu_ps(bias.as_ptr().add(o0 + v * WIDE));
            for reg in regs.iter_mut() {
                reg[v] = _mm512_add_ps(reg[v], b);
            }
        }
    }
    for (i, out_row) in out.chunks_exact_mut(out_dim).enumerate() {
        let dst = out_row.as_mut_ptr().add(o0);
        for v in 0..V {
            _mm512_storeu_ps(dst.add(v * WIDE), regs[i][v]);
        }
        if layer.relu {
            for v in &mut out_row[o0..o0 + V * WIDE] {
                *v = v.max(0.0);
            }
        }
    }
}

/// `acc[i][c] = Σ_k fma(inputs[i][k], wt[k, o0 + c])`, k increasing.
fn tile_portable(
    wt: &[f32],
    out_dim: usize,
    o0: usize,
    inputs: &[&[f32]; ROWS],
    acc: &mut [[f32; COLS]; ROWS],
) {
    for k in 0..inputs[0].len() {
        let w = &wt[k * out_dim + o0..k * out_dim + o0 + COLS];
        for (acc_row, input) in acc.iter_mut().zip(inputs) {
            for c in 0..COLS {
                acc_row[c] = input[k].mul_add(w[c], acc_row[c]);
            }
        }
    }
}

/// `tile_portable` with AVX2 registers (6 rows × 16 columns of
/// accumulators), finished in place as [`Linear::finish`] does: the bias
/// added with one rounding, then ReLU. Writes columns
/// `o0..o0 + COLS` of the `out.len() / out_dim` (at most `ROWS`) rows of `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_fma_x86(layer: &Linear, o0: usize, inputs: &[&[f32]; ROWS], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let out_dim = layer.out_dim;
    let mut regs = [[_mm256_setzero_ps(); 2]; ROWS];
    let in_dim = inputs[0].len();
    let w_ptr = layer.wt.as_ptr().add(o0);
    for k in 0..in_dim {
        let w0 = _mm256_loadu_ps(w_ptr.add(k * out_dim));
        let w1 = _mm256_loadu_ps(w_ptr.add(k * out_dim + 8));
        for i in 0..ROWS {
            let x = _mm256_set1_ps(*inputs[i].get_unchecked(k));
            regs[i][0] = _mm256_fmadd_ps(x, w0, regs[i][0]);
            regs[i][1] = _mm256_fmadd_ps(x, w1, regs[i][1]);
        }
    }
    if let Some(bias) = layer.bias {
        let b0 = _mm256_loadu_ps(bias.as_ptr().add(o0));
        let b1 = _mm256_loadu_ps(bias.as_ptr().add(o0 + 8));
        for reg in regs.iter_mut() {
            reg[0] = _mm256_add_ps(reg[0], b0);
            reg[1] = _mm256_add_ps(reg[1], b1);
        }
    }
    for (i, out_row) in out.chunks_exact_mut(out_dim).enumerate() {
        let dst = out_row.as_mut_ptr().add(o0);
        _mm256_storeu_ps(dst, regs[i][0]);
        _mm256_storeu_ps(dst.add(8), regs[i][1]);
        if layer.relu {
            // Only lin0 (four inputs) uses ReLU: the scalar rule keeps it exact.
            for v in &mut out_row[o0..o0 + COLS] {
                *v = v.max(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register-blocked evaluation equals the one-invocation twin bit for
    /// bit, for widths that exercise full blocks, partial blocks and row tails.
    #[test]
    fn blocked_equals_single_invocation() {
        for (n, in_dim, out_dim) in [
            (13, 16, 96),
            (7, 96, 40),
            (300, 4, 16),
            (5, 33, 7),
            (21, 96, 96),
            (9, 96, 16),
            (11, 7, 83),
        ] {
            let x: Vec<f32> = (0..n * in_dim)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                .collect();
            let wt: Vec<f32> = (0..in_dim * out_dim)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 31.0)
                .collect();
            let bias: Vec<f32> = (0..out_dim).map(|i| i as f32 * 0.01 - 0.2).collect();
            let rows: Vec<u32> = (0..n as u32).rev().collect();
            for relu in [false, true] {
                let layer = Linear {
                    in_dim,
                    out_dim,
                    wt: &wt,
                    bias: Some(&bias),
                    relu,
                };
                let mut out = vec![0.0; n * out_dim];
                linear(&x, Some(&rows), &layer, &mut out);
                for r in 0..n {
                    let src = rows[r] as usize;
                    for o in 0..out_dim {
                        let twin = layer.at(&x[src * in_dim..(src + 1) * in_dim], o);
                        assert_eq!(
                            out[r * out_dim + o].to_bits(),
                            twin.to_bits(),
                            "n {n} in {in_dim} out {out_dim} at [{r}, {o}]"
                        );
                    }
                }
            }
        }
    }
}
