//! `shaders/gather.wgsl`: exact row copies into a compact array, for arrays
//! read through an index list that do not fit one storage binding.

use crate::backend::gpu::chunking::{Aux, Indexed};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{f32_and_f16, Variant, WG};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "gather.wgsl",
    variants: f32_and_f16,
    params {
        /// Elements this dispatch covers: `begin .. begin + n_items`.
        begin: u32,
        n_items: u32,
        width: u32,
        list_shift: u32,
        src_shift: u32,
        out_shift: u32,
    }
    bindings {
        list: Read,
        src: Read,
        out: ReadWrite,
    }
}

/// Copies rows `list` (at aux element `list_at`) of `src.array` into
/// `src.compact`, one dispatch per binding-sized window of the source.
/// Returns the compact array.
pub(crate) fn record(
    program: &mut Program,
    src: &Indexed,
    aux: &Aux,
    list_at: u64,
    list: &[u32],
) -> Result<Array, GpuError> {
    let width = src.width;
    let row_bytes = width * src.elem.bytes();
    program.need(src.compact, list.len() as u64 * row_bytes);
    let out = Array::at(src.compact, src.elem.bytes(), list.len() as u64 * width);
    let list_arr = aux.array(list_at as i64, list.len() as u64);
    let rows_per_window = (program.budget() / row_bytes.max(1)).max(1);
    let piece = program.max_rows(width, u64::from(WG)) as u64;
    let mut lo = 0u64;
    while lo < src.rows {
        let hi = (lo + rows_per_window).min(src.rows);
        let mut j_lo = list.partition_point(|&s| u64::from(s) < lo) as u64;
        let j_hi = list.partition_point(|&s| u64::from(s) < hi) as u64;
        while j_lo < j_hi {
            let j_end = j_hi.min(j_lo + piece);
            let (list, list_shift) = program.bind(list_arr, j_lo, j_end)?;
            let (src_binding, src_shift) = program.bind(src.array, lo * width, hi * width)?;
            let (out_binding, out_shift) = program.bind(out, j_lo * width, j_end * width)?;
            let items = (j_end - j_lo) * width;
            program.dispatch(
                Variant::of(src.elem),
                Params {
                    begin: (j_lo * width) as u32,
                    n_items: items as u32,
                    width: width as u32,
                    list_shift,
                    src_shift,
                    out_shift,
                },
                Bindings {
                    list,
                    src: src_binding,
                    out: out_binding,
                },
                items.div_ceil(u64::from(WG)),
            )?;
            j_lo = j_end;
        }
        lo = hi;
    }
    Ok(out)
}
