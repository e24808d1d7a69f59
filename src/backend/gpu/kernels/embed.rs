//! `shaders/embed.wgsl`: embedding gather followed by ReLU. Twin:
//! [`crate::kernels::embed`].

use crate::backend::gpu::chunking::{Aux, Indexed, Planned, COMPACT_W};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_and_f16, Elem, Variant, WG};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "embed.wgsl",
    variants: f32_and_f16,
    params {
        /// Elements this dispatch covers: `begin .. begin + n_items`.
        begin: u32,
        n_items: u32,
        dim: u32,
        table_shift: u32,
        token_shift: u32,
        out_shift: u32,
    }
    bindings {
        table: Read,
        tokens: Read,
        out: ReadWrite,
    }
}

/// `out[r, :] = relu(table[tokens[r], :])` for every row of `planned`;
/// `table` is `[vocab, dim]` f32.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    program: &mut Program,
    act: Elem,
    table: Array,
    vocab: u64,
    dim: u64,
    tokens: Array,
    planned: &Planned,
    aux: &Aux,
    out: Array,
) -> Result<(), GpuError> {
    let indexed = Indexed {
        array: table,
        rows: vocab,
        width: dim,
        elem: Elem::F32,
        index: tokens,
        compact: COMPACT_W,
    };
    for (i, chunk) in planned.chunks.iter().enumerate() {
        let (begin, end) = (chunk.begin as u64, chunk.end as u64);
        let (table, tokens) = planned.reads(program, aux, i, &indexed, (begin, end))?;
        let (table, table_shift) = program.bind(table, 0, table.len)?;
        let (tokens, token_shift) = program.bind(tokens, begin, end)?;
        let (out, out_shift) = program.bind(out, begin * dim, end * dim)?;
        let items = (end - begin) * dim;
        program.dispatch(
            Variant::of(act),
            Params {
                begin: (begin * dim) as u32,
                n_items: items as u32,
                dim: dim as u32,
                table_shift,
                token_shift,
                out_shift,
            },
            Bindings { table, tokens, out },
            items.div_ceil(u64::from(WG)),
        )?;
    }
    Ok(())
}
