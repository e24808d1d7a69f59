//! `shaders/train_relu_backward.wgsl`: ReLU backward in place. Twin:
//! [`crate::train::kernels::relu_backward`].

use super::train_common::{bind_range, element_chunks, groups};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_relu_backward.wgsl",
    variants: f32_only,
    params {
        first: u32,
        end: u32,
        g0: u32,
        out0: u32,
    }
    bindings {
        g: ReadWrite,
        out: Read,
    }
}

/// `g[i] = 0` where `out[i] <= 0`, for the `g.len` elements of `g`, a
/// binding-sized chunk per dispatch.
pub(crate) fn record(program: &mut Program, g: Array, out: Array) -> Result<(), GpuError> {
    for (first, end) in element_chunks(program, g.len, 4) {
        let (g_binding, g0) = bind_range(program, g, first, end)?;
        let (out_binding, out0) = bind_range(program, out, first, end)?;
        program.dispatch(
            Variant::of(Elem::F32),
            Params {
                first: first as u32,
                end: end as u32,
                g0,
                out0,
            },
            Bindings {
                g: g_binding,
                out: out_binding,
            },
            groups(end - first),
        )?;
    }
    Ok(())
}
