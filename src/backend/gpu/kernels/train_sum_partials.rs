//! `shaders/train_sum_partials.wgsl`: chunk partial sums added in chunk
//! order. Twin: the chunk-order loops of
//! [`crate::train::kernels::linear_weight_grad`] and
//! [`crate::train::kernels::column_sums`].

use super::train_common::{bind_one, groups};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_sum_partials.wgsl",
    variants: f32_only,
    params {
        width: u32,
        n_chunks: u32,
        accumulate: u32,
        part0: u32,
        out0: u32,
    }
    bindings {
        partial: Read,
        out: ReadWrite,
    }
}

/// `out[j] = Σ_chunk partial[chunk, j]` for `j < width`, from zero or, with
/// `accumulate`, from `out[j]` (the chunks before this run).
pub(crate) fn record(
    program: &mut Program,
    width: u64,
    n_chunks: u64,
    partial: Array,
    accumulate: bool,
    out: Array,
) -> Result<(), GpuError> {
    let (partial, part0) = bind_one(program, partial)?;
    let (out, out0) = bind_one(program, out)?;
    program.dispatch(
        Variant::of(Elem::F32),
        Params {
            width: width as u32,
            n_chunks: n_chunks as u32,
            accumulate: u32::from(accumulate),
            part0,
            out0,
        },
        Bindings { partial, out },
        groups(width),
    )
}
