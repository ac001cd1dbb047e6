//! Training in the background: a [`Trainer`] on a thread of its own.
//!
//! An application cannot stop drawing frames for the length of a training step.
//! [`TrainerWorker`] moves the trainer onto its own thread and talks to it by messages, in
//! the order they were sent:
//!
//! - [`TrainerWorker::step`] queues one step and returns at once with a [`Pending`] result
//!   that the caller polls ([`Pending::try_take`]), blocks on ([`Pending::wait`]) or
//!   `.await`s;
//! - [`TrainerWorker::run`] trains a number of steps on its own, reporting each one as a
//!   [`TrainEvent`] on a channel; [`pause`](TrainerWorker::pause),
//!   [`resume`](TrainerWorker::resume) and [`cancel`](TrainerWorker::cancel) steer it;
//! - [`TrainerWorker::with`] runs any closure on the trainer between two steps (save a
//!   checkpoint, evaluate, generate text from the model being trained).
//!
//! Cancelling stops a step in flight before its optimizer update (see
//! [`Trainer::step_unless`]), so the trainer always stands after a whole number of steps and
//! can be saved, resumed or stepped again. The GPU work itself is the engine's usual
//! recording and submits, from the worker thread: a host application that shares its
//! `wgpu::Device` with the engine ([`hydralora_engine::Device::from_wgpu`]) keeps submitting
//! its own work on the same queue meanwhile.
//!
//! ```no_run
//! # use hydralora_model::train::{Trainer, TrainerWorker, TrainEvent};
//! # fn demo(trainer: Trainer) -> hydralora_model::Result<()> {
//! let worker = TrainerWorker::spawn(trainer);
//! let mut pending = worker.step(); // returns at once
//! loop {
//!     // ... draw a frame ...
//!     if let Some(stats) = pending.try_take() {
//!         let stats = stats?;
//!         println!("step {} loss {}", stats.step, stats.loss);
//!         break;
//!     }
//! }
//! worker.run(100); // 100 more steps, reported as events
//! while let Some(event) = worker.wait_event(std::time::Duration::from_secs(60)) {
//!     if let TrainEvent::Finished { .. } = event {
//!         break;
//!     }
//! }
//! let trainer = worker.finish()?; // the trainer back, after its last whole step
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::adapter::{record_gates, router_stats, save_adapter, RouterStats};
use crate::error::{ModelError, Result};
use crate::train::trainer::{StepStats, Trainer};

/// What the worker reports, in order, on its event channel.
#[derive(Debug)]
pub enum TrainEvent {
    /// A step finished (from [`TrainerWorker::run`] or [`TrainerWorker::step`]).
    Step(Progress),
    /// The run is paused (after the step that was in flight).
    Paused {
        /// Optimizer steps done.
        step: usize,
    },
    /// The run goes on.
    Resumed {
        /// Optimizer steps done.
        step: usize,
    },
    /// The run was cancelled; the trainer stands after `step` whole steps.
    Cancelled {
        /// Optimizer steps done.
        step: usize,
    },
    /// A [`TrainerWorker::run`] did all its steps.
    Finished {
        /// Optimizer steps done.
        step: usize,
    },
    /// A step of a run failed, which ends the run; the failed step changed nothing.
    Failed {
        /// Optimizer steps done (the failed one not counted).
        step: usize,
        /// Why (a diverged loss names the step and where the first NaN appeared).
        error: ModelError,
    },
}

/// One finished step, as the worker reports it.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The trainer's own numbers for the step (step, loss, lr, gradient norm, time).
    pub stats: StepStats,
    /// Tokens with a label (the ones the loss counts) per second of this step.
    pub tokens_per_second: f64,
    /// The step's total from [`TrainSettings::total_steps`](crate::train::TrainSettings).
    pub total_steps: usize,
    /// Per router, the mean gate of each expert over the step's last micro-batch; empty for
    /// LoRA, or when [`WorkerOptions::router_stats`] is off.
    pub router: Vec<RouterStats>,
}

/// Where the worker stands; see [`TrainerWorker::status`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Optimizer steps done.
    pub steps_done: usize,
    /// Steps left in the current [`TrainerWorker::run`] (0: no run).
    pub run_remaining: usize,
    /// A run is paused.
    pub paused: bool,
}

/// How a [`TrainerWorker`] reports.
#[derive(Clone, Default)]
pub struct WorkerOptions {
    /// Attach router statistics ([`Progress::router`]) to each step (HydraLoRA only; one
    /// small extra readback per step).
    pub router_stats: bool,
    /// Called on the worker thread after each event is sent: a UI asks for a repaint here
    /// (e.g. egui's `Context::request_repaint`).
    pub wake: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Work queued for the worker thread.
enum Message {
    Run(usize),
    Pause,
    Resume,
    Cancel,
    Step(Reply<StepStats>),
    Call(Box<dyn FnOnce(&mut Trainer) + Send>),
    Finish,
}

/// State shared by the handle and the worker thread.
#[derive(Default)]
struct Shared {
    /// Set by [`TrainerWorker::cancel`]; the step in flight checks it before each
    /// micro-batch and before its update. Cleared when the worker reads the Cancel message.
    cancel: AtomicBool,
    status: Mutex<WorkerStatus>,
}

/// A [`Trainer`] running on its own thread; see the [module docs](self).
///
/// Dropping the worker cancels what is in flight and waits for the thread to end.
pub struct TrainerWorker {
    inbox: Sender<Message>,
    events: Receiver<TrainEvent>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Trainer>>,
}

impl TrainerWorker {
    /// Moves `trainer` onto a new thread, idle until told what to do.
    pub fn spawn(trainer: Trainer) -> TrainerWorker {
        Self::spawn_with(trainer, WorkerOptions::default())
    }

    /// [`TrainerWorker::spawn`] with reporting options.
    pub fn spawn_with(mut trainer: Trainer, options: WorkerOptions) -> TrainerWorker {
        let (inbox, messages) = mpsc::channel();
        let (outbox, events) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        lock(&shared.status).steps_done = trainer.steps_done();
        let routed = trainer
            .model
            .adapter
            .as_ref()
            .is_some_and(|a| a.experts > 1);
        let options = WorkerOptions {
            router_stats: options.router_stats && routed,
            ..options
        };
        if options.router_stats {
            record_gates(&mut trainer.model, true);
        }
        let serve = Serve {
            messages,
            events: outbox,
            shared: shared.clone(),
            options,
            remaining: 0,
            paused: false,
        };
        let thread = std::thread::Builder::new()
            .name("hydralora-trainer".into())
            .spawn(move || serve.serve(trainer))
            .expect("the OS starts a thread");
        TrainerWorker {
            inbox,
            events,
            shared,
            thread: Some(thread),
        }
    }

    /// Queues one optimizer step and returns at once; the step's result arrives in the
    /// [`Pending`]. Runs after the messages queued before it (also while paused).
    pub fn step(&self) -> Pending<StepStats> {
        let (pending, reply) = Pending::new();
        self.send(Message::Step(reply));
        pending
    }

    /// Trains `steps` more steps, one after another, each reported as [`TrainEvent::Step`],
    /// then [`TrainEvent::Finished`]. Replaces the rest of a run already going.
    pub fn run(&self, steps: usize) {
        self.send(Message::Run(steps));
    }

    /// Pauses the run after the step in flight ([`TrainEvent::Paused`]).
    pub fn pause(&self) {
        self.send(Message::Pause);
    }

    /// Continues a paused run ([`TrainEvent::Resumed`]).
    pub fn resume(&self) {
        self.send(Message::Resume);
    }

    /// Cancels the step in flight (before its optimizer update, so it changes nothing),
    /// every step queued before this call, and the run ([`TrainEvent::Cancelled`]).
    pub fn cancel(&self) {
        self.shared.cancel.store(true, Ordering::SeqCst);
        self.send(Message::Cancel);
    }

    /// Runs `f` on the trainer on the worker thread, between two steps, and returns its
    /// result in a [`Pending`]: evaluate, generate from `trainer.model`, save.
    pub fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Trainer) -> Result<R> + Send + 'static,
    ) -> Pending<R> {
        let (pending, reply) = Pending::new();
        self.send(Message::Call(Box::new(move |trainer| {
            reply.send(f(trainer))
        })));
        pending
    }

    /// Writes a checkpoint ([`Trainer::save_checkpoint`]) after the steps queued so far.
    pub fn save_checkpoint(&self, dir: impl Into<PathBuf>) -> Pending<()> {
        let dir = dir.into();
        self.with(move |t| t.save_checkpoint(&dir))
    }

    /// Writes the adapter files ([`save_adapter`]) after the steps queued so far.
    pub fn save_adapter(&self, dir: impl Into<PathBuf>) -> Pending<()> {
        let dir = dir.into();
        self.with(move |t| save_adapter(&t.model, &dir))
    }

    /// The next event if there is one, without waiting.
    pub fn try_event(&self) -> Option<TrainEvent> {
        self.events.try_recv().ok()
    }

    /// The next event, waiting at most `timeout`.
    pub fn wait_event(&self, timeout: Duration) -> Option<TrainEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Where the worker stands now.
    pub fn status(&self) -> WorkerStatus {
        *lock(&self.shared.status)
    }

    /// Ends the worker after the messages queued so far (a run ends at its next step
    /// boundary) and gives the trainer back.
    pub fn finish(mut self) -> Result<Trainer> {
        self.send(Message::Finish);
        let thread = self.thread.take().expect("the thread is joined once");
        thread.join().map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            ModelError::Background(format!("the training thread panicked: {why}"))
        })
    }

    /// A send fails only when the thread has ended, which its replies then report.
    fn send(&self, message: Message) {
        let _ = self.inbox.send(message);
    }
}

impl Drop for TrainerWorker {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.cancel.store(true, Ordering::SeqCst);
            self.send(Message::Finish);
            let _ = thread.join();
        }
    }
}

/// The worker thread's side.
struct Serve {
    messages: Receiver<Message>,
    events: Sender<TrainEvent>,
    shared: Arc<Shared>,
    options: WorkerOptions,
    /// Steps left in the current run.
    remaining: usize,
    paused: bool,
}

impl Serve {
    /// Handles every queued message before each step of a run, and waits for messages when
    /// there is no run (or it is paused). Returns the trainer when told to finish.
    fn serve(mut self, mut trainer: Trainer) -> Trainer {
        loop {
            let running = self.remaining > 0 && !self.paused;
            let message = if running {
                match self.messages.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return trainer,
                }
            } else {
                match self.messages.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return trainer,
                }
            };
            match message {
                Some(Message::Finish) => return trainer,
                Some(message) => self.handle(message, &mut trainer),
                None => self.run_one(&mut trainer),
            }
            self.publish(&trainer);
        }
    }

    fn handle(&mut self, message: Message, trainer: &mut Trainer) {
        let step = trainer.steps_done();
        match message {
            Message::Run(steps) => {
                self.remaining = steps;
                self.paused = false;
                if steps == 0 {
                    self.emit(trainer, TrainEvent::Finished { step });
                }
            }
            Message::Pause => {
                self.paused = true;
                self.emit(trainer, TrainEvent::Paused { step });
            }
            Message::Resume => {
                self.paused = false;
                self.emit(trainer, TrainEvent::Resumed { step });
            }
            Message::Cancel => {
                self.shared.cancel.store(false, Ordering::SeqCst);
                self.remaining = 0;
                self.paused = false;
                self.emit(trainer, TrainEvent::Cancelled { step });
            }
            Message::Step(reply) => reply.send(self.step(trainer, false)),
            Message::Call(f) => f(trainer),
            Message::Finish => unreachable!("handled by serve"),
        }
    }

    /// One step of the run; a failure ends the run (a cancel is followed by its message).
    fn run_one(&mut self, trainer: &mut Trainer) {
        match self.step(trainer, true) {
            Ok(_) => {
                if self.remaining == 0 {
                    self.emit(
                        trainer,
                        TrainEvent::Finished {
                            step: trainer.steps_done(),
                        },
                    );
                }
            }
            Err(ModelError::Cancelled { .. }) => {}
            Err(error) => {
                self.remaining = 0;
                self.emit(
                    trainer,
                    TrainEvent::Failed {
                        step: trainer.steps_done(),
                        error,
                    },
                );
            }
        }
    }

    /// A cancellable step, reported as a [`TrainEvent::Step`] when it succeeds; one of a run
    /// (`in_run`) counts down its steps first, so the status the event publishes is final.
    fn step(&mut self, trainer: &mut Trainer, in_run: bool) -> Result<StepStats> {
        let cancel = &self.shared.cancel;
        let stats = trainer.step_unless(&|| cancel.load(Ordering::SeqCst))?;
        if in_run {
            self.remaining -= 1;
        }
        let router = if self.options.router_stats {
            router_stats(&trainer.model)?
        } else {
            Vec::new()
        };
        self.emit(
            trainer,
            TrainEvent::Step(Progress {
                tokens_per_second: stats.tokens as f64 / stats.seconds.max(1e-9),
                total_steps: trainer.settings.total_steps,
                router,
                stats: stats.clone(),
            }),
        );
        Ok(stats)
    }

    /// Sends `event` after the status is up to date, so a listener that reads the status
    /// on an event sees the state the event reports.
    fn emit(&self, trainer: &Trainer, event: TrainEvent) {
        self.publish(trainer);
        // Nobody listening is fine: the events are a report, not a protocol.
        let _ = self.events.send(event);
        if let Some(wake) = &self.options.wake {
            wake();
        }
    }

    fn publish(&self, trainer: &Trainer) {
        *lock(&self.shared.status) = WorkerStatus {
            steps_done: trainer.steps_done(),
            run_remaining: self.remaining,
            paused: self.paused,
        };
    }
}

// ---------------------------------------------------------------------------------------------
// A result that arrives later
// ---------------------------------------------------------------------------------------------

/// The result of work queued on a [`TrainerWorker`], arriving later: poll it with
/// [`Pending::try_take`], block with [`Pending::wait`], or `.await` it (any executor).
pub struct Pending<T> {
    slot: Arc<Slot<T>>,
}

/// Where the worker puts a result; dropped unfilled (the thread ended), it says so.
struct Reply<T> {
    slot: Option<Arc<Slot<T>>>,
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    filled: Condvar,
}

struct SlotState<T> {
    value: Option<Result<T>>,
    waker: Option<Waker>,
}

impl<T> Pending<T> {
    fn new() -> (Pending<T>, Reply<T>) {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                value: None,
                waker: None,
            }),
            filled: Condvar::new(),
        });
        (Pending { slot: slot.clone() }, Reply { slot: Some(slot) })
    }

    /// The result has arrived.
    pub fn is_ready(&self) -> bool {
        lock(&self.slot.state).value.is_some()
    }

    /// The result if it has arrived (then it is taken: later calls return `None`).
    pub fn try_take(&mut self) -> Option<Result<T>> {
        lock(&self.slot.state).value.take()
    }

    /// Blocks until the result arrives.
    pub fn wait(self) -> Result<T> {
        let mut state = lock(&self.slot.state);
        loop {
            if let Some(value) = state.value.take() {
                return value;
            }
            state = self
                .slot
                .filled
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut state = lock(&self.slot.state);
        match state.value.take() {
            Some(value) => Poll::Ready(value),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Reply<T> {
    fn send(mut self, value: Result<T>) {
        if let Some(slot) = self.slot.take() {
            fill(&slot, value);
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            fill(
                &slot,
                Err(ModelError::Background(
                    "the training thread ended before it answered".into(),
                )),
            );
        }
    }
}

fn fill<T>(slot: &Slot<T>, value: Result<T>) {
    let waker = {
        let mut state = lock(&slot.state);
        state.value = Some(value);
        state.waker.take()
    };
    slot.filled.notify_all();
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// A poisoned lock still holds consistent data here (every critical section is one store).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
