//! The GPU device: one [`Device`] handle, cheap to clone, over the wgpu device and queue,
//! the buffer pool, and the parts below, one file each:
//!
//! - `adapter`: adapter choice and [`DeviceInfo`] (features, limits, CPU detection, memory);
//! - `batch`: the recorded dispatches, copies and uploads, their submission, readback,
//!   and the driver faults recorded for the next readback;
//! - `params`: the arena every dispatch's params block is bound from;
//! - `pipelines`: compiled pipelines and bind-group layouts, made once per device;
//! - `profile`: per-kernel GPU time from timestamp queries.
//!
//! This file holds the handle, its construction, and the settings no one part owns (the
//! memory budget, the subgroup row reductions).

mod adapter;
mod batch;
mod params;
mod pipelines;
mod profile;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::pool::{BufferPool, PoolStats};

pub use adapter::{CoopUse, DeviceInfo};
use batch::Batch;
pub(crate) use batch::Binding;
use params::ParamsArena;
use pipelines::PipelineCache;
use profile::MAX_PROFILED_DISPATCHES;

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
    params: ParamsArena,
    /// The first error the driver reported outside an error scope, or a device loss (only
    /// recorded for devices the engine created; a shared device keeps its app's handlers).
    fault: Arc<Mutex<Option<Error>>>,
    /// Row reductions (softmax, rms_norm, cross-entropy, sum) use the subgroup kernels.
    subgroup_rows: AtomicBool,
    /// Dispatches are counted and dropped ([`Device::set_dry_run`]).
    pub(crate) dry_run: AtomicBool,
}

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

impl Device {
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
        Self::build(device, queue, adapter, None, (Vec::new(), CoopUse::Auto))
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
        let coop = adapter.cooperative_matrix_properties();
        Self::build(
            device,
            queue,
            Some(adapter.get_info()),
            adapter::device_memory(adapter),
            (coop, CoopUse::Auto),
        )
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: Option<wgpu::AdapterInfo>,
        memory: Option<u64>,
        coop: (Vec<wgpu::CooperativeMatrixProperties>, CoopUse),
    ) -> Device {
        let info = DeviceInfo::of(&device, adapter, memory, coop);
        let params = ParamsArena::new(&device, &info.limits);
        let info_subgroup = info.subgroup;
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
                params,
                fault: Arc::new(Mutex::new(None)),
                subgroup_rows: AtomicBool::new(info_subgroup),
                dry_run: AtomicBool::new(false),
            }),
        }
    }

    /// What the device is and can do.
    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
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

    /// A dry run: from now on every kernel dispatch is counted and dropped, while buffers
    /// are allocated and freed, and copies and readbacks run, exactly as before. The pool's
    /// peak and the dispatch count of whatever runs are then a real run's, in a fraction of
    /// its time, and every value computed is meaningless. For memory planning on a device too
    /// slow to run a model (`hydralora bench step --dry-run`); a test checks that the peak
    /// equals a real step's to the byte.
    pub fn set_dry_run(&self, on: bool) {
        self.inner.dry_run.store(on, Ordering::Relaxed);
    }

    /// Whether dispatches are dropped ([`Device::set_dry_run`]).
    pub fn dry_run(&self) -> bool {
        self.inner.dry_run.load(Ordering::Relaxed)
    }

    /// Whether the row reductions (softmax, rms_norm, cross-entropy, sum) run their subgroup
    /// flavour (the `+subgroup` variants, `shaders/lib/rows_subgroup.wgsl`): on by default
    /// where the device has `SUBGROUP`.
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
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.inner.info.name)
    }
}

/// `x` rounded up to a multiple of `a`.
pub(crate) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}
