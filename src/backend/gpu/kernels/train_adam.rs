//! `shaders/train_adam.wgsl`: Adam over every parameter. Twin:
//! [`crate::train::kernels::adam_at`].

use super::train_common::{bind_range, element_chunks, groups};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;
use crate::train::kernels::AdamConfig;

declare_kernel! {
    file: "train_adam.wgsl",
    variants: f32_only,
    params {
        first: u32,
        end: u32,
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
/// elements of `param`, a binding-sized chunk per dispatch.
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
    for (first, end) in element_chunks(program, param.len, 4) {
        let (param_b, param0) = bind_range(program, param, first, end)?;
        let (grad_b, grad0) = bind_range(program, grad, first, end)?;
        let (m_b, m0) = bind_range(program, m, first, end)?;
        let (v_b, v0) = bind_range(program, v, first, end)?;
        program.dispatch(
            Variant::of(Elem::F32),
            Params {
                first: first as u32,
                end: end as u32,
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
            Bindings {
                param: param_b,
                grad: grad_b,
                m: m_b,
                v: v_b,
            },
            groups(end - first),
        )?;
    }
    Ok(())
}
