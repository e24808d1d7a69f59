//! `shaders/train_gatv2_backward.wgsl`: the GATv2 backward of each
//! destination. Twin: [`crate::train::kernels::gatv2_backward_at`].

use super::train_common::{bind_one, bind_together, groups};
use super::train_gatv2_forward::Relation;
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_gatv2_backward.wgsl",
    variants: f32_only,
    params {
        n_dst: u32,
        heads: u32,
        channels: u32,
        xl0: u32,
        xr0: u32,
        off0: u32,
        src0: u32,
        att0: u32,
        alpha0: u32,
        g0: u32,
        dxr0: u32,
        datt0: u32,
        dxl0: u32,
    }
    bindings {
        x: Read,
        csr: Read,
        w: Read,
        alpha: Read,
        g: Read,
        out: ReadWrite,
    }
}

/// Where one relation's backward writes, all in one slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grads {
    /// `[n_dst, H·C]` d/d xr.
    pub dxr: Array,
    /// `[n_dst, H·C]` each destination's d/d att.
    pub datt: Array,
    /// `[E, H·C]` each edge's d/d xl of its source.
    pub dxl_edge: Array,
}

/// The backward of every destination of `r` given `g` `[n_dst, H·C]`
/// (d loss / d output, ReLU mask applied).
pub(crate) fn record(
    program: &mut Program,
    r: &Relation,
    g: Array,
    grads: &Grads,
) -> Result<(), GpuError> {
    let (x, [xl0, xr0]) = bind_together(program, [r.xl, r.xr])?;
    let (csr, [off0, src0]) = bind_together(program, [r.offsets, r.sources])?;
    let (w, att0) = bind_one(program, r.att)?;
    let (alpha, alpha0) = bind_one(program, r.alpha)?;
    let (g, g0) = bind_one(program, g)?;
    let (out, [dxr0, datt0, dxl0]) =
        bind_together(program, [grads.dxr, grads.datt, grads.dxl_edge])?;
    program.dispatch(
        Variant::of(Elem::F32),
        Params {
            n_dst: r.n_dst as u32,
            heads: r.heads as u32,
            channels: r.channels as u32,
            xl0,
            xr0,
            off0,
            src0,
            att0,
            alpha0,
            g0,
            dxr0,
            datt0,
            dxl0,
        },
        Bindings {
            x,
            csr,
            w,
            alpha,
            g,
            out,
        },
        groups(r.n_dst),
    )
}
