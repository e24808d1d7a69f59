//! Twin of `shaders/linear.wgsl`: `y[r, o] = Σ_k x[row(r), k] · wt[k, o] + b[o]`,
//! optionally followed by ReLU. The sum runs over k from 0 upwards in one f32
//! accumulator that starts at zero; the bias is added after the sum — the
//! order the shader uses. Rows may be gathered through an index list.

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
            acc += x_row[k] * self.wt[k * self.out_dim + o];
        }
        self.finish(acc, o)
    }
}

/// Output columns one register block covers.
const COLS: usize = 16;
/// Rows one register block covers.
const ROWS: usize = 4;

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
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { run_block_avx2(layer, first, block, input_row) };
        return;
    }
    run_block_portable(layer, first, block, input_row);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_block_avx2<'x>(
    layer: &Linear,
    first: usize,
    block: &mut [f32],
    input_row: &(dyn Fn(usize) -> &'x [f32] + Sync),
) {
    run_block_portable(layer, first, block, input_row);
}

/// Register-blocked evaluation of `Linear::at` for a block of rows: the same
/// sums in the same order, several outputs at a time so the compiler can
/// vectorise across output columns.
#[inline(always)]
fn run_block_portable<'x>(
    layer: &Linear,
    first: usize,
    block: &mut [f32],
    input_row: &(dyn Fn(usize) -> &'x [f32] + Sync),
) {
    let (in_dim, out_dim) = (layer.in_dim, layer.out_dim);
    let n_rows = block.len() / out_dim;
    let mut r = 0;
    while r < n_rows {
        let rows_here = ROWS.min(n_rows - r);
        let inputs: [&[f32]; ROWS] =
            std::array::from_fn(|i| input_row(first + r + i.min(rows_here - 1)));
        let mut o0 = 0;
        while o0 < out_dim {
            if o0 + COLS <= out_dim {
                let mut acc = [[0.0f32; COLS]; ROWS];
                for k in 0..in_dim {
                    let w: &[f32; COLS] = layer.wt[k * out_dim + o0..k * out_dim + o0 + COLS]
                        .try_into()
                        .expect("COLS-wide slice");
                    for (acc_row, input) in acc.iter_mut().zip(&inputs) {
                        let xv = input[k];
                        for c in 0..COLS {
                            acc_row[c] += xv * w[c];
                        }
                    }
                }
                for (i, acc_row) in acc.iter().enumerate().take(rows_here) {
                    let out_row = &mut block[(r + i) * out_dim..(r + i + 1) * out_dim];
                    for c in 0..COLS {
                        out_row[o0 + c] = layer.finish(acc_row[c], o0 + c);
                    }
                }
                o0 += COLS;
            } else {
                for (i, input) in inputs.iter().enumerate().take(rows_here) {
                    for o in o0..out_dim {
                        block[(r + i) * out_dim + o] = layer.at(input, o);
                    }
                }
                o0 = out_dim;
            }
        }
        r += rows_here;
    }
}
