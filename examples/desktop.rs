//! A desktop app that fine-tunes on the GPU it draws with.
//!
//! An `eframe`/`egui` window on the wgpu renderer hands its own `wgpu::Device` and `Queue`
//! to the engine ([`Device::from_wgpu_adapter`]), with a memory budget that leaves the
//! renderer room, then fine-tunes a HydraLoRA adapter on
//! the demo's four tasks (reverse, sort, add, cipher) in the background of the UI loop
//! ([`TrainerWorker`]), while the window draws the live loss curve, tokens per second and
//! the router's gate weights, and answers prompts typed to the model being trained.
//!
//! ```sh
//! cargo run --release --example desktop
//! cargo run --release --example desktop -- --help
//! ```
//!
//! The first start trains and caches the demo's small base model (a few hundred steps);
//! later starts load it from the cache. `--screenshot out.png` takes a picture of the window
//! after some steps and quits (the test `tests/desktop.rs` runs it that way under Xvfb).

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use eframe::egui::{self, Color32, Pos2, Rect, Sense, Stroke, StrokeKind, Vec2};
use eframe::egui_wgpu::{self, WgpuSetup, WgpuSetupCreateNew};
use hydralora::engine::Device;
use hydralora::model::adapter::{attach, RouterStats};
use hydralora::model::demo::{
    adapter_pair, default_cache_dir, finetune_settings, prepare_tasks, DemoEvent, DemoOptions,
    DemoTasks,
};
use hydralora::model::llama::codec::{CharCodec, TextCodec};
use hydralora::model::train::memory::parse_bytes;
use hydralora::model::train::{Pending, TrainEvent, Trainer, TrainerWorker, WorkerOptions};
use hydralora::model::{generate, SamplingConfig};

/// The loss curve's colour (the screenshot test looks for it).
const CURVE: Color32 = Color32::from_rgb(255, 128, 0);

const HELP: &str = "\
usage: desktop [--steps N] [--base-steps N] [--cache-dir DIR] [--out DIR]
               [--memory-budget SIZE] [--screenshot FILE.png [--screenshot-after STEPS]]

  --steps N             fine-tuning steps [500]
  --base-steps N        steps of the cached base model [300]
  --cache-dir DIR       where the base model is cached [~/.cache/hydralora]
  --out DIR             where `Save adapter` writes [runs/desktop]
  --memory-budget SIZE  most GPU memory training may hold, e.g. 512MiB, so the
                        window keeps room to render [half the device memory
                        where the driver reports it, else none]
  --screenshot FILE     start training at once, save a PNG of the window after
                        --screenshot-after steps [10], then quit";

/// The command line.
struct Options {
    demo: DemoOptions,
    out_dir: PathBuf,
    memory_budget: Option<u64>,
    screenshot: Option<(PathBuf, usize)>,
}

fn parse_args() -> Result<Options, String> {
    let mut demo = DemoOptions::quick(default_cache_dir(), PathBuf::new());
    demo.finetune_steps = 500;
    let (mut out_dir, mut shot, mut shot_after) = (PathBuf::from("runs/desktop"), None, 10);
    let mut memory_budget = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{HELP}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n\n{HELP}"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag}: `{value}` is not a whole number"))
        };
        match flag.as_str() {
            "--steps" => demo.finetune_steps = number()?.max(1),
            "--base-steps" => demo.base_steps = number()?.max(1),
            "--screenshot-after" => shot_after = number()?.max(1),
            "--cache-dir" => demo.cache_dir = value.into(),
            "--out" => out_dir = value.into(),
            "--memory-budget" => {
                memory_budget = Some(parse_bytes(&value).map_err(|e| format!("{flag}: {e}"))?)
            }
            "--screenshot" => shot = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option `{flag}`\n\n{HELP}")),
        }
    }
    Ok(Options {
        demo,
        out_dir,
        memory_budget,
        screenshot: shot.map(|s| (s, shot_after)),
    })
}

fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let failure = Arc::new(Mutex::new(None::<String>));
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("hydralora: fine-tuning on this GPU")
            .with_inner_size([960.0, 720.0]),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: egui_wgpu::WgpuConfiguration {
            wgpu_setup: WgpuSetup::CreateNew(WgpuSetupCreateNew {
                device_descriptor: Arc::new(engine_device_descriptor),
                ..WgpuSetupCreateNew::without_display_handle()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let app_failure = failure.clone();
    let result = eframe::run_native(
        "hydralora-desktop",
        native,
        Box::new(move |cc| Ok(Box::new(DesktopApp::new(cc, options, app_failure)?))),
    );
    let failure = failure.lock().unwrap().take();
    match (result, failure) {
        (Err(e), _) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        (Ok(()), Some(why)) => {
            eprintln!("error: {why}");
            std::process::exit(1);
        }
        (Ok(()), None) => {}
    }
}

/// The device the window renders with, asked for with what the engine wants too: the
/// adapter's real limits (large models need more than the defaults) and the features the
/// engine's fast kernels use, where the adapter has them.
fn engine_device_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
    wgpu::DeviceDescriptor {
        label: Some("hydralora desktop: rendering and training"),
        required_features: adapter.features()
            & (wgpu::Features::SHADER_F16
                | wgpu::Features::SUBGROUP
                | wgpu::Features::TIMESTAMP_QUERY),
        required_limits: adapter.limits(),
        ..Default::default()
    }
}

/// What the preparation thread reports.
enum Prepared {
    Note(String),
    Ready(Result<Box<(Trainer, CharCodec)>, String>),
}

enum Stage {
    /// The base model loads (or trains, the first time) on a thread of its own.
    Preparing(Receiver<Prepared>),
    Training {
        worker: TrainerWorker,
        codec: CharCodec,
    },
    Failed,
}

struct DesktopApp {
    stage: Stage,
    device_name: String,
    status: String,
    losses: Vec<(f64, f64)>, // (step, loss)
    total_steps: usize,
    tokens_per_second: f64,
    router: Vec<RouterStats>,
    prompt: String,
    answer: String,
    asking: Option<Pending<String>>,
    saving: Option<Pending<()>>,
    out_dir: PathBuf,
    screenshot: Option<(PathBuf, usize)>,
    shot_requested: bool,
    /// Set by the screenshot callback once the PNG is written (or failed): then quit.
    shot_done: Arc<Mutex<Option<Result<(), String>>>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl DesktopApp {
    fn new(
        cc: &eframe::CreationContext<'_>,
        options: Options,
        failure: Arc<Mutex<Option<String>>>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let render = cc
            .wgpu_render_state
            .as_ref()
            .ok_or("eframe started without the wgpu renderer")?;
        // The engine runs its kernels on the window's own device and queue.
        let device =
            Device::from_wgpu_adapter(&render.adapter, render.device.clone(), render.queue.clone());
        // The window renders from the same memory: training gets a budget (half the device's
        // memory unless told; none on a CPU driver, whose heap size is nominal), and a run
        // that would need more is refused with the numbers instead of starving the renderer.
        let half = device.default_memory_budget().map(|m| m / 2);
        device.set_memory_budget(options.memory_budget.or(half));
        let device_name = format!(
            "{} ({}, {})",
            device.info().name,
            device.info().backend,
            device.info().device_type
        );
        let (tx, rx) = mpsc::channel();
        let ctx = cc.egui_ctx.clone();
        let demo = options.demo.clone();
        std::thread::spawn(move || {
            let note = |text: String| {
                let _ = tx.send(Prepared::Note(text));
                ctx.request_repaint();
            };
            let ready = prepare(&device, &demo, |e| match e {
                DemoEvent::Phase(p) => note(p),
                DemoEvent::Step { stats, total, .. } => note(format!(
                    "training the base model: step {}/{total}, loss {:.3}",
                    stats.step, stats.loss
                )),
            });
            let _ = tx.send(Prepared::Ready(
                ready.map(Box::new).map_err(|e| e.to_string()),
            ));
            ctx.request_repaint();
        });
        Ok(DesktopApp {
            stage: Stage::Preparing(rx),
            device_name,
            status: "loading the base model".into(),
            losses: Vec::new(),
            total_steps: options.demo.finetune_steps,
            tokens_per_second: 0.0,
            router: Vec::new(),
            prompt: "rev:abcd=".into(),
            answer: String::new(),
            asking: None,
            saving: None,
            out_dir: options.out_dir,
            screenshot: options.screenshot,
            shot_requested: false,
            shot_done: Arc::default(),
            failure,
        })
    }

    /// Takes the preparation thread's news; starts the worker when the trainer is ready.
    fn poll_preparation(&mut self, ctx: &egui::Context) {
        let Stage::Preparing(rx) = &self.stage else {
            return;
        };
        while let Ok(message) = rx.try_recv() {
            match message {
                Prepared::Note(text) => self.status = text,
                Prepared::Ready(Ok(ready)) => {
                    let (trainer, codec) = *ready;
                    let ctx = ctx.clone();
                    let worker = TrainerWorker::spawn_with(
                        trainer,
                        WorkerOptions {
                            router_stats: true,
                            wake: Some(Arc::new(move || ctx.request_repaint())),
                        },
                    );
                    self.status = "ready: press Start".into();
                    if self.screenshot.is_some() {
                        worker.run(self.total_steps);
                    }
                    self.stage = Stage::Training { worker, codec };
                    return;
                }
                Prepared::Ready(Err(why)) => {
                    self.fail(why);
                    return;
                }
            }
        }
    }

    /// Takes the worker's events: the curve, the speed, the router, the run's state.
    fn poll_training(&mut self) {
        let Stage::Training { worker, .. } = &self.stage else {
            return;
        };
        let mut failed = None;
        while let Some(event) = worker.try_event() {
            match event {
                TrainEvent::Step(p) => {
                    self.losses.push((p.stats.step as f64, p.stats.loss as f64));
                    self.tokens_per_second = p.tokens_per_second;
                    if !p.router.is_empty() {
                        self.router = p.router;
                    }
                    self.status = format!(
                        "training: step {}/{}, loss {:.4}",
                        p.stats.step, p.total_steps, p.stats.loss
                    );
                }
                TrainEvent::Paused { step } => self.status = format!("paused after step {step}"),
                TrainEvent::Resumed { step } => self.status = format!("resumed at step {step}"),
                TrainEvent::Cancelled { step } => {
                    self.status = format!("cancelled: the adapter stands after step {step}")
                }
                TrainEvent::Finished { step } => self.status = format!("done: {step} steps"),
                TrainEvent::Failed { error, .. } => failed = Some(error.to_string()),
            }
        }
        if let Some(why) = failed {
            self.status = format!("training failed: {why}");
            if self.screenshot.is_some() {
                self.fail(why);
            }
        }
        if let Some(answer) = self.asking.as_mut().and_then(|p| p.try_take()) {
            self.answer = answer.unwrap_or_else(|e| format!("error: {e}"));
            self.asking = None;
        }
        if let Some(saved) = self.saving.as_mut().and_then(|p| p.try_take()) {
            self.status = match saved {
                Ok(()) => format!("adapter saved to {}", self.out_dir.display()),
                Err(e) => format!("saving failed: {e}"),
            };
            self.saving = None;
        }
    }

    fn fail(&mut self, why: String) {
        self.status = format!("error: {why}");
        *self.failure.lock().unwrap() = Some(why);
        self.stage = Stage::Failed;
    }

    /// In `--screenshot` mode: the picture after enough steps, then quit.
    fn screenshot_then_quit(&mut self, ctx: &egui::Context) {
        let Some((path, after)) = &self.screenshot else {
            return;
        };
        if matches!(self.stage, Stage::Failed) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if !self.shot_requested && self.losses.len() >= *after {
            self.shot_requested = true;
            let (path, done, repaint) = (path.clone(), self.shot_done.clone(), ctx.clone());
            ctx.request_screenshot(move |image| {
                *done.lock().unwrap() = Some(write_png(&path, &image));
                repaint.request_repaint();
            });
        }
        if let Some(result) = self.shot_done.lock().unwrap().take() {
            if let Err(why) = result {
                *self.failure.lock().unwrap() = Some(why);
            }
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        ctx.request_repaint();
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        let Stage::Training { worker, codec } = &self.stage else {
            return;
        };
        let status = worker.status();
        let running = status.run_remaining > 0;
        ui.horizontal(|ui| {
            let left = self.total_steps.saturating_sub(status.steps_done);
            if ui
                .add_enabled(!running && left > 0, egui::Button::new("Start"))
                .clicked()
            {
                worker.run(left);
            }
            if ui
                .add_enabled(running && !status.paused, egui::Button::new("Pause"))
                .clicked()
            {
                worker.pause();
            }
            if ui
                .add_enabled(running && status.paused, egui::Button::new("Resume"))
                .clicked()
            {
                worker.resume();
            }
            if ui
                .add_enabled(running, egui::Button::new("Cancel"))
                .clicked()
            {
                worker.cancel();
            }
            if ui
                .add_enabled(self.saving.is_none(), egui::Button::new("Save adapter"))
                .clicked()
            {
                self.saving = Some(worker.save_adapter(self.out_dir.clone()));
            }
        });
        ui.horizontal(|ui| {
            ui.label("Prompt:");
            ui.text_edit_singleline(&mut self.prompt);
            if ui
                .add_enabled(self.asking.is_none(), egui::Button::new("Generate"))
                .clicked()
            {
                self.asking = Some(ask(worker, codec.clone(), self.prompt.clone()));
            }
            ui.label(format!("=> {}", self.answer));
        });
        ui.label("Try rev:abcd=  srt:dcba=  add:3+4=  rot:abc=  (answered between two steps)");
    }
}

impl eframe::App for DesktopApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.poll_preparation(&ctx);
        self.poll_training();
        egui::CentralPanel::default().show(ui, |ui| {
            ui.heading("hydralora: HydraLoRA fine-tuning in the background");
            ui.label(format!(
                "GPU (shared with this window): {}",
                self.device_name
            ));
            ui.label(&self.status);
            ui.label(format!(
                "{:.0} trained tokens/s (tokens with a label)",
                self.tokens_per_second
            ));
            self.controls(ui);
            ui.separator();
            ui.label("training loss");
            loss_chart(ui, &self.losses, self.total_steps);
            ui.separator();
            ui.label("router: mean gate weight of each expert, per adapted module (last step)");
            router_heatmap(ui, &self.router);
        });
        self.screenshot_then_quit(&ctx);
    }
}

/// The base model and a HydraLoRA trainer on the demo's tasks (runs off the UI thread).
fn prepare(
    device: &Device,
    opts: &DemoOptions,
    on_event: impl FnMut(DemoEvent),
) -> hydralora::model::Result<(Trainer, CharCodec)> {
    let DemoTasks {
        codec,
        mut base,
        train,
        ..
    } = prepare_tasks(device, opts, on_event)?;
    let (_, hydra) = adapter_pair(&base);
    attach(&mut base, &hydra, 1000)?;
    let trainer = Trainer::new(base, train, codec.pad_id(), finetune_settings(opts, 0))?;
    Ok((trainer, codec))
}

/// Greedy generation from the model being trained, between two steps.
fn ask(worker: &TrainerWorker, codec: CharCodec, prompt: String) -> Pending<String> {
    worker.with(move |trainer| {
        let mut ids: Vec<u32> = codec.bos_id().into_iter().collect();
        ids.extend(codec.encode(&prompt)?);
        let cfg = SamplingConfig {
            max_new_tokens: 8,
            stop_tokens: codec.eos_id().into_iter().collect(),
            ..Default::default()
        };
        codec.decode(&generate(&trainer.model, &ids, &cfg, |_| true)?)
    })
}

/// The loss against the step, on axes scaled to the points so far.
fn loss_chart(ui: &mut egui::Ui, points: &[(f64, f64)], total_steps: usize) {
    let size = Vec2::new(ui.available_width(), 240.0);
    let (rect, _) = ui.allocate_exact_size(size, Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, Color32::from_gray(24));
    let plot = rect.shrink2(Vec2::new(48.0, 16.0));
    let axis = Stroke::new(1.0, Color32::from_gray(140));
    painter.line_segment([plot.left_bottom(), plot.right_bottom()], axis);
    painter.line_segment([plot.left_bottom(), plot.left_top()], axis);
    if points.is_empty() {
        return;
    }
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let span = (hi - lo).max(1e-6);
    let last = points.last().map_or(1.0, |p| p.0).max(2.0);
    let to_screen = |(step, loss): (f64, f64)| {
        Pos2::new(
            plot.left() + ((step - 1.0) / (last - 1.0)) as f32 * plot.width(),
            plot.bottom() - ((loss - lo) / span) as f32 * plot.height(),
        )
    };
    let line: Vec<Pos2> = points.iter().map(|&p| to_screen(p)).collect();
    painter.add(egui::Shape::line(line, Stroke::new(2.5, CURVE)));
    let font = egui::FontId::monospace(11.0);
    let text = Color32::from_gray(200);
    let label = |pos: Pos2, align: egui::Align2, s: String| {
        painter.text(pos, align, s, font.clone(), text);
    };
    label(
        plot.left_top(),
        egui::Align2::RIGHT_TOP,
        format!("{hi:.2} "),
    );
    label(
        plot.left_bottom(),
        egui::Align2::RIGHT_BOTTOM,
        format!("{lo:.2} "),
    );
    label(
        plot.right_bottom() + Vec2::new(0.0, 2.0),
        egui::Align2::RIGHT_TOP,
        format!("step {last:.0} of {total_steps}"),
    );
}

/// One row per router (layer and module), one cell per expert, brighter for more weight.
fn router_heatmap(ui: &mut egui::Ui, routers: &[RouterStats]) {
    let experts = routers.first().map_or(0, |r| r.mean_gate.len());
    if experts == 0 {
        ui.label("(no router statistics yet)");
        return;
    }
    let (cell, label_w) = (Vec2::new(56.0, 14.0), 140.0);
    let size = Vec2::new(
        label_w + cell.x * experts as f32,
        cell.y * (routers.len() + 1) as f32,
    );
    let (rect, _) = ui.allocate_exact_size(size, Sense::hover());
    let painter = ui.painter_at(rect);
    let font = egui::FontId::monospace(10.0);
    for h in 0..experts {
        let pos = rect.left_top() + Vec2::new(label_w + cell.x * (h as f32 + 0.5), 0.0);
        painter.text(
            pos,
            egui::Align2::CENTER_TOP,
            format!("expert {h}"),
            font.clone(),
            Color32::GRAY,
        );
    }
    for (row, r) in routers.iter().enumerate() {
        let y = rect.top() + cell.y * (row + 1) as f32;
        painter.text(
            Pos2::new(rect.left(), y),
            egui::Align2::LEFT_TOP,
            format!("layer {} {}", r.layer, r.module),
            font.clone(),
            Color32::GRAY,
        );
        for (h, &g) in r.mean_gate.iter().enumerate() {
            let min = Pos2::new(rect.left() + label_w + cell.x * h as f32, y);
            // An even share (1 / experts) is half brightness; twice that or more is full.
            let shade = ((g * experts as f32 / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
            let cell_rect = Rect::from_min_size(min, cell - Vec2::splat(1.0));
            painter.rect_filled(cell_rect, 0.0, Color32::from_rgb(20, shade / 2, shade));
            painter.rect_stroke(
                cell_rect,
                0.0,
                Stroke::new(0.5, Color32::from_gray(60)),
                StrokeKind::Inside,
            );
            painter.text(
                cell_rect.center(),
                egui::Align2::CENTER_CENTER,
                format!("{g:.2}"),
                font.clone(),
                Color32::WHITE,
            );
        }
    }
}

/// Writes the window's pixels as an RGBA PNG.
fn write_png(path: &std::path::Path, image: &egui::ColorImage) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let [w, h] = image.size;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|p| p.to_array()).collect();
    encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(&rgba))
        .map_err(|e| format!("{}: {e}", path.display()))
}
