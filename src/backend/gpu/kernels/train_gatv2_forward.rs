//! `shaders/train_gatv2_forward.wgsl`: the GATv2 forward keeping its
//! attention weights. Twin: [`crate::train::kernels::gatv2_forward_at`].

use super::train_common::{bind_one, bind_together, groups};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_gatv2_forward.wgsl",
    variants: f32_only,
    params {
        n_dst: u32,
        heads: u32,
        channels: u32,
        relu: u32,
        xl0: u32,
        xr0: u32,
        off0: u32,
        src0: u32,
        att0: u32,
        bias0: u32,
        out0: u32,
        alpha0: u32,
    }
    bindings {
        x: Read,
        csr: Read,
        w: Read,
        out: ReadWrite,
        alpha: ReadWrite,
    }
}

/// One relation's shapes and where its arrays are on the GPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Relation {
    pub n_dst: u64,
    pub heads: u64,
    pub channels: u64,
    /// `[n_src, H·C]` and `[n_dst, H·C]`, in one slot.
    pub xl: Array,
    pub xr: Array,
    /// CSR by destination: `[n_dst + 1]` offsets and `[E]` sources, in one slot.
    pub offsets: Array,
    pub sources: Array,
    /// `att` `[H·C]` and `bias` `[H·C]` in the weights slot.
    pub att: Array,
    pub bias: Array,
    /// `[E, H]` attention weights.
    pub alpha: Array,
}

/// `out` `[n_dst, H·C]` and `alpha` of every destination of `r`.
pub(crate) fn record(
    program: &mut Program,
    r: &Relation,
    relu: bool,
    out: Array,
) -> Result<(), GpuError> {
    let (x, [xl0, xr0]) = bind_together(program, [r.xl, r.xr])?;
    let (csr, [off0, src0]) = bind_together(program, [r.offsets, r.sources])?;
    let (w, [att0, bias0]) = bind_together(program, [r.att, r.bias])?;
    let (out, out0) = bind_one(program, out)?;
    let (alpha, alpha0) = bind_one(program, r.alpha)?;
    program.dispatch(
        Variant::of(Elem::F32),
        Params {
            n_dst: r.n_dst as u32,
            heads: r.heads as u32,
            channels: r.channels as u32,
            relu: u32::from(relu),
            xl0,
            xr0,
            off0,
            src0,
            att0,
            bias0,
            out0,
            alpha0,
        },
        Bindings {
            x,
            csr,
            w,
            out,
            alpha,
        },
        groups(r.n_dst * r.heads),
    )
}
