//! `shaders/train_linear_input_grad.wgsl`: `dx = dy · wtᵀ`, stored, added,
//! or added to scattered rows. Twin:
//! [`crate::train::kernels::linear_input_grad_at`].

use super::train_common::{bind_one, bind_range, bind_rows, groups};
use crate::backend::gpu::chunking::Aux;
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant, WG};
use crate::backend::gpu::train_chunks::{self, Entries, Split, Through};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "train_linear_input_grad.wgsl",
    variants: f32_only,
    params {
        first: u32,
        end: u32,
        in_dim: u32,
        out_dim: u32,
        dy_stride: u32,
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
pub(crate) enum Store<'a> {
    /// `dx[r] = result`.
    Overwrite,
    /// `dx[r] += result`.
    Add,
    /// `dx[rows[r]] += result` (rows distinct): the rows on the device and
    /// on the host.
    AddTo(Array, &'a [u32]),
}

/// The input gradient of `n_rows` rows: `dy` `[n_rows, out_dim]` (rows
/// `dy_stride` apart), `wt` `[in_dim, out_dim]` in the weights slot; a chunk
/// of rows per dispatch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    aux: &mut Aux,
    n_rows: u64,
    in_dim: u64,
    out_dim: u64,
    (dy, dy_stride): (Array, u64),
    wt: Array,
    store: Store,
    dx: Array,
) -> Result<(), GpuError> {
    let (entries, through) = match store {
        Store::AddTo(rows, host) => (
            Entries::PerRow,
            vec![Through {
                index: host,
                device_index: rows,
                array: dx,
                rows: dx.len / in_dim.max(1),
                width: in_dim,
                written: true,
            }],
        ),
        _ => (Entries::None, Vec::new()),
    };
    let row_bytes = if dy_stride >= in_dim {
        (dy_stride * 4, dy.slot)
    } else {
        (in_dim * 4, dx.slot)
    };
    let scatter = !through.is_empty();
    let plan = train_chunks::plan(
        program,
        aux,
        "train_linear_input_grad",
        Split {
            rows: n_rows,
            unit: 1,
            entries,
            row_bytes,
            entry_bytes: (4, aux.slot),
            unit_bytes: (0, dx.slot),
            through,
            max_rows: program.max_rows(in_dim, u64::from(WG)) as u64,
        },
    )?;
    let (w, wt0) = bind_one(program, wt)?;
    for (i, chunk) in plan.chunks.iter().enumerate() {
        let rows_range = (chunk.begin, chunk.end);
        let (dy_b, dy0) = bind_rows(program, dy, rows_range, dy_stride, out_dim)?;
        let ((rows, rows0), (dx_b, dx0)) = if scatter {
            let reached = plan.reach(program, aux, i, 0)?;
            (
                bind_range(program, reached.index, chunk.begin, chunk.end)?,
                bind_range(program, reached.array, reached.first, reached.end)?,
            )
        } else {
            // Not read unless scattering: any u32 array fills the binding.
            (
                bind_one(program, aux.array(0, 1))?,
                bind_rows(program, dx, rows_range, in_dim, in_dim)?,
            )
        };
        program.dispatch(
            Variant::of(Elem::F32),
            Params {
                first: (chunk.begin * in_dim) as u32,
                end: (chunk.end * in_dim) as u32,
                in_dim: in_dim as u32,
                out_dim: out_dim as u32,
                dy_stride: dy_stride as u32,
                accumulate: u32::from(!matches!(store, Store::Overwrite)),
                scatter: u32::from(scatter),
                dy0,
                wt0,
                rows0,
                dx0,
            },
            Bindings {
                dy: dy_b,
                w,
                rows,
                dx: dx_b,
            },
            groups((chunk.end - chunk.begin) * in_dim),
        )?;
    }
    Ok(())
}
