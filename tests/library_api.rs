//! The library API as an application uses it, without the CLI: a `Trainer` on a background
//! `TrainerWorker`, stepped while the caller does unrelated GPU work on the same device,
//! paused, cancelled, saved and resumed. The truth each test compares with is the same
//! trainer stepped alone on the caller's thread: on one device the engine is deterministic,
//! so the losses must agree bit for bit.

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use hydralora::engine::{Device, Tensor};
use hydralora::model::adapter::{attach, trainable_params, AdapterConfig};
use hydralora::model::data::TokenizedExample;
use hydralora::model::train::{
    ScheduleKind, StepStats, TrainEvent, TrainSettings, Trainer, TrainerWorker, WorkerOptions,
};
use hydralora::model::{Llama, ModelError};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");
const WAIT: Duration = Duration::from_secs(120);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hydralora-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Random sequences; the first 3 tokens are the prompt (label -100).
fn examples() -> Vec<TokenizedExample> {
    common::random_examples(12, 10, 3, &[])
}

fn hydra_model() -> Llama {
    let mut model = Llama::load(&common::device(), TINY).unwrap();
    attach(
        &mut model,
        &AdapterConfig::hydra(4, 8.0, 3, &["q_proj", "up_proj", "down_proj"]),
        5,
    )
    .unwrap();
    model
}

fn settings() -> TrainSettings {
    TrainSettings {
        lr: 5e-3,
        schedule: ScheduleKind::Cosine,
        warmup_steps: 2,
        total_steps: 8,
        micro_batch: 3,
        grad_accum: 2,
        max_grad_norm: Some(1.0),
        weight_decay: 0.01,
        seed: 11,
        ..Default::default()
    }
}

fn trainer() -> Trainer {
    Trainer::new(hydra_model(), examples(), 0, settings()).unwrap()
}

/// (loss, gradient norm) bits of each step, for exact comparison.
fn bits(stats: &[StepStats]) -> Vec<(u32, u32)> {
    stats
        .iter()
        .map(|s| (s.loss.to_bits(), s.grad_norm.to_bits()))
        .collect()
}

fn steps_alone(n: usize) -> Vec<StepStats> {
    let mut t = trainer();
    (0..n).map(|_| t.step().unwrap()).collect()
}

fn param_values(t: &Trainer) -> Vec<Vec<f32>> {
    trainable_params(&t.model)
        .iter()
        .map(|p| p.to_vec_f32().unwrap())
        .collect()
}

/// The events up to and including the first that `stop` accepts.
fn events_until(worker: &TrainerWorker, stop: impl Fn(&TrainEvent) -> bool) -> Vec<TrainEvent> {
    let mut seen = Vec::new();
    loop {
        let event = worker
            .wait_event(WAIT)
            .unwrap_or_else(|| panic!("no event within {WAIT:?}; seen: {seen:?}"));
        let done = stop(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

fn step_stats(events: &[TrainEvent]) -> Vec<StepStats> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(p) => Some(p.stats.clone()),
            _ => None,
        })
        .collect()
}

/// Work an application might do on the device meanwhile, checked against the host: its own
/// wgpu compute pass on the shared queue, and engine ops of its own.
struct UnrelatedWork {
    device: Device,
    pipeline: wgpu::ComputePipeline,
    rounds: usize,
}

const DOUBLE: &str = "
@group(0) @binding(0) var<storage, read_write> data: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&data)) { data[id.x] = 2.0 * data[id.x] + 1.0; }
}";

impl UnrelatedWork {
    fn new(device: &Device) -> Self {
        let (wgpu_device, _) = device.wgpu();
        let module = wgpu_device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("app's own kernel"),
            source: wgpu::ShaderSource::Wgsl(DOUBLE.into()),
        });
        let pipeline = wgpu_device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("app's own pipeline"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        UnrelatedWork {
            device: device.clone(),
            pipeline,
            rounds: 0,
        }
    }

    /// One round of both kinds of work, each result checked.
    fn round(&mut self) {
        self.rounds += 1;
        self.own_kernel();
        self.engine_matmul();
    }

    fn own_kernel(&self) {
        use wgpu::util::DeviceExt;
        let (device, queue) = self.device.wgpu();
        let host: Vec<f32> = (0..256).map(|i| i as f32 * 0.5).collect();
        let data = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("app data"),
            contents: bytemuck::cast_slice(&host),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("app readback"),
            size: 256 * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: data.as_entire_binding(),
            }],
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(4, 1, 1);
        }
        encoder.copy_buffer_to_buffer(&data, 0, &readback, 0, 256 * 4);
        let index = queue.submit([encoder.finish()]);
        readback
            .slice(..)
            .map_async(wgpu::MapMode::Read, |r| r.unwrap());
        device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .unwrap();
        let out: Vec<f32> =
            bytemuck::cast_slice(&readback.slice(..).get_mapped_range().unwrap()).to_vec();
        for (o, h) in out.iter().zip(&host) {
            assert_eq!(*o, 2.0 * h + 1.0, "the app's own kernel");
        }
    }

    fn engine_matmul(&self) {
        let a_host = common::values(6 * 5, -1.0, 1.0, self.rounds as u64);
        let b_host = common::values(5 * 4, -1.0, 1.0, 1000 + self.rounds as u64);
        let a = Tensor::from_slice(&self.device, &a_host, &[6, 5]).unwrap();
        let b = Tensor::from_slice(&self.device, &b_host, &[5, 4]).unwrap();
        let c = a.matmul(&b).unwrap().to_vec_f32().unwrap();
        let reference =
            common::matmul_ref(&a_host, &b_host, 1, 6, 5, 4, false, false, false, false);
        common::assert_close("the app's matmul", &c, &reference, 1e-5, 1e-5);
    }
}

#[test]
fn steps_interleaved_with_unrelated_gpu_work_on_the_same_device_give_the_losses_of_steps_alone() {
    let n = 6;
    let mut alone_trainer = trainer();
    let alone: Vec<StepStats> = (0..n).map(|_| alone_trainer.step().unwrap()).collect();

    let mut work = UnrelatedWork::new(&common::device());
    let worker = TrainerWorker::spawn(trainer());
    let mut interleaved = Vec::new();
    for _ in 0..n {
        let mut pending = worker.step();
        let stats = loop {
            // At least one round per step, so the two kinds of work really interleave.
            work.round();
            if let Some(result) = pending.try_take() {
                break result.unwrap();
            }
        };
        interleaved.push(stats);
    }
    assert!(work.rounds >= n);
    assert_eq!(
        bits(&interleaved),
        bits(&alone),
        "losses and gradient norms"
    );
    let after = worker.finish().unwrap();
    assert_eq!(after.steps_done(), n);
    assert_eq!(param_values(&after), param_values(&alone_trainer));
}

#[test]
fn a_queued_step_returns_at_once_and_can_be_awaited() {
    let worker = TrainerWorker::spawn(trainer());
    // Hold the worker thread busy until the test lets it go.
    let (release, held) = mpsc::channel::<()>();
    let gate = worker.with(move |_| held.recv().map_err(|e| ModelError::Input(e.to_string())));
    let mut step = worker.step();
    assert!(!step.is_ready(), "the step waits behind the held job");
    assert!(step.try_take().is_none());
    release.send(()).unwrap();
    gate.wait().unwrap();
    let first = step.wait().unwrap();
    // The same Pending works as a future on any executor.
    let second = pollster::block_on(worker.step()).unwrap();
    assert_eq!(bits(&[first, second]), bits(&steps_alone(2)));
}

#[test]
fn pause_and_cancel_leave_the_run_after_whole_steps_and_it_continues_exactly() {
    let total = 8;
    let alone = steps_alone(total);
    let worker = TrainerWorker::spawn_with(
        trainer(),
        WorkerOptions {
            router_stats: true,
            ..Default::default()
        },
    );
    worker.run(total);
    let mut events = events_until(
        &worker,
        |e| matches!(e, TrainEvent::Step(p) if p.stats.step == 2),
    );
    worker.pause();
    events.extend(events_until(&worker, |e| {
        matches!(e, TrainEvent::Paused { .. })
    }));
    let paused_at = worker.status().steps_done;
    assert!(worker.status().paused);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        worker.status().steps_done,
        paused_at,
        "no step while paused"
    );
    worker.resume();
    events.extend(events_until(
        &worker,
        |e| matches!(e, TrainEvent::Step(p) if p.stats.step == paused_at + 1),
    ));
    worker.cancel();
    events.extend(events_until(&worker, |e| {
        matches!(e, TrainEvent::Cancelled { .. })
    }));
    let Some(TrainEvent::Cancelled { step: cancelled_at }) = events.last() else {
        unreachable!()
    };
    let cancelled_at = *cancelled_at;
    assert!(cancelled_at < total, "cancelled before the end of the run");
    assert_eq!(worker.status().steps_done, cancelled_at);
    assert_eq!(worker.status().run_remaining, 0);

    // Every progress event carries the router's view: one entry per adapted module, gates
    // that are a distribution over the 3 experts.
    for event in &events {
        if let TrainEvent::Step(p) = event {
            assert_eq!(p.total_steps, total);
            assert!(p.tokens_per_second > 0.0);
            assert_eq!(p.router.len(), 3 * 2, "3 target modules x 2 layers");
            for r in &p.router {
                let sum: f32 = r.mean_gate.iter().sum();
                assert!((sum - 1.0).abs() < 1e-4, "{r:?}");
            }
        }
    }

    // The rest of the run, after the cancel, is the uninterrupted run's rest.
    worker.run(total - cancelled_at);
    events.extend(events_until(&worker, |e| {
        matches!(e, TrainEvent::Finished { .. })
    }));
    assert_eq!(bits(&step_stats(&events)), bits(&alone));
    assert_eq!(worker.finish().unwrap().steps_done(), total);
}

#[test]
fn a_step_cancelled_between_micro_batches_changes_nothing() {
    let alone = steps_alone(3);
    let mut t = trainer();
    t.step().unwrap();
    // Cancelled after the first of the two micro-batches: nothing of it may remain.
    let asked = std::cell::Cell::new(0);
    let err = t
        .step_unless(&|| {
            asked.set(asked.get() + 1);
            asked.get() > 1
        })
        .unwrap_err();
    assert!(matches!(err, ModelError::Cancelled { step: 1 }), "{err}");
    assert_eq!(t.steps_done(), 1);
    // Cancelled before the optimizer update (after both micro-batches' backward passes).
    let asked = std::cell::Cell::new(0);
    let err = t
        .step_unless(&|| {
            asked.set(asked.get() + 1);
            asked.get() > 2
        })
        .unwrap_err();
    assert!(matches!(err, ModelError::Cancelled { step: 1 }), "{err}");
    let rest = [t.step().unwrap(), t.step().unwrap()];
    assert_eq!(bits(&rest), bits(&alone[1..]));
}

#[test]
fn a_checkpoint_saved_through_the_worker_at_any_step_resumes_to_the_same_losses() {
    let dir = temp_dir("checkpoint");
    let alone = steps_alone(6);
    let worker = TrainerWorker::spawn(trainer());
    // Before the first step (no optimizer moments yet), then in the middle of a run: a run
    // handles messages between its steps, so the save lands at a step boundary.
    worker.save_checkpoint(dir.join("at-0")).wait().unwrap();
    worker.run(6);
    events_until(
        &worker,
        |e| matches!(e, TrainEvent::Step(p) if p.stats.step == 2),
    );
    worker.save_checkpoint(dir.join("mid-run")).wait().unwrap();
    let events = events_until(&worker, |e| matches!(e, TrainEvent::Finished { .. }));
    assert!(step_stats(&events).len() < 6);
    drop(worker);
    for name in ["at-0", "mid-run"] {
        let ckpt = dir.join(name);
        let mut resumed = Trainer::resume(hydra_model(), examples(), 0, &ckpt).unwrap();
        let saved_at = resumed.steps_done();
        assert!(
            name == "at-0" && saved_at == 0 || saved_at >= 2,
            "{name}: {saved_at}"
        );
        let from_checkpoint: Vec<StepStats> =
            (saved_at..6).map(|_| resumed.step().unwrap()).collect();
        assert_eq!(bits(&from_checkpoint), bits(&alone[saved_at..]), "{name}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
