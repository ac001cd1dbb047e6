//! Which adapter the engine runs on and what it can do: adapter choice ([`Device::new`]),
//! the [`DeviceInfo`] a device reports (features, limits, whether it is a CPU driver, its
//! device memory), and the Vulkan query for that memory. Kept apart from the batch and
//! pipeline code because it runs once, when a device opens.

use crate::device::Device;
use crate::error::{Error, Result};

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
    /// The cooperative-matrix configurations the adapter lists, where the device was opened
    /// with `EXPERIMENTAL_COOPERATIVE_MATRIX` (empty otherwise: no matrix units, none of our
    /// shapes listed, or `HYDRALORA_COOPMAT=off`).
    pub cooperative_matrix: Vec<wgpu::CooperativeMatrixProperties>,
    /// Whether the matmuls may use cooperative matrices (`HYDRALORA_COOPMAT`).
    pub coop_use: CoopUse,
}

/// Whether the matmuls use the cooperative-matrix kernels, from `HYDRALORA_COOPMAT`:
/// `auto` (or unset) where the device has them and the product is large enough, `off`
/// never (the device is not even opened with the feature), `on` for every product they can
/// run ([`Device::new`] then fails where the device has none). For tests and benchmarks
/// that want one path for sure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoopUse {
    /// Large products, where the device has them (the default).
    Auto,
    /// Never.
    Off,
    /// Every product they can run.
    On,
}

impl CoopUse {
    /// The setting `HYDRALORA_COOPMAT` asks for.
    pub fn from_env() -> Result<CoopUse> {
        match std::env::var("HYDRALORA_COOPMAT").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(CoopUse::Auto),
            Ok("off") => Ok(CoopUse::Off),
            Ok("on") => Ok(CoopUse::On),
            Ok(other) => Err(Error::Unsupported(format!(
                "HYDRALORA_COOPMAT={other} (it takes auto, off or on)"
            ))),
        }
    }
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

impl DeviceInfo {
    /// What a device opened on `adapter` (None: a shared device, described as unknown) has.
    pub(super) fn of(
        device: &wgpu::Device,
        adapter: Option<wgpu::AdapterInfo>,
        memory: Option<u64>,
        (cooperative_matrix, coop_use): (Vec<wgpu::CooperativeMatrixProperties>, CoopUse),
    ) -> DeviceInfo {
        let features = device.features();
        let limits = device.limits();
        DeviceInfo {
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
            cooperative_matrix: match features
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            {
                true => cooperative_matrix,
                false => Vec::new(),
            },
            coop_use,
        }
    }
}

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
        let coop_use = CoopUse::from_env()?;
        let mut features = adapter.features()
            & (wgpu::Features::SHADER_F16
                | wgpu::Features::SUBGROUP
                | wgpu::Features::TIMESTAMP_QUERY);
        let coop = cooperative_shapes(&adapter, coop_use);
        if !coop.is_empty() {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        } else if coop_use == CoopUse::On {
            return Err(Error::Unsupported(format!(
                "cooperative-matrix matmuls (HYDRALORA_COOPMAT=on): {} lists no shape the \
                 kernels use (16x16x16 f16 -> f32 or 8x8x8 f32 -> f32)",
                adapter.get_info().name
            )));
        }
        let info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("hydralora"),
                required_features: features,
                // The adapter's real limits: large models need far more than the defaults.
                required_limits: adapter.limits(),
                // SAFETY: the one experimental feature ever requested is cooperative
                // matrices, and only where the adapter lists a shape our kernels use; those
                // kernels are validated by naga (tests/shaders_validate.rs) and checked
                // against a float64 reference on devices that run them (tests/coopmat.rs).
                experimental_features: match coop.is_empty() {
                    true => wgpu::ExperimentalFeatures::disabled(),
                    false => unsafe { wgpu::ExperimentalFeatures::enabled() },
                },
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: info.name.clone(),
                reason: e.to_string(),
            })?;
        let dev = Self::build(device, queue, Some(info), memory, (coop, coop_use));
        // The pool never holds more than the device has (a shared device starts unlimited:
        // its app knows what its own rendering needs).
        dev.set_memory_budget(dev.default_memory_budget());
        dev.record_faults();
        Ok(dev)
    }

    /// A CPU Vulkan driver (lavapipe): workgroups run as SIMD lanes of one core, so
    /// barrier-free kernels win there, while real GPUs prefer shared-memory ones.
    pub fn is_cpu(&self) -> bool {
        self.inner.device.adapter_info().device_type == wgpu::DeviceType::Cpu
    }
}

/// The cooperative-matrix configurations to open the device with: the adapter's list,
/// where it has the feature and lists a shape one of our kernels uses (with `SHADER_F16`
/// for the f16 one); empty otherwise, or with `HYDRALORA_COOPMAT=off`.
fn cooperative_shapes(
    adapter: &wgpu::Adapter,
    coop_use: CoopUse,
) -> Vec<wgpu::CooperativeMatrixProperties> {
    use crate::ops::matmul::MatmulKernel;
    let features = adapter.features();
    if coop_use == CoopUse::Off
        || !features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    {
        return Vec::new();
    }
    let listed = adapter.cooperative_matrix_properties();
    let f16 = features.contains(wgpu::Features::SHADER_F16);
    let usable = MatmulKernel::COOPERATIVE
        .iter()
        .any(|k| k.listed_in(&listed) && (f16 || *k != MatmulKernel::CoopF16x16));
    match usable {
        true => listed,
        false => Vec::new(),
    }
}

async fn choose_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    let mut adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
    if adapters.is_empty() {
        // A browser lists no adapters; it hands out the one it chose.
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        };
        adapters.extend(instance.request_adapter(&options).await.ok());
    }
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
pub(super) fn device_memory(adapter: &wgpu::Adapter) -> Option<u64> {
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
