//! `shaders/linear.wgsl`: a dense layer, rows optionally gathered through an
//! index list. Twin: [`crate::kernels::linear`].

use crate::backend::gpu::chunking::{streamed_chunks, Aux, Indexed, Planned, COMPACT};
use crate::backend::gpu::plan::Chunk;
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{Elem, Variant, MIN_MAX_C, TILE, TM, TN};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "linear.wgsl",
    variants: variants,
    params {
        /// Output rows of this dispatch: `row_begin .. row_end`.
        row_begin: u32,
        row_end: u32,
        in_dim: u32,
        out_dim: u32,
        /// Flags (0/1).
        gather: u32,
        has_bias: u32,
        relu: u32,
        /// Column blocks per row block: ⌈out_dim / (TILE·TN)⌉.
        n_col_tiles: u32,
        x_shift: u32,
        rows_shift: u32,
        /// Indices of wt[0, 0] and b[0] in the `w` binding.
        w_base: u32,
        b_base: u32,
        out_shift: u32,
    }
    bindings {
        x: Read,
        rows: Read,
        w: Read,
        out: ReadWrite,
    }
}

/// f32 and f16 activations, and f16 activations computed from an f32 input
/// (the nucleus features).
fn variants() -> Vec<Variant> {
    vec![
        Variant::of(Elem::F32),
        Variant::of(Elem::F16),
        Variant {
            act: Elem::F16,
            act_in: Elem::F32,
            max_c: MIN_MAX_C,
        },
    ]
}

/// Most rows one linear dispatch may cover: whole row tiles of a full grid.
pub(crate) fn max_rows(program: &Program, out_dim: u64) -> usize {
    let row_tiles = (program.max_groups() / col_tiles(out_dim)).max(1);
    usize::try_from(row_tiles * u64::from(TILE * TM)).unwrap_or(usize::MAX)
}

/// Column blocks of a linear dispatch.
fn col_tiles(out_dim: u64) -> u64 {
    out_dim.div_ceil(u64::from(TILE * TN)).max(1)
}

/// A dense layer's weights in a weights slot: `wt` `[in, out]` then `bias`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinearWeights {
    pub block: Array,
    pub in_dim: u64,
    pub out_dim: u64,
    pub has_bias: bool,
}

/// Rows read through an index list.
pub(crate) struct Gathered<'a> {
    pub rows: Array,
    pub planned: &'a Planned,
    /// Rows of `x`.
    pub x_rows: u64,
}

/// `out[r, :] = linear(x[row(r), :])` for `n_rows` rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    variant: Variant,
    x: Array,
    gathered: Option<&Gathered>,
    aux: &Aux,
    n_rows: u64,
    w: LinearWeights,
    relu: bool,
    out: Array,
) -> Result<(), GpuError> {
    let (in_dim, out_dim) = (w.in_dim, w.out_dim);
    let streamed;
    let chunks: &[Chunk] = match gathered {
        Some(g) => &g.planned.chunks,
        None => {
            let row_bytes = (in_dim * variant.act_in.bytes()).max(out_dim * variant.act.bytes());
            let max_rows = max_rows(program, out_dim);
            streamed = streamed_chunks(program, n_rows as usize, row_bytes, max_rows)?;
            &streamed
        }
    };
    let (w_binding, w_shift) = program.bind(w.block, 0, w.block.len)?;
    let n_col_tiles = col_tiles(out_dim);
    for (i, chunk) in chunks.iter().enumerate() {
        let (begin, end) = (chunk.begin as u64, chunk.end as u64);
        let ((x, x_shift), (rows, rows_shift)) = match gathered {
            Some(g) => {
                let indexed = Indexed {
                    array: x,
                    rows: g.x_rows,
                    width: in_dim,
                    elem: variant.act_in,
                    index: g.rows,
                    compact: COMPACT,
                };
                let (x, rows) = g.planned.reads(program, aux, i, &indexed, (begin, end))?;
                (program.bind(x, 0, x.len)?, program.bind(rows, begin, end)?)
            }
            // Not read without a gather: the weights fill the binding.
            None => (
                program.bind(x, begin * in_dim, end * in_dim)?,
                (w_binding, 0),
            ),
        };
        let (out, out_shift) = program.bind(out, begin * out_dim, end * out_dim)?;
        let row_tiles = (end - begin).div_ceil(u64::from(TILE * TM));
        program.dispatch(
            variant,
            Params {
                row_begin: begin as u32,
                row_end: end as u32,
                in_dim: in_dim as u32,
                out_dim: out_dim as u32,
                gather: u32::from(gathered.is_some()),
                has_bias: u32::from(w.has_bias),
                relu: u32::from(relu),
                n_col_tiles: n_col_tiles as u32,
                x_shift,
                rows_shift,
                w_base: 0u32.wrapping_sub(w_shift),
                b_base: ((in_dim * out_dim) as u32).wrapping_sub(w_shift),
                out_shift,
            },
            Bindings {
                x,
                rows,
                w: w_binding,
                out,
            },
            row_tiles * n_col_tiles,
        )?;
    }
    Ok(())
}
