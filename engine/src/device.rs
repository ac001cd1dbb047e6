//! The GPU device: adapter choice, limits, features, and the recording of kernel dispatches.
//!
//! Dispatches are recorded into a batch and submitted together; a readback is the only
//! thing that forces a submit. Pipelines are compiled once per (shader, entry point).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::pool::{BufferPool, PoolStats};
use crate::shaders::Shader;

/// Bytes of the per-batch arena that holds every dispatch's small parameter block.
const PARAMS_ARENA_BYTES: u64 = 256 * 1024;
/// Dispatches recorded before a batch is submitted even if nothing asks for a result.
const MAX_DISPATCHES_PER_BATCH: usize = 4096;

/// What the engine knows about the adapter it runs on.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// The adapter's name as the driver reports it (`shared device` for [`Device::from_wgpu`]).
    pub name: String,
    /// The wgpu backend, e.g. `Vulkan`, `Metal`, `Dx12` (`unknown` when not given).
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other` (`unknown` when not given).
    pub device_type: String,
    /// The driver's name and its info string (empty when not given).
    pub driver: String,
    /// `SHADER_F16`: f16 storage and arithmetic in shaders.
    pub shader_f16: bool,
    /// `SUBGROUP`: subgroup (wave/warp) operations.
    pub subgroup: bool,
    /// `TIMESTAMP_QUERY`: GPU timestamps for per-kernel profiling.
    pub timestamp_query: bool,
    /// The device's limits ([`Device::new`] asks for the adapter's own, not wgpu's defaults).
    pub limits: wgpu::Limits,
    /// Bytes of the adapter's largest device-local memory heap, where the driver reports it
    /// (Vulkan); None elsewhere (wgpu has no portable query for it).
    pub memory: Option<u64>,
}

impl DeviceInfo {
    /// The largest tensor one kernel binding can see, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.limits;
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "adapter:              {}", self.name)?;
        writeln!(f, "backend:              {}", self.backend)?;
        writeln!(f, "device type:          {}", self.device_type)?;
        writeln!(f, "driver:               {}", self.driver)?;
        writeln!(f, "shader-f16:           {}", yes(self.shader_f16))?;
        writeln!(f, "subgroup:             {}", yes(self.subgroup))?;
        writeln!(f, "timestamp-query:      {}", yes(self.timestamp_query))?;
        writeln!(
            f,
            "device memory:        {}",
            self.memory.map_or("not reported".into(), |m| format!(
                "{} (largest device-local heap)",
                crate::error::human_bytes(m)
            ))
        )?;
        writeln!(f, "max buffer:           {} MiB", l.max_buffer_size >> 20)?;
        writeln!(
            f,
            "max storage binding:  {} MiB",
            l.max_storage_buffer_binding_size >> 20
        )?;
        writeln!(
            f,
            "workgroup storage:    {} KiB",
            l.max_compute_workgroup_storage_size >> 10
        )?;
        writeln!(
            f,
            "invocations/group:    {}",
            l.max_compute_invocations_per_workgroup
        )?;
        write!(
            f,
            "workgroups/dimension: {}",
            l.max_compute_workgroups_per_dimension
        )
    }
}

/// A GPU device shared by tensors; cheap to clone.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<DeviceInner>,
}

pub(crate) struct DeviceInner {
    id: u64,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: DeviceInfo,
    pub(crate) pool: Arc<BufferPool>,
    pipelines: Mutex<PipelineCache>,
    batch: Mutex<Batch>,
    params_arena: wgpu::Buffer, // [PARAMS_ARENA_BYTES] u8, rewritten before each submit
    params_align: u64,
    /// The first error the driver reported outside an error scope, or a device loss (only
    /// recorded for devices the engine created; a shared device keeps its app's handlers).
    fault: Arc<Mutex<Option<Error>>>,
    /// Row reductions (softmax, rms_norm, cross-entropy, sum) use the subgroup kernels.
    subgroup_rows: AtomicBool,
}

/// Compiled pipelines, keyed by (shader, entry point), and layouts keyed by binding count.
#[derive(Default)]
struct PipelineCache {
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    pipelines: HashMap<(&'static str, &'static str), wgpu::ComputePipeline>,
    layouts: HashMap<(usize, usize), (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    created: usize,
}

/// The commands recorded since the last submit.
#[derive(Default)]
struct Batch {
    commands: Vec<Command>,
    params: Vec<u8>, // the bytes of the params arena for this batch
    dispatches: usize,
    submits: u64,
    /// Dispatches recorded since the device was opened (empty ones skipped).
    dispatched: u64,
    /// GPU time per entry point (calls, seconds) while profiling is on.
    profile: Option<std::collections::BTreeMap<&'static str, (u64, f64)>>,
}

/// Most dispatches timed in one batch: two timestamps each, within a query set's 4096.
const MAX_PROFILED_DISPATCHES: usize = 2048;

enum Command {
    Dispatch {
        entry: &'static str,
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        groups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    },
}

/// One buffer bound to a kernel: the first `bytes` of `buffer`.
pub(crate) struct Binding<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub bytes: u64,
}

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

impl Device {
    /// Opens the best adapter: `WGPU_ADAPTER_NAME` (a substring of the adapter's name) if set,
    /// else a discrete GPU, then integrated, virtual, and last a CPU (software) device.
    /// `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`) restricts the backends searched.
    /// The device is opened with the adapter's own limits and the `SHADER_F16`, `SUBGROUP`
    /// and `TIMESTAMP_QUERY` features where the adapter has them.
    ///
    /// Errors: [`Error::NoAdapter`] (with what to install), [`Error::RequestDevice`].
    ///
    /// ```no_run
    /// use hydralora_engine::Device;
    /// # fn main() -> hydralora_engine::Result<()> {
    /// let dev = Device::new()?;
    /// println!("{}", dev.info()); // adapter, backend, features, limits
    /// # Ok(()) }
    /// ```
    pub fn new() -> Result<Device> {
        pollster::block_on(Self::new_async())
    }

    /// [`Device::new`] for async callers.
    pub async fn new_async() -> Result<Device> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        // Where the driver reports a memory budget (Vulkan with VK_EXT_memory_budget, DX12),
        // a buffer that would take the process past 95% of it is refused as out of memory
        // (which the pool reports) instead of the system swapping or losing the device.
        desc.memory_budget_thresholds.for_resource_creation = Some(95);
        let instance = wgpu::Instance::new(desc);
        let adapter = choose_adapter(&instance).await?;
        let memory = device_memory(&adapter);
        let features = adapter.features()
            & (wgpu::Features::SHADER_F16
                | wgpu::Features::SUBGROUP
                | wgpu::Features::TIMESTAMP_QUERY);
        let info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("hydralora"),
                required_features: features,
                // The adapter's real limits: large models need far more than the defaults.
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: info.name.clone(),
                reason: e.to_string(),
            })?;
        let dev = Self::build(device, queue, Some(info), memory);
        // The pool never holds more than the device has (a shared device starts unlimited:
        // its app knows what its own rendering needs).
        dev.set_memory_budget(dev.default_memory_budget());
        dev.record_faults();
        Ok(dev)
    }

    /// Records driver errors and a device loss instead of panicking, so they come back as
    /// [`Error`]s from the next readback or synchronize.
    fn record_faults(&self) {
        let fault = self.inner.fault.clone();
        self.inner
            .device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = fault.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(match e {
                    wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory {
                        shape: vec![],
                        bytes: 0,
                        held: 0,
                        budget: None,
                        reason: e.to_string(),
                    },
                    other => Error::Device(other.to_string()),
                });
            }));
        let fault = self.inner.fault.clone();
        self.inner
            .device
            .set_device_lost_callback(move |reason, message| {
                let mut slot = fault.lock().unwrap_or_else(|p| p.into_inner());
                *slot = Some(Error::DeviceLost(format!(
                    "{reason:?}{}",
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {message}")
                    }
                )));
            });
    }

    /// The recorded fault, if the device has had one (it stays: a lost device stays lost).
    pub fn check(&self) -> Result<()> {
        match &*self.inner.fault.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(Error::DeviceLost(m)) => Err(Error::DeviceLost(m.clone())),
            Some(Error::Device(m)) => Err(Error::Device(m.clone())),
            Some(e) => Err(Error::Device(e.to_string())),
        }
    }

    /// Builds the engine's device on a `wgpu::Device` and `Queue` the caller already owns
    /// (a desktop app sharing the device it renders with). Kernels run on that queue.
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue) -> Device {
        Self::from_wgpu_with_info(device, queue, None)
    }

    /// [`Device::from_wgpu`] with the adapter's description, for [`Device::info`].
    pub fn from_wgpu_with_info(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: Option<wgpu::AdapterInfo>,
    ) -> Device {
        Self::build(device, queue, adapter, None)
    }

    /// [`Device::from_wgpu`] for an app that has its `wgpu::Adapter` at hand too:
    /// [`Device::info`] then names the adapter and records its device memory where the
    /// driver reports it ([`DeviceInfo::memory`]), from which the app can choose a
    /// [`Device::set_memory_budget`] that leaves room for its own rendering.
    pub fn from_wgpu_adapter(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Device {
        Self::build(
            device,
            queue,
            Some(adapter.get_info()),
            device_memory(adapter),
        )
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: Option<wgpu::AdapterInfo>,
        memory: Option<u64>,
    ) -> Device {
        let features = device.features();
        let limits = device.limits();
        let info = DeviceInfo {
            name: adapter
                .as_ref()
                .map_or("shared device".into(), |a| a.name.clone()),
            backend: adapter
                .as_ref()
                .map_or("unknown".into(), |a| format!("{:?}", a.backend)),
            device_type: adapter
                .as_ref()
                .map_or("unknown".into(), |a| format!("{:?}", a.device_type)),
            driver: adapter
                .as_ref()
                .map_or(String::new(), |a| format!("{} {}", a.driver, a.driver_info)),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroup: features.contains(wgpu::Features::SUBGROUP),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            limits,
            memory,
        };
        let params_align = info.limits.min_storage_buffer_offset_alignment.max(16) as u64;
        let info_subgroup = info.subgroup;
        let params_arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params arena"),
            size: PARAMS_ARENA_BYTES,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let pool = Arc::new(BufferPool::new(device.clone()));
        Device {
            inner: Arc::new(DeviceInner {
                id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
                device,
                queue,
                info,
                pool,
                pipelines: Mutex::default(),
                batch: Mutex::default(),
                params_arena,
                params_align,
                fault: Arc::new(Mutex::new(None)),
                subgroup_rows: AtomicBool::new(info_subgroup),
            }),
        }
    }

    /// What the device is and can do.
    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// A CPU Vulkan driver (lavapipe): workgroups run as SIMD lanes of one core, so
    /// barrier-free kernels win there, while real GPUs prefer shared-memory ones.
    pub fn is_cpu(&self) -> bool {
        self.inner.device.adapter_info().device_type == wgpu::DeviceType::Cpu
    }

    /// The underlying wgpu device and queue, for callers that mix their own work in.
    pub fn wgpu(&self) -> (&wgpu::Device, &wgpu::Queue) {
        (&self.inner.device, &self.inner.queue)
    }

    /// Whether `self` and `other` are the same device (clones of one [`Device`]).
    pub fn same_as(&self, other: &Device) -> bool {
        self.inner.id == other.inner.id
    }

    /// Bytes held by the buffer pool: in use now, at the peak, and kept for reuse.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }

    /// Caps the bytes the buffer pool holds (in use + cached) at `bytes`, or lifts the cap
    /// with None. Over the budget, idle buffers are released first; a tensor that still does
    /// not fit fails with [`Error::OutOfMemory`] naming the numbers. [`Device::new`] starts
    /// with the adapter's device memory where the driver reports it
    /// ([`DeviceInfo::memory`]; not for a CPU driver, whose heap size is nominal), else with
    /// none; [`Device::from_wgpu`] starts with none.
    pub fn set_memory_budget(&self, bytes: Option<u64>) {
        self.inner.pool.set_budget(bytes)
    }

    /// The budget [`Device::new`] starts with: the device memory the driver reports
    /// ([`DeviceInfo::memory`]), except on a CPU driver, whose heap size is nominal (it
    /// allocates from host memory). None where nothing is reported.
    pub fn default_memory_budget(&self) -> Option<u64> {
        self.inner.info.memory.filter(|_| !self.is_cpu())
    }

    /// The budget set by [`Device::set_memory_budget`] (None: no limit but the driver's).
    pub fn memory_budget(&self) -> Option<u64> {
        self.inner.pool.budget()
    }

    /// Resets the pool's peak counter to what is in use now (to measure one phase).
    pub fn reset_peak(&self) {
        self.inner.pool.reset_peak()
    }

    /// Pipelines compiled so far (a training step should stop adding to this after the first).
    pub fn pipelines_created(&self) -> usize {
        self.lock_pipelines().created
    }

    /// Batches submitted so far.
    pub fn submits(&self) -> u64 {
        self.lock_batch().submits
    }

    /// Kernel dispatches recorded so far (each costs host recording and, on a CPU driver, a
    /// thread-pool round: fewer is faster even at equal FLOPs).
    pub fn dispatches(&self) -> u64 {
        self.lock_batch().dispatched
    }

    /// Submits everything recorded so far without waiting for it.
    pub fn flush(&self) {
        let mut batch = self.lock_batch();
        self.submit(&mut batch);
    }

    /// Submits everything recorded and blocks until the GPU has finished it.
    pub fn synchronize(&self) -> Result<()> {
        self.flush();
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
        self.check()
    }

    fn lock_batch(&self) -> MutexGuard<'_, Batch> {
        self.inner.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pipelines(&self) -> MutexGuard<'_, PipelineCache> {
        self.inner
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Records one kernel dispatch. Bindings follow the engine's convention: binding 0 is the
    /// params block (`var<storage, read>`), then `reads` (read-only), then `writes` (read-write).
    pub(crate) fn dispatch(
        &self,
        shader: &'static Shader,
        entry: &'static str,
        params: &[u32],
        reads: &[Binding<'_>],
        writes: &[Binding<'_>],
        groups: [u32; 3],
    ) {
        if groups.contains(&0) {
            return; // an empty tensor: nothing to compute
        }
        let (pipeline, layout) = self.pipeline(shader, entry, reads.len(), writes.len());
        let mut batch = self.lock_batch();
        let params_bytes = (params.len().max(1) * 4) as u64;
        let offset = align_up(batch.params.len() as u64, self.inner.params_align);
        let max_dispatches = if batch.profile.is_some() {
            MAX_PROFILED_DISPATCHES
        } else {
            MAX_DISPATCHES_PER_BATCH
        };
        if offset + params_bytes > PARAMS_ARENA_BYTES || batch.dispatches >= max_dispatches {
            self.submit(&mut batch);
        }
        let offset = align_up(batch.params.len() as u64, self.inner.params_align);
        batch.params.resize(offset as usize, 0);
        if params.is_empty() {
            batch.params.extend_from_slice(&[0u8; 4]);
        } else {
            batch.params.extend_from_slice(bytemuck::cast_slice(params));
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.inner.params_arena,
                offset,
                size: std::num::NonZeroU64::new(params_bytes),
            }),
        }];
        for (i, b) in reads.iter().chain(writes).enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: 0,
                    size: std::num::NonZeroU64::new(align_up(b.bytes.max(4), 4)),
                }),
            });
        }
        let bind_group = self
            .inner
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(entry),
                layout: &layout,
                entries: &entries,
            });
        batch.commands.push(Command::Dispatch {
            entry,
            pipeline,
            bind_group,
            groups,
        });
        batch.dispatches += 1;
        batch.dispatched += 1;
    }

    /// Records a buffer-to-buffer copy, ordered with the dispatches around it.
    pub(crate) fn copy(
        &self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        if bytes == 0 {
            return;
        }
        let mut batch = self.lock_batch();
        batch.commands.push(Command::Copy {
            src: src.clone(),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            bytes,
        });
    }

    /// Uploads host bytes into `dst`, ordered with the recorded dispatches (through a staging
    /// buffer, so a pooled buffer still read by an unsubmitted kernel is never overwritten early).
    pub(crate) fn upload(&self, dst: &wgpu::Buffer, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let padded = align_up(bytes.len() as u64, 4);
        let staging = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("upload"),
            size: padded,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        match staging.get_mapped_range_mut(..) {
            Ok(mut view) => {
                let mut data = bytes.to_vec();
                data.resize(padded as usize, 0);
                view.copy_from_slice(&data);
            }
            // Only on a faulted device (out of memory, lost): the next readback reports it.
            Err(e) => {
                let mut slot = self.inner.fault.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(Error::Device(format!(
                    "staging an upload of {padded} bytes: {e}"
                )));
                return;
            }
        }
        staging.unmap();
        self.copy(&staging, 0, dst, 0, padded);
    }

    /// Copies the first `bytes` of `src` to the host; submits what is recorded and waits.
    pub(crate) fn read_bytes(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.check()?;
        let padded = align_up(bytes.max(4), 4);
        let staging = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.copy(src, 0, &staging, 0, padded);
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
        // A failed map on a faulted device reports the fault, not the symptom.
        let mapped = rx.recv().map_err(|e| Error::Readback(e.to_string()))?;
        self.check()?;
        mapped.map_err(|e| Error::Readback(e.to_string()))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?;
        let out = view[..bytes as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Encodes the batch into one command buffer (runs of dispatches share a compute pass).
    fn submit(&self, batch: &mut Batch) {
        if batch.commands.is_empty() {
            return;
        }
        let dev = &self.inner;
        if !batch.params.is_empty() {
            dev.queue.write_buffer(&dev.params_arena, 0, &batch.params);
        }
        let mut encoder = dev
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("batch"),
            });
        let commands = std::mem::take(&mut batch.commands);
        let timed = match batch.profile.is_some() && dev.info.timestamp_query {
            true => Some(self.encode_timed(&mut encoder, commands)),
            false => {
                encode(&mut encoder, commands);
                None
            }
        };
        dev.queue.submit([encoder.finish()]);
        batch.params.clear();
        batch.dispatches = 0;
        batch.submits += 1;
        if let (Some((entries, readback)), Some(profile)) = (timed, batch.profile.as_mut()) {
            self.collect_times(&entries, &readback, profile);
        }
    }

    /// Encodes every dispatch in its own pass between two timestamps; returns the entry
    /// point of each and the buffer the timestamps will be copied to.
    fn encode_timed(
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
    fn collect_times(
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

    /// Whether the row reductions (softmax, rms_norm, cross-entropy, sum) run their subgroup
    /// kernels (`*_subgroup.wgsl`): on by default where the device has `SUBGROUP`.
    pub fn subgroup_reductions(&self) -> bool {
        self.inner.subgroup_rows.load(Ordering::Relaxed)
    }

    /// Turns the subgroup row reductions on or off (off: the workgroup-tree kernels, the
    /// fallback every device runs). Tests use this to check both paths on one device.
    /// Fails with [`Error::Unsupported`] when turning them on without `SUBGROUP`.
    pub fn set_subgroup_reductions(&self, on: bool) -> Result<()> {
        if on && !self.inner.info.subgroup {
            return Err(Error::Unsupported(
                "subgroup reductions: this device has no SUBGROUP feature".into(),
            ));
        }
        self.inner.subgroup_rows.store(on, Ordering::Relaxed);
        Ok(())
    }

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

    fn pipeline(
        &self,
        shader: &'static Shader,
        entry: &'static str,
        reads: usize,
        writes: usize,
    ) -> (wgpu::ComputePipeline, wgpu::BindGroupLayout) {
        let mut cache = self.lock_pipelines();
        let device = &self.inner.device;
        let (bgl, layout) = cache
            .layouts
            .entry((reads, writes))
            .or_insert_with(|| bind_layout(device, reads, writes))
            .clone();
        if let Some(p) = cache.pipelines.get(&(shader.name, entry)) {
            return (p.clone(), bgl);
        }
        let module = cache
            .modules
            .entry(shader.name)
            .or_insert_with(|| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                })
            })
            .clone();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        cache
            .pipelines
            .insert((shader.name, entry), pipeline.clone());
        cache.created += 1;
        (pipeline, bgl)
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.inner.info.name)
    }
}

/// Encodes commands in order; runs of dispatches share one compute pass.
fn encode(encoder: &mut wgpu::CommandEncoder, commands: Vec<Command>) {
    let mut commands = commands.into_iter().peekable();
    while let Some(cmd) = commands.next() {
        match cmd {
            Command::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                bytes,
            } => {
                encoder.copy_buffer_to_buffer(&src, src_offset, &dst, dst_offset, bytes);
            }
            Command::Dispatch {
                pipeline,
                bind_group,
                groups,
                ..
            } => {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                let mut next = Some((pipeline, bind_group, groups));
                while let Some((pipeline, bind_group, groups)) = next.take() {
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &bind_group, &[]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    if let Some(Command::Dispatch { .. }) = commands.peek() {
                        if let Some(Command::Dispatch {
                            pipeline,
                            bind_group,
                            groups,
                            ..
                        }) = commands.next()
                        {
                            next = Some((pipeline, bind_group, groups));
                        }
                    }
                }
            }
        }
    }
}

/// Binding 0: params; then `reads` read-only and `writes` read-write storage buffers.
fn bind_layout(
    device: &wgpu::Device,
    reads: usize,
    writes: usize,
) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
    let entry = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let mut entries = vec![entry(0, true)];
    entries.extend((0..reads).map(|i| entry(1 + i as u32, true)));
    entries.extend((0..writes).map(|i| entry(1 + (reads + i) as u32, false)));
    let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("hydralora kernel"),
        entries: &entries,
    });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("hydralora kernel"),
        bind_group_layouts: &[Some(&bgl)],
        immediate_size: 0,
    });
    (bgl, layout)
}

async fn choose_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        let wanted_lc = wanted.to_lowercase();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted_lc))
            .ok_or_else(|| Error::NoAdapter {
                detail: format!(
                    " matching WGPU_ADAPTER_NAME={wanted:?} (adapters found: {names:?})"
                ),
            });
    }
    let rank = |a: &wgpu::Adapter| {
        let info = a.get_info();
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        // GL has the weakest compute support: last resort.
        (info.backend == wgpu::Backend::Gl, kind)
    };
    adapters
        .into_iter()
        .min_by_key(rank)
        .ok_or_else(|| Error::NoAdapter {
            detail: match std::env::var("WGPU_BACKEND") {
                Ok(b) => format!(" for WGPU_BACKEND={b:?}"),
                Err(_) => String::new(),
            },
        })
}

/// The size of the adapter's largest device-local memory heap, read from Vulkan (the only
/// backend whose heap sizes wgpu lets us reach, through `wgpu-hal`).
fn device_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    #[cfg(any(
        windows,
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd"
    ))]
    {
        // SAFETY: the raw handles are only read, while `adapter` keeps them alive.
        let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
        let props = unsafe {
            hal.shared_instance()
                .raw_instance()
                .get_physical_device_memory_properties(hal.raw_physical_device())
        };
        const DEVICE_LOCAL: u32 = 0x1; // VK_MEMORY_HEAP_DEVICE_LOCAL_BIT
        props.memory_heaps[..props.memory_heap_count as usize]
            .iter()
            .filter(|h| h.flags.as_raw() & DEVICE_LOCAL != 0)
            .map(|h| h.size)
            .max()
    }
    #[cfg(not(any(
        windows,
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd"
    )))]
    {
        let _ = adapter;
        None
    }
}

pub(crate) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}
