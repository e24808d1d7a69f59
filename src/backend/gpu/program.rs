//! A recorded stage of GPU work: the buffers it needs, what it uploads, its
//! dispatches (pipeline, bindings, parameters, grid) and readbacks. Building a
//! program touches no GPU state; [`super::runtime::Runtime::run`] executes it
//! with one command encoder, one submission and one readback.

use std::collections::HashMap;

use super::context::EffectiveLimits;
use super::kernels::{BindingSet, Kernel, KernelParams};
use super::shaders::Variant;
use super::GpuError;

/// Name of a pooled buffer.
pub(super) type Slot = &'static str;

/// Slot of the uniform parameter arena.
pub(super) const PARAMS: Slot = "params";
/// Slot of the readback buffer.
pub(super) const STAGING: Slot = "staging";
/// Bytes of one dispatch's parameters slot (the uniform binding size): room
/// for the largest `Params`.
pub(super) const PARAM_BYTES: u64 = 64;

/// Part of a slot a binding covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Window {
    /// From offset 0, as much as one binding may hold.
    Whole,
    /// Bytes `offset .. offset + size`.
    Range { offset: u64, size: u64 },
}

/// One storage binding.
#[derive(Debug, Clone, Copy)]
pub(super) struct Binding {
    pub slot: Slot,
    pub window: Window,
}

/// A logical array stored in a slot: logical element `i` is slot element
/// `base + i`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Array {
    pub slot: Slot,
    /// Bytes per element.
    pub elem: u64,
    /// Slot element of logical element 0 (may be negative for an array
    /// indexed by global positions whose stored part starts later).
    pub base: i64,
    /// Logical elements.
    pub len: u64,
}

impl Array {
    /// An array filling `slot` from its start.
    pub fn at(slot: Slot, elem: u64, len: u64) -> Self {
        Self {
            slot,
            elem,
            base: 0,
            len,
        }
    }
}

/// One compute dispatch.
#[derive(Debug, Clone)]
pub(super) struct Dispatch {
    pub kernel: Kernel,
    pub variant: Variant,
    /// Storage bindings 1, 2, … in order.
    pub bindings: Vec<Binding>,
    /// The kernel's `Params`, zero-padded to the slot.
    pub params: [u8; PARAM_BYTES as usize],
    /// Workgroups in x and y.
    pub groups: (u32, u32),
}

/// One recorded operation.
#[derive(Debug, Clone)]
pub(super) enum Step {
    Dispatch(Dispatch),
    /// Copy `bytes` from `slot` at `offset` into the staging buffer at `to`.
    Readback {
        slot: Slot,
        offset: u64,
        bytes: u64,
        to: u64,
    },
}

/// A stage of work.
#[derive(Debug)]
pub(super) struct Program {
    /// What runs, with tile sizes, for error messages.
    pub stage: String,
    pub limits: EffectiveLimits,
    /// Bytes each slot must hold.
    pub sizes: HashMap<Slot, u64>,
    /// Bytes written to each slot from offset 0 before the work.
    pub uploads: Vec<(Slot, Vec<u8>)>,
    pub steps: Vec<Step>,
    /// Bytes of the staging buffer.
    pub readback_bytes: u64,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl Program {
    pub fn new(stage: String, limits: EffectiveLimits) -> Self {
        Self {
            stage,
            limits,
            sizes: HashMap::new(),
            uploads: Vec::new(),
            steps: Vec::new(),
            readback_bytes: 0,
        }
    }

    /// The storage binding budget a chunk may fill: one binding less the
    /// slack of aligning its offset down.
    pub fn budget(&self) -> u64 {
        self.limits
            .max_binding
            .saturating_sub(self.limits.storage_align)
            .max(4)
    }

    /// Declares that `slot` holds at least `bytes`.
    pub fn need(&mut self, slot: Slot, bytes: u64) {
        let entry = self.sizes.entry(slot).or_insert(0);
        *entry = (*entry).max(round_up(bytes.max(4), 4));
    }

    /// Uploads `bytes` to `slot` (declaring its size).
    pub fn upload(&mut self, slot: Slot, bytes: Vec<u8>) {
        self.need(slot, bytes.len() as u64);
        self.uploads.push((slot, bytes));
    }

    /// Uploads u32 values; returns the array.
    pub fn upload_u32(&mut self, slot: Slot, values: &[u32]) -> Array {
        self.upload(slot, bytemuck::cast_slice(values).to_vec());
        Array::at(slot, 4, values.len() as u64)
    }

    /// Binding of logical elements `first..end` of `a`, and the shift the
    /// kernel subtracts from a logical index to index the binding.
    pub fn bind(&self, a: Array, first: u64, end: u64) -> Result<(Binding, u32), GpuError> {
        let limit = self.limits.max_binding;
        // Bound from offset 0 when everything read lies within one binding
        // (the same binding for every chunk, so bind groups are reused).
        let whole = a.base + end as i64 >= 0 && (a.base + end as i64) as u64 * a.elem <= limit;
        if whole || first >= end {
            return Ok((
                Binding {
                    slot: a.slot,
                    window: Window::Whole,
                },
                0u32.wrapping_sub(a.base as u32),
            ));
        }
        let start = (a.base + first as i64) as u64 * a.elem;
        let aligned = start / self.limits.storage_align * self.limits.storage_align;
        let stop = (a.base + end as i64) as u64 * a.elem;
        let size = round_up(stop - aligned, 4);
        if size > limit {
            return Err(GpuError::TooLarge {
                stage: self.stage.clone(),
                detail: format!(
                    "window of {size} bytes of `{}` exceeds the binding limit {limit}",
                    a.slot
                ),
            });
        }
        let shift = ((aligned / a.elem) as i64 - a.base) as u32;
        Ok((
            Binding {
                slot: a.slot,
                window: Window::Range {
                    offset: aligned,
                    size,
                },
            },
            shift,
        ))
    }

    /// Fails when `count` items cannot be indexed by the kernels' u32s.
    pub fn check_u32_indexable(&self, what: &str, count: u64) -> Result<(), GpuError> {
        if count > u64::from(u32::MAX) {
            return Err(GpuError::TooLarge {
                stage: self.stage.clone(),
                detail: format!("{count} {what} exceed the kernels' 32-bit indices"),
            });
        }
        Ok(())
    }

    /// Most workgroups one dispatch may have (a full 2-D grid).
    pub fn max_groups(&self) -> u64 {
        let max = u64::from(self.limits.max_groups_per_dim);
        max * max
    }

    /// Most rows of `items_per_row` invocations one dispatch of
    /// `items_per_group`-invocation workgroups may cover.
    pub fn max_rows(&self, items_per_row: u64, items_per_group: u64) -> usize {
        let rows = self.max_groups() * items_per_group / items_per_row.max(1);
        usize::try_from(rows.max(1)).unwrap_or(usize::MAX)
    }

    /// Workgroup grid for `groups` workgroups: x up to the per-dimension
    /// limit, the rest in y.
    pub fn grid(&self, groups: u64) -> Result<(u32, u32), GpuError> {
        let max = u64::from(self.limits.max_groups_per_dim);
        if groups <= max {
            return Ok((groups as u32, 1));
        }
        let y = groups.div_ceil(max);
        if y > max {
            return Err(GpuError::TooLarge {
                stage: self.stage.clone(),
                detail: format!("{groups} workgroups exceed a {max}×{max} grid"),
            });
        }
        Ok((max as u32, y as u32))
    }

    /// Records a dispatch of `groups` workgroups (skipped when zero) of the
    /// kernel whose parameters `params` are.
    pub fn dispatch<P: KernelParams>(
        &mut self,
        variant: Variant,
        params: P,
        bindings: P::Bindings,
        groups: u64,
    ) -> Result<(), GpuError> {
        if groups == 0 {
            return Ok(());
        }
        let mut bytes = [0u8; PARAM_BYTES as usize];
        let param_bytes = bytemuck::bytes_of(&params);
        bytes[..param_bytes.len()].copy_from_slice(param_bytes);
        let groups = self.grid(groups)?;
        self.steps.push(Step::Dispatch(Dispatch {
            kernel: P::KERNEL,
            variant,
            bindings: bindings.in_order(),
            params: bytes,
            groups,
        }));
        Ok(())
    }

    /// Reads back `bytes` of `slot` from `offset`; returns the staging offset.
    pub fn readback(&mut self, slot: Slot, offset: u64, bytes: u64) -> u64 {
        let bytes = round_up(bytes, 4);
        let to = self.readback_bytes;
        if bytes > 0 {
            self.steps.push(Step::Readback {
                slot,
                offset,
                bytes,
                to,
            });
        }
        self.readback_bytes += round_up(bytes, 8);
        to
    }

    /// Dispatches recorded so far.
    pub fn dispatches(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Dispatch(_)))
            .count()
    }

    /// Dispatches for which `f` holds.
    pub fn count(&self, f: impl Fn(&Dispatch) -> bool) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Dispatch(d) if f(d)))
            .count()
    }

    /// Names of the kernels this program runs, for error messages.
    pub fn kernel_summary(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for step in &self.steps {
            if let Step::Dispatch(d) = step {
                match counts.iter_mut().find(|(n, _)| *n == d.kernel.name()) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((d.kernel.name(), 1)),
                }
            }
        }
        counts
            .iter()
            .map(|(n, c)| format!("{n}×{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `n` little-endian u32 words at byte `at` of readback `bytes`.
pub(super) fn words(bytes: &[u8], at: u64, n: usize) -> impl Iterator<Item = u32> + '_ {
    bytes[at as usize..at as usize + 4 * n]
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}
