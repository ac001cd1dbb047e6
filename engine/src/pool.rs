//! A size-class buffer pool: tensors take a GPU buffer from it and give it back on drop,
//! so a training step that repeats the same shapes allocates nothing after the first step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Byte counts of the pool, for benchmarks and memory reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of buffers held by live tensors now.
    pub in_use: u64,
    /// The most bytes held by live tensors at once since the last reset.
    pub peak_in_use: u64,
    /// Bytes of idle buffers kept for reuse.
    pub cached: u64,
    /// Buffers created from the driver so far.
    pub allocations: u64,
}

pub(crate) struct BufferPool {
    device: wgpu::Device,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    free: HashMap<u64, Vec<wgpu::Buffer>>, // size class -> idle buffers of that size
    stats: PoolStats,
    /// Most bytes (in use + cached) the pool may hold; None: as many as the driver gives.
    budget: Option<u64>,
}

/// Why the pool could not lend a buffer: the bytes held by live tensors, the budget if one
/// is set, and the reason (over the budget, or the driver's out-of-memory message).
pub(crate) struct Refusal {
    pub held: u64,
    pub budget: Option<u64>,
    pub reason: String,
}

impl PoolState {
    /// Drops idle buffers, largest first, until `more` new bytes fit the budget (or none
    /// are left); returns whether they fit.
    fn make_room(&mut self, more: u64) -> bool {
        let Some(budget) = self.budget else {
            return true;
        };
        let fits = |s: &PoolStats| s.in_use + s.cached + more <= budget;
        let mut classes: Vec<u64> = self.free.keys().copied().collect();
        classes.sort_unstable_by(|a, b| b.cmp(a));
        for class in classes {
            let idle = self.free.get_mut(&class).expect("a listed class");
            while !fits(&self.stats) && idle.pop().is_some() {
                self.stats.cached -= class;
            }
        }
        self.free.retain(|_, v| !v.is_empty());
        fits(&self.stats)
    }

    fn release_idle(&mut self) {
        self.free.clear();
        self.stats.cached = 0;
    }
}

/// A buffer on loan from the pool; it returns there when dropped.
pub(crate) struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    class: u64,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer
            .as_ref()
            .expect("a pooled buffer is present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            let mut state = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
            state.stats.in_use -= self.class;
            state.stats.cached += self.class;
            state.free.entry(self.class).or_default().push(buffer);
        }
    }
}

impl BufferPool {
    pub fn new(device: wgpu::Device) -> Self {
        BufferPool {
            device,
            state: Mutex::default(),
        }
    }

    /// A buffer of at least `bytes` bytes (storage, copy source and destination). A new
    /// buffer that would take the pool past its budget first makes room by releasing idle
    /// buffers, and is refused if that is not enough. When the driver is out of memory, the
    /// idle buffers are released and the allocation is tried once more before giving up.
    pub fn take(self: &Arc<Self>, bytes: u64) -> Result<PooledBuffer, Refusal> {
        let class = size_class(bytes);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let buffer = match state.free.get_mut(&class).and_then(Vec::pop) {
            Some(b) => {
                state.stats.cached -= class;
                b
            }
            None => {
                if !state.make_room(class) {
                    return Err(Refusal {
                        held: state.stats.in_use,
                        budget: state.budget,
                        reason: "that is over the memory budget (Device::set_memory_budget)".into(),
                    });
                }
                let created = match self.create(class) {
                    Ok(b) => b,
                    Err(_) => {
                        state.release_idle();
                        self.create(class).map_err(|reason| Refusal {
                            held: state.stats.in_use,
                            budget: state.budget,
                            reason,
                        })?
                    }
                };
                state.stats.allocations += 1;
                created
            }
        };
        state.stats.in_use += class;
        state.stats.peak_in_use = state.stats.peak_in_use.max(state.stats.in_use);
        Ok(PooledBuffer {
            buffer: Some(buffer),
            class,
            pool: self.clone(),
        })
    }

    /// A new driver buffer, or the device's out-of-memory message.
    ///
    /// In a browser the error scope's answer would need an event-loop turn, so there an
    /// allocation failure reaches the device's fault slot and the next readback instead.
    fn create(&self, size: u64) -> Result<wgpu::Buffer, String> {
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tensor"),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(e.to_string());
        }
        Ok(buffer)
    }

    pub fn stats(&self) -> PoolStats {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stats
    }

    /// Sets the most bytes the pool may hold (None: no limit); idle buffers over a lower
    /// budget are released now.
    pub fn set_budget(&self, budget: Option<u64>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.budget = budget;
        state.make_room(0);
    }

    pub fn budget(&self) -> Option<u64> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).budget
    }

    pub fn reset_peak(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.stats.peak_in_use = state.stats.in_use;
    }
}

/// The bytes the pool holds for a tensor of `bytes` bytes: rounded up to 256, then to one
/// of four steps per power of two (at most 25% waste). Memory estimates count in these.
pub fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(256).div_ceil(256) * 256;
    if b <= 4096 {
        return b.next_power_of_two();
    }
    let pow = 1u64 << (63 - b.leading_zeros()); // largest power of two <= b
    let step = pow / 4;
    b.div_ceil(step) * step
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_with_little_waste() {
        for bytes in [
            1u64,
            255,
            256,
            257,
            4095,
            4097,
            10_000,
            1 << 20,
            (1 << 20) + 1,
            262_144_000,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert_eq!(c % 256, 0);
            if bytes > 4096 {
                assert!(c as f64 <= bytes as f64 * 1.25 + 256.0, "{bytes} -> {c}");
            }
        }
    }
}
