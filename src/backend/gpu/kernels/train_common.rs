//! What the training kernels' launchers share: binding windows of logical
//! arrays (several of one slot with one storage binding), the windows of a
//! chunk's rows, element-wise chunks and the 1-D dispatch size. The chunks
//! themselves come from [`crate::backend::gpu::train_chunks`].

use crate::backend::gpu::program::{Array, Binding, Program};
use crate::backend::gpu::shaders::WG;
use crate::backend::gpu::GpuError;

/// One binding covering elements `first .. end` of each array (all in one
/// slot, of one element size) and the binding index of each array's
/// element 0 (wrapping: the kernels add the logical index to it).
pub(crate) fn bind_windows<const N: usize>(
    program: &Program,
    windows: [(Array, u64, u64); N],
) -> Result<(Binding, [u32; N]), GpuError> {
    let (first, _, _) = windows[0];
    debug_assert!(windows
        .iter()
        .all(|(a, _, _)| a.slot == first.slot && a.elem == first.elem));
    let lo = windows
        .iter()
        .map(|(a, f, _)| a.base + *f as i64)
        .min()
        .unwrap_or(0);
    let hi = windows
        .iter()
        .map(|(a, _, e)| a.base + *e as i64)
        .max()
        .unwrap_or(0);
    let cover = Array {
        slot: first.slot,
        elem: first.elem,
        base: lo,
        len: (hi - lo).max(0) as u64,
    };
    // A window of the cover, never a whole buffer bound past the limit.
    let (binding, shift) = program.bind(cover, 0, cover.len.max(1))?;
    let zero = |a: &Array| ((a.base - lo) as u32).wrapping_sub(shift);
    Ok((binding, windows.map(|(a, _, _)| zero(&a))))
}

/// One binding covering `arrays` whole (one slot, one element size).
pub(crate) fn bind_together<const N: usize>(
    program: &Program,
    arrays: [Array; N],
) -> Result<(Binding, [u32; N]), GpuError> {
    bind_windows(program, arrays.map(|a| (a, 0, a.len)))
}

/// One array bound whole: the binding and the index of its element 0.
pub(crate) fn bind_one(program: &Program, a: Array) -> Result<(Binding, u32), GpuError> {
    let (binding, [zero]) = bind_together(program, [a])?;
    Ok((binding, zero))
}

/// Elements `first .. end` of `a` bound: the binding and the index of its
/// element 0.
pub(crate) fn bind_range(
    program: &Program,
    a: Array,
    first: u64,
    end: u64,
) -> Result<(Binding, u32), GpuError> {
    let (binding, [zero]) = bind_windows(program, [(a, first, end.max(first))])?;
    Ok((binding, zero))
}

/// Rows `begin .. end` of an array of rows `stride` elements apart, each
/// `width` wide, bound: the binding and the index of element 0.
pub(crate) fn bind_rows(
    program: &Program,
    a: Array,
    (begin, end): (u64, u64),
    stride: u64,
    width: u64,
) -> Result<(Binding, u32), GpuError> {
    let last = if end > begin {
        (end - 1) * stride + width
    } else {
        begin * stride
    };
    bind_range(program, a, begin * stride, last)
}

/// Element-wise chunks of `n` elements whose arrays hold `bytes` per
/// element: `(first, end)` pairs, each within one binding and one grid.
pub(crate) fn element_chunks(program: &Program, n: u64, bytes: u64) -> Vec<(u64, u64)> {
    let per = (program.budget() / bytes.max(1))
        .min(program.max_rows(1, u64::from(WG)) as u64)
        .max(1);
    let mut chunks = Vec::new();
    let mut first = 0;
    while first < n {
        let end = (first + per).min(n);
        chunks.push((first, end));
        first = end;
    }
    chunks
}

/// Workgroups of a 1-D kernel over `items` invocations.
pub(crate) fn groups(items: u64) -> u64 {
    items.div_ceil(u64::from(WG))
}
