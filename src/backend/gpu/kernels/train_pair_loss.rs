//! `shaders/train_pair_loss.wgsl`: each pair's loss term and d loss / d
//! logit. Twin: [`crate::train::kernels::pair_loss_at`].

use super::train_common::{bind_range, groups};
use crate::backend::gpu::chunking::Aux;
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant, WG};
use crate::backend::gpu::train_chunks::{self, Entries, Split, Through};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_pair_loss.wgsl",
    variants: f32_only,
    params {
        n_pairs: u32,
        first: u32,
        end: u32,
        n_pos: u32,
        dim: u32,
        pos_weight: f32,
        tx0: u32,
        bd0: u32,
        ptx0: u32,
        pbd0: u32,
        loss0: u32,
        dlogit0: u32,
    }
    bindings {
        z_tx: Read,
        z_bd: Read,
        ptx: Read,
        pbd: Read,
        loss: ReadWrite,
        dlogit: ReadWrite,
    }
}

/// The pairs of a step: transcript and nucleus of each (positives first),
/// on the device and on the host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DevicePairs<'a> {
    pub n_pairs: u64,
    pub n_pos: u64,
    pub pos_weight: f32,
    pub tx: Array,
    pub bd: Array,
    pub tx_of: &'a [u32],
    pub bd_of: &'a [u32],
}

/// Loss terms into `loss` and d loss / d logit into `d_logit` (`[n_pairs]`
/// each, two slots), a chunk of pairs per dispatch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    aux: &mut Aux,
    pairs: &DevicePairs,
    dim: u64,
    z_tx: Array,
    z_bd: Array,
    loss: Array,
    d_logit: Array,
) -> Result<(), GpuError> {
    let rows_of = |z: Array| z.len.checked_div(dim).unwrap_or(0);
    let plan = train_chunks::plan(
        program,
        aux,
        "train_pair_loss",
        Split {
            rows: pairs.n_pairs,
            unit: 1,
            entries: Entries::PerRow,
            row_bytes: (4, loss.slot),
            entry_bytes: (4, aux.slot),
            unit_bytes: (0, loss.slot),
            through: vec![
                Through {
                    index: pairs.tx_of,
                    device_index: pairs.tx,
                    array: z_tx,
                    rows: rows_of(z_tx),
                    width: dim,
                    written: false,
                },
                Through {
                    index: pairs.bd_of,
                    device_index: pairs.bd,
                    array: z_bd,
                    rows: rows_of(z_bd),
                    width: dim,
                    written: false,
                },
            ],
            max_rows: program.max_rows(1, u64::from(WG)) as u64,
        },
    )?;
    for (i, chunk) in plan.chunks.iter().enumerate() {
        let (begin, end) = (chunk.begin, chunk.end);
        let tx = plan.reach(program, aux, i, 0)?;
        let bd = plan.reach(program, aux, i, 1)?;
        let (z_tx, tx0) = bind_range(program, tx.array, tx.first, tx.end)?;
        let (z_bd, bd0) = bind_range(program, bd.array, bd.first, bd.end)?;
        let (ptx, ptx0) = bind_range(program, tx.index, begin, end)?;
        let (pbd, pbd0) = bind_range(program, bd.index, begin, end)?;
        let (loss_b, loss0) = bind_range(program, loss, begin, end)?;
        let (dlogit, dlogit0) = bind_range(program, d_logit, begin, end)?;
        program.dispatch(
            Variant::of(Elem::F32),
            Params {
                n_pairs: pairs.n_pairs as u32,
                first: begin as u32,
                end: end as u32,
                n_pos: pairs.n_pos as u32,
                dim: dim as u32,
                pos_weight: pairs.pos_weight,
                tx0,
                bd0,
                ptx0,
                pbd0,
                loss0,
                dlogit0,
            },
            Bindings {
                z_tx,
                z_bd,
                ptx,
                pbd,
                loss: loss_b,
                dlogit,
            },
            groups(end - begin),
        )?;
    }
    Ok(())
}
