//! `shaders/score.wgsl`: receptive-field scoring, the best nucleus per
//! transcript (docs/contract.md §8). Twin: [`crate::kernels::score`].

use crate::backend::gpu::chunking::{Aux, Indexed, Planned, COMPACT};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_and_f16, Elem, Variant, WG};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "score.wgsl",
    variants: f32_and_f16,
    params {
        /// Transcripts of this dispatch: `tx_begin .. tx_end`.
        tx_begin: u32,
        tx_end: u32,
        dim: u32,
        k: u32,
        ztx_shift: u32,
        zbd_shift: u32,
        rf_shift: u32,
        out_shift: u32,
    }
    bindings {
        z_tx: Read,
        z_bd: Read,
        rf: Read,
        best_score: ReadWrite,
        best_index: ReadWrite,
    }
}

/// The embeddings scoring reads: `[n_tx, dim]` and `[n_bd, dim]` `act`
/// elements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceEmbeddings {
    pub z_tx: Array,
    pub z_bd: Array,
    pub n_bd: u64,
    pub dim: u64,
}

/// Best nucleus per transcript into `best_score` / `best_index`: each
/// transcript scores the `k` candidates of its row of `rf`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    act: Elem,
    z: DeviceEmbeddings,
    rf: Array,
    k: u64,
    planned: &Planned,
    aux: &Aux,
    best_score: Array,
    best_index: Array,
) -> Result<(), GpuError> {
    let dim = z.dim;
    let nuclei = Indexed {
        array: z.z_bd,
        rows: z.n_bd,
        width: dim,
        elem: act,
        index: rf,
        compact: COMPACT,
    };
    for (i, chunk) in planned.chunks.iter().enumerate() {
        let (t0, t1) = (chunk.begin as u64, chunk.end as u64);
        let (z_bd, rf) = planned.reads(program, aux, i, &nuclei, (t0 * k, t1 * k))?;
        let (z_tx, ztx_shift) = program.bind(z.z_tx, t0 * dim, t1 * dim)?;
        let (z_bd, zbd_shift) = program.bind(z_bd, 0, z_bd.len)?;
        let (rf, rf_shift) = program.bind(rf, t0 * k, t1 * k)?;
        let (best_score, out_shift) = program.bind(best_score, t0, t1)?;
        let (best_index, index_shift) = program.bind(best_index, t0, t1)?;
        debug_assert_eq!(out_shift, index_shift, "one shift serves both outputs");
        program.dispatch(
            Variant::of(act),
            Params {
                tx_begin: t0 as u32,
                tx_end: t1 as u32,
                dim: dim as u32,
                k: k as u32,
                ztx_shift,
                zbd_shift,
                rf_shift,
                out_shift,
            },
            Bindings {
                z_tx,
                z_bd,
                rf,
                best_score,
                best_index,
            },
            (t1 - t0).div_ceil(u64::from(WG)),
        )?;
    }
    Ok(())
}
