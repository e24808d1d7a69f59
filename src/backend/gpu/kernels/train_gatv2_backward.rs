//! `shaders/train_gatv2_backward.wgsl`: the GATv2 backward of each
//! destination. Twin: [`crate::train::kernels::gatv2_backward_at`].

use super::train_common::{bind_one, bind_range, bind_rows, groups};
use super::train_gatv2_forward::Relation;
use crate::backend::gpu::chunking::Aux;
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_gatv2_backward.wgsl",
    variants: f32_only,
    params {
        first: u32,
        end: u32,
        heads: u32,
        channels: u32,
        xl0: u32,
        xr0: u32,
        off0: u32,
        src0: u32,
        att0: u32,
        alpha0: u32,
        g0: u32,
        grads0: u32,
        dxl0: u32,
    }
    bindings {
        xl: Read,
        xr: Read,
        csr: Read,
        w: Read,
        alpha: Read,
        g: Read,
        grads: ReadWrite,
        dxl: ReadWrite,
    }
}

/// Where one relation's backward writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grads {
    /// `[n_dst, 3·H·C]`: per destination d/d xr, its d/d att, then its
    /// contribution to d/d lin_l's bias (one binding for the three: the
    /// kernel already has eight).
    pub per_dst: Array,
    /// `[E, H·C]` each edge's d/d xl of its source.
    pub dxl_edge: Array,
}

impl Grads {
    /// Values per destination row of [`Self::per_dst`], for `H·C` = `hc`.
    pub fn row(hc: u64) -> u64 {
        3 * hc
    }

    /// Block `k` (0 d/d xr, 1 d/d att, 2 lin_l's bias) as rows `3·H·C` apart.
    fn block(&self, hc: u64, k: u64) -> Array {
        Array {
            base: self.per_dst.base + (k * hc) as i64,
            len: self.per_dst.len.saturating_sub(k * hc),
            ..self.per_dst
        }
    }

    /// d/d xr as rows `3·H·C` apart.
    pub fn dxr(&self, hc: u64) -> Array {
        self.block(hc, 0)
    }

    /// d/d att per destination as rows `3·H·C` apart.
    pub fn datt(&self, hc: u64) -> Array {
        self.block(hc, 1)
    }

    /// Each destination's d/d lin_l's bias (`g + d xr`, 0 without edges) as
    /// rows `3·H·C` apart.
    pub fn dbias_l(&self, hc: u64) -> Array {
        self.block(hc, 2)
    }
}

/// The backward of every destination of `r` given `g` `[n_dst, H·C]`
/// (d loss / d output, ReLU mask applied), a chunk of destinations per
/// dispatch.
pub(crate) fn record(
    program: &mut Program,
    aux: &mut Aux,
    r: &Relation,
    g: Array,
    grads: &Grads,
) -> Result<(), GpuError> {
    let hc = r.heads * r.channels;
    let plan = r.plan(
        program,
        aux,
        "train_gatv2_backward",
        (Grads::row(hc) * 4, grads.per_dst.slot),
        (hc * 4, grads.dxl_edge.slot),
        1,
    )?;
    let (w, att0) = bind_one(program, r.att)?;
    for (i, chunk) in plan.chunks.iter().enumerate() {
        let rows = (chunk.begin, chunk.end);
        let xl = plan.reach(program, aux, i, 0)?;
        let (xl, xl0) = bind_range(program, xl.array, xl.first, xl.end)?;
        let (xr, xr0) = bind_rows(program, r.xr, rows, hc, hc)?;
        let (csr, [off0, src0]) = chunk.bind_csr(program)?;
        let (alpha, alpha0) = bind_range(program, r.alpha, chunk.e0 * r.heads, chunk.e1 * r.heads)?;
        let (g, g0) = bind_rows(program, g, rows, hc, hc)?;
        let row = Grads::row(hc);
        let (per_dst, grads0) = bind_rows(program, grads.per_dst, rows, row, row)?;
        let (dxl, dxl0) = bind_range(program, grads.dxl_edge, chunk.e0 * hc, chunk.e1 * hc)?;
        program.dispatch(
            Variant::of(Elem::F32),
            Params {
                first: chunk.begin as u32,
                end: chunk.end as u32,
                heads: r.heads as u32,
                channels: r.channels as u32,
                xl0,
                xr0,
                off0,
                src0,
                att0,
                alpha0,
                g0,
                grads0,
                dxl0,
            },
            Bindings {
                xl,
                xr,
                csr,
                w,
                alpha,
                g,
                grads: per_dst,
                dxl,
            },
            groups(chunk.end - chunk.begin),
        )?;
    }
    Ok(())
}
