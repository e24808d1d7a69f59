//! `shaders/train_pair_grad.wgsl`: the pair loss's gradient w.r.t. one
//! side's embeddings. Twin: [`crate::train::kernels::pair_grad_at`].

use super::train_common::{bind_range, bind_rows, groups};
use super::train_gather_rows::DeviceCsr;
use crate::backend::gpu::chunking::Aux;
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant, WG};
use crate::backend::gpu::train_chunks::{self, Entries, Split, Through};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_pair_grad.wgsl",
    variants: f32_only,
    params {
        first: u32,
        end: u32,
        dim: u32,
        off0: u32,
        ids0: u32,
        partner0: u32,
        dlogit0: u32,
        other0: u32,
        out0: u32,
    }
    bindings {
        csr: Read,
        partner: Read,
        loss: Read,
        other: Read,
        out: ReadWrite,
    }
}

/// `out[i, :] = Σ d_logit[p] · other[partner(p), :]` over the pairs `p` of
/// node `i` (`by_node`: each node's pair ids), `partner` giving the partner
/// of each of `by_node`'s entries (device, host); `other` has `other_rows`
/// rows of `dim`. A chunk of nodes per dispatch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    aux: &mut Aux,
    by_node: &DeviceCsr,
    dim: u64,
    partner: (Array, &[u32]),
    d_logit: Array,
    other: Array,
    other_rows: u64,
    out: Array,
) -> Result<(), GpuError> {
    let plan = train_chunks::plan(
        program,
        aux,
        "train_pair_grad",
        Split {
            rows: by_node.host.n_dst() as u64,
            unit: 1,
            entries: Entries::Csr {
                offsets: &by_node.host.offsets,
                device: (by_node.offsets, by_node.ids),
            },
            row_bytes: (dim * 4, out.slot),
            entry_bytes: (4, partner.0.slot),
            unit_bytes: (0, out.slot),
            through: vec![
                Through {
                    index: &by_node.host.sources,
                    device_index: by_node.ids,
                    array: d_logit,
                    rows: d_logit.len,
                    width: 1,
                    written: false,
                },
                Through {
                    index: partner.1,
                    device_index: partner.0,
                    array: other,
                    rows: other_rows,
                    width: dim,
                    written: false,
                },
            ],
            max_rows: program.max_rows(1, u64::from(WG)) as u64,
        },
    )?;
    for (i, chunk) in plan.chunks.iter().enumerate() {
        let d = plan.reach(program, aux, i, 0)?;
        let o = plan.reach(program, aux, i, 1)?;
        let (csr, [off0, ids0]) = chunk.bind_csr(program)?;
        let (partner_b, partner0) = bind_range(program, o.index, chunk.e0, chunk.e1)?;
        let (loss, dlogit0) = bind_range(program, d.array, d.first, d.end)?;
        let (other_b, other0) = bind_range(program, o.array, o.first, o.end)?;
        let (out_b, out0) = bind_rows(program, out, (chunk.begin, chunk.end), dim, dim)?;
        program.dispatch(
            Variant::of(Elem::F32),
            Params {
                first: chunk.begin as u32,
                end: chunk.end as u32,
                dim: dim as u32,
                off0,
                ids0,
                partner0,
                dlogit0,
                other0,
                out0,
            },
            Bindings {
                csr,
                partner: partner_b,
                loss,
                other: other_b,
                out: out_b,
            },
            groups(chunk.end - chunk.begin),
        )?;
    }
    Ok(())
}
