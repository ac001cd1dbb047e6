//! Compiled compute pipelines, one per (shader variant, entry point), and the bind-group
//! layouts they share, one per binding count. Compiling a pipeline costs milliseconds, so
//! each is made once per device, on its first dispatch.

use std::collections::HashMap;
use std::sync::MutexGuard;

use crate::device::Device;
use crate::shaders::Shader;

/// Compiled pipelines, keyed by (shader, entry point), and layouts keyed by binding count.
#[derive(Default)]
pub(super) struct PipelineCache {
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    pipelines: HashMap<(&'static str, &'static str), wgpu::ComputePipeline>,
    layouts: HashMap<(usize, usize), (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    created: usize,
}

impl Device {
    /// Pipelines compiled so far (a training step should stop adding to this after the first).
    pub fn pipelines_created(&self) -> usize {
        self.lock_pipelines().created
    }

    fn lock_pipelines(&self) -> MutexGuard<'_, PipelineCache> {
        self.inner
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn pipeline(
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

impl Device {
    /// The kernels compiled so far, as `variant:entry` (sorted): what a run used.
    pub fn compiled_kernels(&self) -> Vec<String> {
        let mut names: Vec<String> = (self.lock_pipelines().pipelines.keys())
            .map(|(shader, entry)| format!("{shader}:{entry}"))
            .collect();
        names.sort();
        names
    }

    /// Compiles every entry point of each of `shaders` that this device can run (a variant
    /// that enables an extension the device lacks, or a subgroup variant on a device
    /// without subgroups, is skipped) into a pipeline of its own,
    /// and returns the driver's complaints, one `variant:entry: message` each: an empty list
    /// when the device's compiler accepts them all. In a browser this is the page's check
    /// that Tint accepts what naga accepts.
    pub async fn check_kernels(&self, shaders: &[&Shader]) -> Vec<String> {
        let device = &self.inner.device;
        let features = device.features();
        let mut failures = Vec::new();
        for shader in shaders {
            let needs = |ext: &str| shader.source.contains(&format!("enable {ext};"));
            if (needs("f16") && !features.contains(wgpu::Features::SHADER_F16))
                || (needs("wgpu_cooperative_matrix")
                    && !features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX))
                || (shader.name.contains("subgroup")
                    && !features.contains(wgpu::Features::SUBGROUP))
            {
                continue;
            }
            for entry in crate::shaders::entry_points(shader.source) {
                let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                });
                let _ = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                });
                if let Some(e) = scope.pop().await {
                    failures.push(format!("{}:{entry}: {e}", shader.name));
                }
            }
        }
        failures
    }
}
