//! Per-kernel GPU timing with timestamp queries: while profiling is on, every dispatch of a
//! batch runs in its own compute pass between two timestamps, and the times are added up
//! per entry point. Off by default: one pass per dispatch is slower.

use crate::device::batch::Command;
use crate::device::Device;

/// Most dispatches timed in one batch: two timestamps each, within a query set's 4096.
pub(super) const MAX_PROFILED_DISPATCHES: usize = 2048;

impl Device {
    /// Turns per-kernel GPU timing on (every dispatch timed: slower) or off. Needs
    /// `TIMESTAMP_QUERY`; without it the profile stays empty.
    pub fn set_profiling(&self, on: bool) {
        let mut batch = self.lock_batch();
        self.submit(&mut batch);
        batch.profile = on.then(Default::default);
    }

    /// GPU time per kernel entry point since profiling was turned on: (entry, calls, seconds),
    /// most time first. Resets the totals.
    pub fn take_profile(&self) -> Vec<(&'static str, u64, f64)> {
        let mut batch = self.lock_batch();
        self.submit(&mut batch);
        let Some(profile) = batch.profile.as_mut() else {
            return vec![];
        };
        let mut rows: Vec<_> = std::mem::take(profile)
            .into_iter()
            .map(|(e, (n, t))| (e, n, t))
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    }

    /// Encodes every dispatch in its own pass between two timestamps; returns the entry
    /// point of each and the buffer the timestamps will be copied to.
    pub(super) fn encode_timed(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        commands: Vec<Command>,
    ) -> (Vec<&'static str>, wgpu::Buffer) {
        let dev = &self.inner.device;
        let count = commands
            .iter()
            .filter(|c| matches!(c, Command::Dispatch { .. }))
            .count()
            .max(1) as u32;
        let queries = dev.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * count,
        });
        let bytes = 16 * count as u64;
        let resolve = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut entries = Vec::new();
        for cmd in commands {
            match cmd {
                Command::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    bytes,
                } => encoder.copy_buffer_to_buffer(&src, src_offset, &dst, dst_offset, bytes),
                Command::Dispatch {
                    entry,
                    pipeline,
                    bind_group,
                    groups,
                } => {
                    let i = 2 * entries.len() as u32;
                    let writes = wgpu::ComputePassTimestampWrites {
                        query_set: &queries,
                        beginning_of_pass_write_index: Some(i),
                        end_of_pass_write_index: Some(i + 1),
                    };
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(entry),
                        timestamp_writes: Some(writes),
                    });
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &bind_group, &[]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    entries.push(entry);
                }
            }
        }
        encoder.resolve_query_set(&queries, 0..2 * count, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
        (entries, readback)
    }

    /// Waits for a timed batch and adds each dispatch's time to its entry point's total.
    pub(super) fn collect_times(
        &self,
        entries: &[&'static str],
        readback: &wgpu::Buffer,
        profile: &mut std::collections::BTreeMap<&'static str, (u64, f64)>,
    ) {
        readback.map_async(wgpu::MapMode::Read, .., |_| {});
        if self
            .inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .is_err()
        {
            return;
        }
        let Ok(view) = readback.get_mapped_range(..) else {
            return;
        };
        let ticks: &[u64] = bytemuck::cast_slice(&view);
        let period = self.inner.queue.get_timestamp_period() as f64 * 1e-9;
        for (i, entry) in entries.iter().enumerate() {
            let slot = profile.entry(entry).or_default();
            slot.0 += 1;
            slot.1 += ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
        }
        drop(view);
        readback.unmap();
    }
}
