//! `shaders/train_relu_backward.wgsl`: ReLU backward in place. Twin:
//! [`crate::train::kernels::relu_backward`].

use super::train_common::{bind_one, groups};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_relu_backward.wgsl",
    variants: f32_only,
    params {
        n: u32,
        g0: u32,
        out0: u32,
    }
    bindings {
        g: ReadWrite,
        out: Read,
    }
}

/// `g[i] = 0` where `out[i] <= 0`, for the `g.len` elements of `g`.
pub(crate) fn record(program: &mut Program, g: Array, out: Array) -> Result<(), GpuError> {
    let n = g.len;
    let (g, g0) = bind_one(program, g)?;
    let (out, out0) = bind_one(program, out)?;
    program.dispatch(
        Variant::of(Elem::F32),
        Params {
            n: n as u32,
            g0,
            out0,
        },
        Bindings { g, out },
        groups(n),
    )
}
