//! What the training kernels' launchers share: binding several logical
//! arrays of one slot with one storage binding, and the 1-D dispatch size.
//! Training arrays are bound whole (no chunking): an array larger than one
//! storage binding is a [`GpuError::TooLarge`] naming its slot.

use crate::backend::gpu::program::{Array, Binding, Program};
use crate::backend::gpu::shaders::WG;
use crate::backend::gpu::GpuError;

/// One binding covering `arrays` (all in one slot, of one element size) and
/// the binding index of each array's element 0.
pub(crate) fn bind_together<const N: usize>(
    program: &Program,
    arrays: [Array; N],
) -> Result<(Binding, [u32; N]), GpuError> {
    let first = arrays[0];
    debug_assert!(arrays
        .iter()
        .all(|a| a.slot == first.slot && a.elem == first.elem));
    let base = arrays.iter().map(|a| a.base).min().unwrap_or(0);
    let end = arrays
        .iter()
        .map(|a| a.base + a.len as i64)
        .max()
        .unwrap_or(0);
    let cover = Array {
        slot: first.slot,
        elem: first.elem,
        base,
        len: (end - base).max(0) as u64,
    };
    // A window of the cover, never a whole buffer bound past the limit.
    let (binding, shift) = program.bind(cover, 0, cover.len.max(1))?;
    let zero = |a: &Array| ((a.base - base) as u32).wrapping_sub(shift);
    Ok((binding, arrays.map(|a| zero(&a))))
}

/// One array bound alone: the binding and the index of its element 0.
pub(crate) fn bind_one(program: &Program, a: Array) -> Result<(Binding, u32), GpuError> {
    let (binding, [zero]) = bind_together(program, [a])?;
    Ok((binding, zero))
}

/// Workgroups of a 1-D kernel over `items` invocations.
pub(crate) fn groups(items: u64) -> u64 {
    items.div_ceil(u64::from(WG))
}
