//! Grow-only buffer pool and bind-group cache: a tile reuses the buffers (and
//! the bind groups over them) of earlier tiles whenever they are big enough.

use std::collections::HashMap;

use super::kernels::Kernel;
use super::program::{Slot, Window};
use super::GpuError;

/// Granularity of buffer sizes.
const SIZE_STEP: u64 = 256;

struct PooledBuffer {
    buffer: wgpu::Buffer,
    capacity: u64,
    /// Unique id of this allocation (bind-group cache key).
    id: u64,
}

/// Key of a cached bind group: the kernel's layout and, per binding, the
/// buffer allocation and byte range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct GroupKey {
    pub kernel: Kernel,
    pub ranges: Vec<(u64, u64, u64)>,
}

/// Named, grow-only buffers.
#[derive(Default)]
pub(super) struct Pool {
    buffers: HashMap<Slot, PooledBuffer>,
    next_id: u64,
    groups: HashMap<GroupKey, wgpu::BindGroup>,
    /// Bytes currently allocated.
    pub allocated: u64,
}

/// Most bind groups kept before the cache is emptied.
const MAX_CACHED_GROUPS: usize = 4096;

impl Pool {
    /// Makes `slot` hold at least `bytes`; a larger buffer replaces a smaller
    /// one (growing by half again, so a sequence of tiles settles quickly).
    pub fn ensure(
        &mut self,
        device: &wgpu::Device,
        slot: Slot,
        bytes: u64,
        usage: wgpu::BufferUsages,
        max_buffer: u64,
    ) -> Result<(), GpuError> {
        let current = self.buffers.get(slot).map_or(0, |b| b.capacity);
        if bytes <= current {
            return Ok(());
        }
        let wanted = bytes.div_ceil(SIZE_STEP) * SIZE_STEP;
        if wanted > max_buffer {
            return Err(GpuError::TooLarge {
                stage: String::new(),
                detail: format!(
                    "buffer `{slot}` needs {bytes} bytes, the device's max_buffer_size is {max_buffer}: use smaller tiles"
                ),
            });
        }
        let grown = (current + current / 2).div_ceil(SIZE_STEP) * SIZE_STEP;
        let capacity = grown.max(wanted).min(max_buffer).max(wanted);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(slot),
            size: capacity,
            usage,
            mapped_at_creation: false,
        });
        self.release(slot);
        self.next_id += 1;
        self.allocated += capacity;
        self.buffers.insert(
            slot,
            PooledBuffer {
                buffer,
                capacity,
                id: self.next_id,
            },
        );
        Ok(())
    }

    /// Frees the buffer of `slot`, if any, and the bind groups over it.
    pub fn release(&mut self, slot: Slot) {
        if let Some(old) = self.buffers.remove(slot) {
            self.allocated -= old.capacity;
            let old_id = old.id;
            self.groups
                .retain(|key, _| !key.ranges.iter().any(|r| r.0 == old_id));
            old.buffer.destroy();
        }
    }

    /// The buffer of `slot` (which must exist).
    pub fn buffer(&self, slot: Slot) -> &wgpu::Buffer {
        &self.buffers[slot].buffer
    }

    /// Byte range a window of `slot` covers, `max_binding` bounding `Whole`.
    pub fn range(&self, slot: Slot, window: Window, max_binding: u64) -> (u64, u64, u64) {
        let b = &self.buffers[slot];
        match window {
            Window::Whole => (b.id, 0, b.capacity.min(max_binding)),
            Window::Range { offset, size } => (b.id, offset, size),
        }
    }

    /// The cached bind group for `key`, created by `make` when missing.
    pub fn group(
        &mut self,
        key: GroupKey,
        make: impl FnOnce(&Self) -> wgpu::BindGroup,
    ) -> wgpu::BindGroup {
        if let Some(group) = self.groups.get(&key) {
            return group.clone();
        }
        if self.groups.len() >= MAX_CACHED_GROUPS {
            self.groups.clear();
        }
        let group = make(self);
        self.groups.insert(key, group.clone());
        group
    }

    /// Buffer (by allocation id) of a cached range, for building a group.
    pub fn buffer_by_id(&self, id: u64) -> &wgpu::Buffer {
        &self
            .buffers
            .values()
            .find(|b| b.id == id)
            .expect("pooled buffer")
            .buffer
    }

    /// Number of cached bind groups.
    pub fn cached_groups(&self) -> usize {
        self.groups.len()
    }
}
