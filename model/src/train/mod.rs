//! Fine-tuning: schedules, the training step, evaluation and checkpoints.

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
