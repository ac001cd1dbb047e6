//! The params arena: one storage buffer per device from which every dispatch's small params
//! block is bound, each at its own aligned offset. A batch stages its blocks on the host
//! (`Batch::params`) and writes them with one `write_buffer` before its submit, instead of a
//! buffer per dispatch.

use crate::device::align_up;

/// Bytes of the per-batch arena that holds every dispatch's small parameter block.
pub(super) const PARAMS_ARENA_BYTES: u64 = 256 * 1024;

/// The arena's buffer and the offset alignment its bindings need.
pub(super) struct ParamsArena {
    buffer: wgpu::Buffer, // [PARAMS_ARENA_BYTES] u8, rewritten before each submit
    align: u64,
}

impl ParamsArena {
    pub(super) fn new(device: &wgpu::Device, limits: &wgpu::Limits) -> ParamsArena {
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params arena"),
            size: PARAMS_ARENA_BYTES,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let align = limits.min_storage_buffer_offset_alignment.max(16) as u64;
        ParamsArena { buffer, align }
    }

    /// The bytes a params block takes in the arena: an empty one still binds one word.
    pub(super) fn block_bytes(params: &[u8]) -> u64 {
        params.len().max(4) as u64
    }

    /// Whether a block of `bytes` still fits after the blocks `staged` for this batch.
    pub(super) fn fits(&self, staged: &[u8], bytes: u64) -> bool {
        align_up(staged.len() as u64, self.align) + bytes <= PARAMS_ARENA_BYTES
    }

    /// Stages `params` at the next aligned offset after `staged`; returns the offset.
    pub(super) fn stage(&self, staged: &mut Vec<u8>, params: &[u8]) -> u64 {
        let offset = align_up(staged.len() as u64, self.align);
        staged.resize(offset as usize, 0);
        if params.is_empty() {
            staged.extend_from_slice(&[0u8; 4]);
        } else {
            staged.extend_from_slice(params);
        }
        offset
    }

    /// Binding 0 of a dispatch: its block of `bytes` at `offset`.
    pub(super) fn binding(&self, offset: u64, bytes: u64) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset,
            size: std::num::NonZeroU64::new(bytes),
        })
    }

    /// Writes a batch's staged blocks into the arena, ahead of the batch's commands.
    pub(super) fn write(&self, queue: &wgpu::Queue, staged: &[u8]) {
        if !staged.is_empty() {
            queue.write_buffer(&self.buffer, 0, staged);
        }
    }
}
