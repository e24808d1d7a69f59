//! `shaders/train_pair_grad.wgsl`: the pair loss's gradient w.r.t. one
//! side's embeddings. Twin: [`crate::train::kernels::pair_grad_at`].

use super::train_common::{bind_one, bind_together, groups};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_pair_grad.wgsl",
    variants: f32_only,
    params {
        n_nodes: u32,
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
        pairs: Read,
        loss: Read,
        other: Read,
        out: ReadWrite,
    }
}

/// `out[i, :] = Σ d_logit[p] · other[partner[p], :]` over the pairs `p` of
/// node `i` (`offsets` `[n_nodes + 1]` and pair `ids`, one slot).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    n_nodes: u64,
    dim: u64,
    offsets: Array,
    ids: Array,
    partner: Array,
    d_logit: Array,
    other: Array,
    out: Array,
) -> Result<(), GpuError> {
    let (csr, [off0, ids0]) = bind_together(program, [offsets, ids])?;
    let (pairs, partner0) = bind_one(program, partner)?;
    let (loss, dlogit0) = bind_one(program, d_logit)?;
    let (other, other0) = bind_one(program, other)?;
    let (out, out0) = bind_one(program, out)?;
    program.dispatch(
        Variant::of(Elem::F32),
        Params {
            n_nodes: n_nodes as u32,
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
            pairs,
            loss,
            other,
            out,
        },
        groups(n_nodes),
    )
}
