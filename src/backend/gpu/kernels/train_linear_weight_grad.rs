//! `shaders/train_linear_weight_grad.wgsl` and
//! `shaders/train_sum_partials.wgsl` together: the weight (and bias)
//! gradient of a dense layer, partial sums over fixed row chunks then summed
//! in chunk order. Twins: [`crate::train::kernels::linear_weight_grad_chunk`]
//! (this shader alone), [`crate::train::kernels::linear_weight_grad`] and
//! [`crate::train::kernels::column_sums`] (both shaders).
//!
//! When the rows do not fit one binding, each dispatch covers a run of whole
//! reduction chunks (the chunks, hence the sums, are those of one dispatch)
//! and the runs' partial sums are added one run after another, in chunk
//! order.

use super::train_common::{bind_one, bind_range, bind_rows, groups};
use super::train_sum_partials;
use crate::backend::gpu::chunking::Aux;
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant, WG};
use crate::backend::gpu::train_chunks::{self, Entries, Split, Through};
use crate::backend::gpu::GpuError;
use crate::train::kernels::REDUCE_ROWS;

declare_kernel! {
    file: "train_linear_weight_grad.wgsl",
    variants: f32_only,
    params {
        first: u32,
        end: u32,
        n_rows: u32,
        in_dim: u32,
        out_dim: u32,
        dy_stride: u32,
        with_bias: u32,
        gather: u32,
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

/// A weight-gradient problem: `dy` `[n_rows, out_dim]` (rows `dy_stride`
/// apart) against `x` (`[·, in_dim]`, rows read through `rows`, on the
/// device and the host, when given); `in_dim` 0 gives the column sums of
/// `dy` (with `with_bias`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WeightGrad<'a> {
    pub n_rows: u64,
    pub in_dim: u64,
    pub out_dim: u64,
    pub with_bias: bool,
    pub x: Array,
    pub rows: Option<(Array, &'a [u32])>,
    pub dy: Array,
    pub dy_stride: u64,
}

impl WeightGrad<'_> {
    /// Elements of one chunk's partial sums: `in·out` (+ `out`).
    pub fn width(&self) -> u64 {
        self.in_dim * self.out_dim + if self.with_bias { self.out_dim } else { 0 }
    }

    /// Row chunks (the test entry points size the partial sums with it).
    #[cfg(any(test, feature = "testing"))]
    pub fn chunks(&self) -> u64 {
        self.n_rows.div_ceil(REDUCE_ROWS as u64)
    }
}

/// With `out`, the gradient of `p` into `out` (`[width]`: the weights
/// `[in, out]` then the bias), the partial sums of each run of chunks in
/// `scratch` (a slot, sized here); without, the partial sums of every chunk
/// into `scratch` (`[chunks, width]`).
pub(crate) fn record(
    program: &mut Program,
    aux: &mut Aux,
    p: &WeightGrad,
    scratch: Array,
    out: Option<Array>,
) -> Result<(), GpuError> {
    let width = p.width();
    let reduce = REDUCE_ROWS as u64;
    let (entries, through) = match p.rows {
        Some((rows, host)) => (
            Entries::PerRow,
            vec![Through {
                index: host,
                device_index: rows,
                array: p.x,
                rows: p.x.len / p.in_dim.max(1),
                width: p.in_dim,
                written: false,
            }],
        ),
        None => (Entries::None, Vec::new()),
    };
    let row_bytes = if p.rows.is_none() && p.in_dim > p.dy_stride {
        (p.in_dim * 4, p.x.slot)
    } else {
        (p.dy_stride * 4, p.dy.slot)
    };
    let plan = train_chunks::plan(
        program,
        aux,
        "train_linear_weight_grad",
        Split {
            rows: p.n_rows,
            unit: reduce,
            entries,
            row_bytes,
            entry_bytes: (4, aux.slot),
            unit_bytes: (width * 4, scratch.slot),
            through,
            max_rows: (program.max_rows(width, u64::from(WG)) as u64).saturating_mul(reduce),
        },
    )?;
    for (i, chunk) in plan.chunks.iter().enumerate() {
        let (c0, c1) = (chunk.begin / reduce, chunk.end.div_ceil(reduce));
        // The partial sums of chunks c0 .. c1, from the scratch's start when
        // summed here.
        let partial = match out {
            Some(_) => {
                program.need(scratch.slot, (c1 - c0) * width * 4);
                Array {
                    base: scratch.base - (c0 * width) as i64,
                    len: c1 * width,
                    ..scratch
                }
            }
            None => scratch,
        };
        let rows_range = (chunk.begin, chunk.end);
        let ((x, x0), (rows, rows0)) = match p.rows {
            Some(_) => {
                let reached = plan.reach(program, aux, i, 0)?;
                (
                    bind_range(program, reached.array, reached.first, reached.end)?,
                    bind_range(program, reached.index, chunk.begin, chunk.end)?,
                )
            }
            // Not read without a gather: any u32 array fills the binding.
            None => (
                bind_rows(program, p.x, rows_range, p.in_dim, p.in_dim)?,
                bind_one(program, aux.array(0, 1))?,
            ),
        };
        let (dy, dy0) = bind_rows(program, p.dy, rows_range, p.dy_stride, p.out_dim)?;
        let (partial_b, part0) = bind_range(program, partial, c0 * width, c1 * width)?;
        program.dispatch(
            Variant::of(Elem::F32),
            Params {
                first: (c0 * width) as u32,
                end: (c1 * width) as u32,
                n_rows: p.n_rows as u32,
                in_dim: p.in_dim as u32,
                out_dim: p.out_dim as u32,
                dy_stride: p.dy_stride as u32,
                with_bias: u32::from(p.with_bias),
                gather: u32::from(p.rows.is_some()),
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
                partial: partial_b,
            },
            groups((c1 - c0) * width),
        )?;
        if let Some(out) = out {
            let run = Array {
                base: partial.base + (c0 * width) as i64,
                len: (c1 - c0) * width,
                ..partial
            };
            train_sum_partials::record(program, width, c1 - c0, run, i > 0, out)?;
        }
    }
    Ok(())
}
