//! `shaders/train_adam.wgsl`: Adam over every parameter. Twin:
//! [`crate::train::kernels::adam_at`].

use super::train_common::{bind_one, groups};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;
use crate::train::kernels::AdamConfig;

declare_kernel! {
    file: "train_adam.wgsl",
    variants: f32_only,
    params {
        n: u32,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        bias1: f32,
        bias2: f32,
        param0: u32,
        grad0: u32,
        m0: u32,
        v0: u32,
    }
    bindings {
        param: ReadWrite,
        grad: Read,
        m: ReadWrite,
        v: ReadWrite,
    }
}

/// Step `t` (1-based) of Adam with learning rate `lr` on the `param.len`
/// elements of `param`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    config: &AdamConfig,
    lr: f32,
    t: u32,
    param: Array,
    grad: Array,
    m: Array,
    v: Array,
) -> Result<(), GpuError> {
    let n = param.len;
    let (param, param0) = bind_one(program, param)?;
    let (grad, grad0) = bind_one(program, grad)?;
    let (m, m0) = bind_one(program, m)?;
    let (v, v0) = bind_one(program, v)?;
    program.dispatch(
        Variant::of(Elem::F32),
        Params {
            n: n as u32,
            lr,
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            // As the twin computes them.
            bias1: 1.0 - config.beta1.powi(t as i32),
            bias2: 1.0 - config.beta2.powi(t as i32),
            param0,
            grad0,
            m0,
            v0,
        },
        Bindings { param, grad, m, v },
        groups(n),
    )
}
