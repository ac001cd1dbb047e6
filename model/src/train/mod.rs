//! Fine-tuning: a run's settings and schedule, the training step, evaluation, checkpoints (a
//! run's resumable state), the up-front memory estimate, and the background worker.

pub mod checkpoint;
pub mod memory;
pub mod schedule;
pub mod settings;
pub mod trainer;
pub mod worker;

pub use schedule::{LrSchedule, ScheduleKind};
pub use settings::{TrainSettings, Trainable};
pub use trainer::{evaluate, EvalStats, StepStats, Trainer};
pub use worker::{Pending, Progress, TrainEvent, TrainerWorker, WorkerOptions, WorkerStatus};
