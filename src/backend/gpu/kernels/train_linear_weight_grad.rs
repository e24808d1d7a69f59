//! `shaders/train_linear_weight_grad.wgsl` and
//! `shaders/train_sum_partials.wgsl` together: the weight (and bias)
//! gradient of a dense layer, partial sums over fixed row chunks then summed
//! in chunk order. Twins: [`crate::train::kernels::linear_weight_grad_chunk`]
//! (this shader alone), [`crate::train::kernels::linear_weight_grad`] and
//! [`crate::train::kernels::column_sums`] (both shaders).

use super::train_common::{bind_one, groups};
use super::train_sum_partials;
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;
use crate::train::kernels::REDUCE_ROWS;

declare_kernel! {
    file: "train_linear_weight_grad.wgsl",
    variants: f32_only,
    params {
        n_rows: u32,
        in_dim: u32,
        out_dim: u32,
        with_bias: u32,
        gather: u32,
        n_chunks: u32,
        reduce_rows: u32,
        x0: u32,
        rows0: u32,
        dy0: u32,
        part0: u32,
    }
    bindings {
        x: Read,
        rows: Read,
        dy: Read,
        partial: ReadWrite,
    }
}

/// A weight-gradient problem: `dy` `[n_rows, out_dim]` against `x`
/// (`[·, in_dim]`, rows read through `rows` when given); `in_dim` 0 gives
/// the column sums of `dy` (with `with_bias`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WeightGrad {
    pub n_rows: u64,
    pub in_dim: u64,
    pub out_dim: u64,
    pub with_bias: bool,
    pub x: Array,
    pub rows: Option<Array>,
    pub dy: Array,
}

impl WeightGrad {
    /// Elements of one chunk's partial sums: `in·out` (+ `out`).
    pub fn width(&self) -> u64 {
        self.in_dim * self.out_dim + if self.with_bias { self.out_dim } else { 0 }
    }

    /// Row chunks.
    pub fn chunks(&self) -> u64 {
        self.n_rows.div_ceil(REDUCE_ROWS as u64)
    }
}

/// The partial sums of every chunk into `partial` (`[chunks, width]`).
pub(crate) fn record_partials(
    program: &mut Program,
    p: &WeightGrad,
    partial: Array,
) -> Result<(), GpuError> {
    let (x, x0) = bind_one(program, p.x)?;
    let rows_array = p
        .rows
        .unwrap_or(Array::at(crate::backend::gpu::train::INDEX, 4, 1));
    let (rows, rows0) = bind_one(program, rows_array)?;
    let (dy, dy0) = bind_one(program, p.dy)?;
    let (partial, part0) = bind_one(program, partial)?;
    program.dispatch(
        Variant::of(Elem::F32),
        Params {
            n_rows: p.n_rows as u32,
            in_dim: p.in_dim as u32,
            out_dim: p.out_dim as u32,
            with_bias: u32::from(p.with_bias),
            gather: u32::from(p.rows.is_some()),
            n_chunks: p.chunks() as u32,
            reduce_rows: REDUCE_ROWS as u32,
            x0,
            rows0,
            dy0,
            part0,
        },
        Bindings {
            x,
            rows,
            dy,
            partial,
        },
        groups(p.chunks() * p.width()),
    )
}

/// The gradient of `p` into `out` (`[width]`: the weights `[in, out]` then
/// the bias), using `scratch` for the partial sums.
pub(crate) fn record(
    program: &mut Program,
    p: &WeightGrad,
    scratch: Array,
    out: Array,
) -> Result<(), GpuError> {
    let partial = Array {
        len: (p.chunks() * p.width()).max(1),
        ..scratch
    };
    record_partials(program, p, partial)?;
    train_sum_partials::record(program, p.width(), p.chunks(), partial, out)
}
