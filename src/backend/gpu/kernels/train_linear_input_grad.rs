//! `shaders/train_linear_input_grad.wgsl`: `dx = dy · wtᵀ`, stored, added,
//! or added to scattered rows. Twin:
//! [`crate::train::kernels::linear_input_grad_at`].

use super::train_common::{bind_one, groups};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_linear_input_grad.wgsl",
    variants: f32_only,
    params {
        n_rows: u32,
        in_dim: u32,
        out_dim: u32,
        accumulate: u32,
        scatter: u32,
        dy0: u32,
        wt0: u32,
        rows0: u32,
        dx0: u32,
    }
    bindings {
        dy: Read,
        w: Read,
        rows: Read,
        dx: ReadWrite,
    }
}

/// How the result reaches `dx`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Store {
    /// `dx[r] = result`.
    Overwrite,
    /// `dx[r] += result`.
    Add,
    /// `dx[rows[r]] += result` (rows distinct).
    AddTo(Array),
}

/// The input gradient of `n_rows` rows: `dy` `[n_rows, out_dim]`, `wt`
/// `[in_dim, out_dim]` in the weights slot.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    n_rows: u64,
    in_dim: u64,
    out_dim: u64,
    dy: Array,
    wt: Array,
    store: Store,
    dx: Array,
) -> Result<(), GpuError> {
    let (dy, dy0) = bind_one(program, dy)?;
    let (w, wt0) = bind_one(program, wt)?;
    // Not read unless scattering: any u32 array fills the binding.
    let rows_array = match store {
        Store::AddTo(rows) => rows,
        _ => Array::at(crate::backend::gpu::train::INDEX, 4, 1),
    };
    let (rows, rows0) = bind_one(program, rows_array)?;
    let (dx, dx0) = bind_one(program, dx)?;
    program.dispatch(
        Variant::of(Elem::F32),
        Params {
            n_rows: n_rows as u32,
            in_dim: in_dim as u32,
            out_dim: out_dim as u32,
            accumulate: u32::from(!matches!(store, Store::Overwrite)),
            scatter: u32::from(matches!(store, Store::AddTo(_))),
            dy0,
            wt0,
            rows0,
            dx0,
        },
        Bindings { dy, w, rows, dx },
        groups(n_rows * in_dim),
    )
}
