//! `shaders/train_gather_rows.wgsl`: row sums through a CSR list (source
//! gradients of GATv2, the embedding gradient). Twin:
//! [`crate::train::kernels::gather_edges_at`].

use super::train_common::{bind_range, bind_rows, groups};
use crate::backend::gpu::chunking::Aux;
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant, WG};
use crate::backend::gpu::train_chunks::{self, Entries, Split, Through};
use crate::backend::gpu::GpuError;
use crate::graph::Csr;

declare_kernel! {
    file: "train_gather_rows.wgsl",
    variants: f32_only,
    params {
        first: u32,
        end: u32,
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

/// A CSR list on the host and on the device (offsets, then the ids, in one
/// slot).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceCsr<'a> {
    pub host: &'a Csr,
    pub offsets: Array,
    pub ids: Array,
}

/// `out[i, :] = Σ values[ids[j], :]` over `j` in `offsets[i] .. offsets[i + 1]`
/// for every row `i` of `csr`, rows `width` wide; `values` has `value_rows`
/// rows. A chunk of rows per dispatch.
pub(crate) fn record(
    program: &mut Program,
    aux: &mut Aux,
    csr: &DeviceCsr,
    width: u64,
    values: Array,
    value_rows: u64,
    out: Array,
) -> Result<(), GpuError> {
    let plan = train_chunks::plan(
        program,
        aux,
        "train_gather_rows",
        Split {
            rows: csr.host.n_dst() as u64,
            unit: 1,
            entries: Entries::Csr {
                offsets: &csr.host.offsets,
                device: (csr.offsets, csr.ids),
            },
            row_bytes: (width * 4, out.slot),
            entry_bytes: (0, values.slot),
            unit_bytes: (0, values.slot),
            through: vec![Through {
                index: &csr.host.sources,
                device_index: csr.ids,
                array: values,
                rows: value_rows,
                width,
                written: false,
            }],
            max_rows: program.max_rows(1, u64::from(WG)) as u64,
        },
    )?;
    for (i, chunk) in plan.chunks.iter().enumerate() {
        let read = plan.reach(program, aux, i, 0)?;
        let (values, values0) = bind_range(program, read.array, read.first, read.end)?;
        let (csr, [off0, ids0]) = chunk.bind_csr(program)?;
        let (out, out0) = bind_rows(program, out, (chunk.begin, chunk.end), width, width)?;
        program.dispatch(
            Variant::of(Elem::F32),
            Params {
                first: chunk.begin as u32,
                end: chunk.end as u32,
                width: width as u32,
                off0,
                ids0,
                values0,
                out0,
            },
            Bindings { csr, values, out },
            groups(chunk.end - chunk.begin),
        )?;
    }
    Ok(())
}
