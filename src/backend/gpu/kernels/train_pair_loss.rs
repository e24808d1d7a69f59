//! `shaders/train_pair_loss.wgsl`: each pair's loss term and d loss / d
//! logit. Twin: [`crate::train::kernels::pair_loss_at`].

use super::train_common::{bind_one, bind_together, groups};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_pair_loss.wgsl",
    variants: f32_only,
    params {
        n_pairs: u32,
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
        pairs: Read,
        out: ReadWrite,
    }
}

/// The pairs of a step on the GPU: transcript and nucleus of each (positives
/// first), in one slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DevicePairs {
    pub n_pairs: u64,
    pub n_pos: u64,
    pub pos_weight: f32,
    pub tx: Array,
    pub bd: Array,
}

/// Loss terms into `loss` and d loss / d logit into `d_logit` (`[n_pairs]`
/// each, one slot).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    pairs: &DevicePairs,
    dim: u64,
    z_tx: Array,
    z_bd: Array,
    loss: Array,
    d_logit: Array,
) -> Result<(), GpuError> {
    let (z_tx, tx0) = bind_one(program, z_tx)?;
    let (z_bd, bd0) = bind_one(program, z_bd)?;
    let (pair_binding, [ptx0, pbd0]) = bind_together(program, [pairs.tx, pairs.bd])?;
    let (out, [loss0, dlogit0]) = bind_together(program, [loss, d_logit])?;
    program.dispatch(
        Variant::of(Elem::F32),
        Params {
            n_pairs: pairs.n_pairs as u32,
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
            pairs: pair_binding,
            out,
        },
        groups(pairs.n_pairs),
    )
}
