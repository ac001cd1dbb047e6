//! The batch: kernel dispatches, copies and uploads recorded in order and submitted
//! together, the readback that forces a submit, and the driver faults recorded for the
//! next readback to report. Recording is cheap; a submit (and on a CPU driver a
//! thread-pool round per dispatch) is not, so nothing waits until a result is read.

use std::sync::{Arc, MutexGuard};

use crate::device::{align_up, Device, ParamsArena, MAX_PROFILED_DISPATCHES};
use crate::error::{Error, Result};
use crate::ops::kernel_params::KernelParams;
use crate::shaders::Shader;

/// Dispatches recorded before a batch is submitted even if nothing asks for a result.
const MAX_DISPATCHES_PER_BATCH: usize = 4096;

/// The commands recorded since the last submit.
#[derive(Default)]
pub(super) struct Batch {
    commands: Vec<Command>,
    params: Vec<u8>, // the bytes of the params arena for this batch
    dispatches: usize,
    submits: u64,
    /// Dispatches recorded since the device was opened (empty ones skipped).
    dispatched: u64,
    /// GPU time per entry point (calls, seconds) while profiling is on.
    pub(super) profile: Option<std::collections::BTreeMap<&'static str, (u64, f64)>>,
}

/// One recorded command, encoded at submit.
pub(super) enum Command {
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

impl Device {
    /// Records driver errors and a device loss instead of panicking, so they come back as
    /// [`Error`]s from the next readback or synchronize.
    pub(super) fn record_faults(&self) {
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

    pub(super) fn lock_batch(&self) -> MutexGuard<'_, Batch> {
        self.inner.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one kernel dispatch. Bindings follow the engine's convention: binding 0 is the
    /// params block (`var<storage, read>`), then `reads` (read-only), then `writes` (read-write).
    /// `params` is the kernel's params struct, declared with `kernel_params!` beside its op.
    pub(crate) fn dispatch<P: KernelParams + ?Sized>(
        &self,
        shader: &'static Shader,
        entry: &'static str,
        params: &P,
        reads: &[Binding<'_>],
        writes: &[Binding<'_>],
        groups: [u32; 3],
    ) {
        if groups.contains(&0) {
            return; // an empty tensor: nothing to compute
        }
        if self.dry_run() {
            self.lock_batch().dispatched += 1; // counted as it would run, and dropped
            return;
        }
        let (pipeline, layout) = self.pipeline(shader, entry, reads.len(), writes.len());
        let mut batch = self.lock_batch();
        let params = params.bytes();
        let params_bytes = ParamsArena::block_bytes(params);
        let max_dispatches = if batch.profile.is_some() {
            MAX_PROFILED_DISPATCHES
        } else {
            MAX_DISPATCHES_PER_BATCH
        };
        if !self.inner.params.fits(&batch.params, params_bytes)
            || batch.dispatches >= max_dispatches
        {
            self.submit(&mut batch);
        }
        let offset = self.inner.params.stage(&mut batch.params, params);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: self.inner.params.binding(offset, params_bytes),
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
    ///
    /// In a browser nothing may block on the GPU: there this is an error that points to
    /// [`Device::read_bytes_async`].
    pub(crate) fn read_bytes(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::Readback(
                "a blocking readback cannot run in a browser (WebGPU maps buffers only \
                 between event-loop turns); use the async readback (`Tensor::to_vec_f32_async`)"
                    .into(),
            ));
        }
        let pending = self.start_read(src, bytes)?;
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
        // Another thread's poll may have taken the callback and not run it yet: wait for it.
        let mapped = pending.mapped.wait();
        self.finish_read(pending, mapped)
    }

    /// [`Device::read_bytes`] without blocking: the GPU's work is awaited (in a browser, the
    /// map completes between event-loop turns). On native backends the wait still blocks,
    /// inside the first poll of the future.
    pub(crate) async fn read_bytes_async(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let pending = self.start_read(src, bytes)?;
        if !cfg!(target_arch = "wasm32") {
            self.inner
                .device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Readback(e.to_string()))?;
        }
        let mapped = (&pending.mapped).await;
        self.finish_read(pending, mapped)
    }

    /// Records the copy of `src` into a fresh staging buffer, submits, and asks for the map.
    fn start_read(&self, src: &wgpu::Buffer, bytes: u64) -> Result<PendingRead> {
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
        let mapped = MapSignal::default();
        let signal = mapped.clone();
        staging.map_async(wgpu::MapMode::Read, .., move |r| signal.set(r));
        Ok(PendingRead {
            staging,
            bytes,
            mapped,
        })
    }

    /// The mapped staging buffer's bytes; a failed map on a faulted device reports the fault.
    fn finish_read(
        &self,
        pending: PendingRead,
        mapped: std::result::Result<(), wgpu::BufferAsyncError>,
    ) -> Result<Vec<u8>> {
        self.check()?;
        mapped.map_err(|e| Error::Readback(e.to_string()))?;
        let view = (pending.staging)
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?;
        let out = view[..pending.bytes as usize].to_vec();
        drop(view);
        pending.staging.unmap();
        Ok(out)
    }

    /// Encodes the batch into one command buffer (runs of dispatches share a compute pass).
    pub(super) fn submit(&self, batch: &mut Batch) {
        if batch.commands.is_empty() {
            return;
        }
        let dev = &self.inner;
        dev.params.write(&dev.queue, &batch.params);
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

/// A readback in flight: the staging buffer and the signal its map sets.
struct PendingRead {
    staging: wgpu::Buffer,
    bytes: u64,
    mapped: MapSignal,
}

/// The outcome of a `map_async`, set by its callback and awaited (or taken after a blocking
/// poll). A one-shot future in a few lines, so the engine needs no async runtime.
#[derive(Clone, Default)]
struct MapSignal(Arc<(std::sync::Mutex<MapState>, std::sync::Condvar)>);

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

#[derive(Default)]
struct MapState {
    result: Option<MapResult>,
    waker: Option<std::task::Waker>,
}

impl MapSignal {
    fn set(&self, result: MapResult) {
        let mut state = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        state.result = Some(result);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        self.0 .1.notify_all();
    }

    /// Blocks until the callback has run (natively, after the device was polled).
    fn wait(&self) -> MapResult {
        let mut state = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(result) = state.result.take() {
                return result;
            }
            state = self.0 .1.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl std::future::Future for &MapSignal {
    type Output = MapResult;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<MapResult> {
        let mut state = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        match state.result.take() {
            Some(r) => std::task::Poll::Ready(r),
            None => {
                state.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}
