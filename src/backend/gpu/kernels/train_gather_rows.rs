//! `shaders/train_gather_rows.wgsl`: row sums through a CSR list (source
//! gradients of GATv2, the embedding gradient). Twin:
//! [`crate::train::kernels::gather_edges_at`].

use super::train_common::{bind_one, bind_together, groups};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_gather_rows.wgsl",
    variants: f32_only,
    params {
        n_rows: u32,
        width: u32,
        off0: u32,
        ids0: u32,
        values0: u32,
        out0: u32,
    }
    bindings {
        csr: Read,
        values: Read,
        out: ReadWrite,
    }
}

/// `out[i, :] = Σ values[ids[j], :]` over `j` in `offsets[i] .. offsets[i + 1]`
/// for `n_rows` rows of `width`; `offsets` and `ids` in one slot.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    n_rows: u64,
    width: u64,
    offsets: Array,
    ids: Array,
    values: Array,
    out: Array,
) -> Result<(), GpuError> {
    let (csr, [off0, ids0]) = bind_together(program, [offsets, ids])?;
    let (values, values0) = bind_one(program, values)?;
    let (out, out0) = bind_one(program, out)?;
    program.dispatch(
        Variant::of(Elem::F32),
        Params {
            n_rows: n_rows as u32,
            width: width as u32,
            off0,
            ids0,
            values0,
            out0,
        },
        Bindings { csr, values, out },
        groups(n_rows),
    )
}
