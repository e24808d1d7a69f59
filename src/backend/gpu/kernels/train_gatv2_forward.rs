//! `shaders/train_gatv2_forward.wgsl`: the GATv2 forward keeping its
//! attention weights. Twin: [`crate::train::kernels::gatv2_forward_at`].

use super::train_common::{bind_range, bind_rows, bind_together, groups};
use crate::backend::gpu::chunking::Aux;
use crate::backend::gpu::program::{Array, Program, Slot};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant, WG};
use crate::backend::gpu::train_chunks::{self, Entries, Plan, Split, Through};
use crate::backend::gpu::GpuError;
use crate::graph::Csr;

declare_kernel! {
    file: "train_gatv2_forward.wgsl",
    variants: f32_only,
    params {
        first: u32,
        end: u32,
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
        xl: Read,
        xr: Read,
        csr: Read,
        w: Read,
        out: ReadWrite,
        alpha: ReadWrite,
    }
}

/// One relation's shapes and where its arrays are on the GPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Relation<'a> {
    pub n_src: u64,
    pub n_dst: u64,
    pub heads: u64,
    pub channels: u64,
    /// `[n_src, H·C]` and `[n_dst, H·C]`.
    pub xl: Array,
    pub xr: Array,
    /// The CSR by destination on the host, and on the device: `[n_dst + 1]`
    /// offsets followed by the `[E]` sources in one slot.
    pub csr: &'a Csr,
    pub offsets: Array,
    pub sources: Array,
    /// `att` `[H·C]` and `bias` `[H·C]` in the weights slot.
    pub att: Array,
    pub bias: Array,
    /// `[E, H]` attention weights.
    pub alpha: Array,
}

impl<'a> Relation<'a> {
    /// Chunks of destinations whose windows (`row_bytes` per destination,
    /// `entry_bytes` per edge) and sources' rows fit a binding.
    pub(crate) fn plan(
        &self,
        program: &Program,
        aux: &mut Aux,
        what: &str,
        row_bytes: (u64, Slot),
        entry_bytes: (u64, Slot),
        items_per_row: u64,
    ) -> Result<Plan<'a>, GpuError> {
        let hc = self.heads * self.channels;
        train_chunks::plan(
            program,
            aux,
            what,
            Split {
                rows: self.n_dst,
                unit: 1,
                entries: Entries::Csr {
                    offsets: &self.csr.offsets,
                    device: (self.offsets, self.sources),
                },
                row_bytes,
                entry_bytes,
                unit_bytes: (0, self.xl.slot),
                through: vec![Through {
                    index: &self.csr.sources,
                    device_index: self.sources,
                    array: self.xl,
                    rows: self.n_src,
                    width: hc,
                    written: false,
                }],
                max_rows: program.max_rows(items_per_row, u64::from(WG)) as u64,
            },
        )
    }
}

/// `out` `[n_dst, H·C]` and `alpha` of every destination of `r`, a chunk of
/// destinations per dispatch.
pub(crate) fn record(
    program: &mut Program,
    aux: &mut Aux,
    r: &Relation,
    relu: bool,
    out: Array,
) -> Result<(), GpuError> {
    let hc = r.heads * r.channels;
    let plan = r.plan(
        program,
        aux,
        "train_gatv2_forward",
        (hc * 4, out.slot),
        (r.heads * 4, r.alpha.slot),
        r.heads,
    )?;
    let (w, [att0, bias0]) = bind_together(program, [r.att, r.bias])?;
    for (i, chunk) in plan.chunks.iter().enumerate() {
        let rows = (chunk.begin, chunk.end);
        let xl = plan.reach(program, aux, i, 0)?;
        let (xl, xl0) = bind_range(program, xl.array, xl.first, xl.end)?;
        let (xr, xr0) = bind_rows(program, r.xr, rows, hc, hc)?;
        let (csr, [off0, src0]) = chunk.bind_csr(program)?;
        let (out, out0) = bind_rows(program, out, rows, hc, hc)?;
        let (alpha, alpha0) = bind_range(program, r.alpha, chunk.e0 * r.heads, chunk.e1 * r.heads)?;
        program.dispatch(
            Variant::of(Elem::F32),
            Params {
                first: (chunk.begin * r.heads) as u32,
                end: (chunk.end * r.heads) as u32,
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
                xl,
                xr,
                csr,
                w,
                out,
                alpha,
            },
            groups((chunk.end - chunk.begin) * r.heads),
        )?;
    }
    Ok(())
}
