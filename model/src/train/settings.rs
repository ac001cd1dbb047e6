//! A training run's settings: what it trains and how each step runs. A checkpoint stores
//! them, so a resumed run continues with the same ones.

use hydralora_engine::AdamWConfig;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::train::schedule::{LrSchedule, ScheduleKind};

/// What one run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    /// The attached adapter only (the base stays frozen).
    Adapter,
    /// Every weight of the model (building a base model from scratch).
    Full,
}

/// The settings of a run that the step depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// The peak learning rate.
    pub lr: f32,
    /// The learning-rate shape after warmup.
    pub schedule: ScheduleKind,
    /// Optimizer steps of linear warmup from 0 to `lr`.
    pub warmup_steps: usize,
    /// Optimizer steps of the whole run (the schedule's length).
    pub total_steps: usize,
    /// Sequences per forward/backward.
    pub micro_batch: usize,
    /// Micro-batches whose gradients are averaged into one optimizer step (effective batch
    /// `micro_batch * grad_accum`).
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (None: no clipping).
    pub max_grad_norm: Option<f32>,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// AdamW's first-moment decay.
    pub beta1: f32,
    /// AdamW's second-moment decay.
    pub beta2: f32,
    /// AdamW's epsilon.
    pub eps: f32,
    /// Seeds the data order and the dropout masks.
    pub seed: u64,
    /// What the optimizer updates.
    pub trainable: Trainable,
    /// Activation checkpointing: keep only each decoder layer's input for backward and
    /// recompute the layer there (same gradients, bitwise; about one more forward of work).
    /// When off, the trainer still turns it on where the memory budget needs it (see
    /// [`crate::train::memory::check_training_fits`]).
    #[serde(default)]
    pub checkpoint_activations: bool,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            lr: 2e-4,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 0,
            total_steps: 100,
            micro_batch: 4,
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            seed: 0,
            trainable: Trainable::Adapter,
            checkpoint_activations: false,
        }
    }
}

impl TrainSettings {
    /// The learning-rate schedule these settings describe.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            kind: self.schedule,
            peak: self.lr,
            warmup: self.warmup_steps,
            total: self.total_steps,
        }
    }

    pub(crate) fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Checks the settings; the error names the field (`lr`, `micro_batch`, `grad_accum`,
    /// `steps`, `max_grad_norm`).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: &str| {
            Err(ModelError::Config {
                file: None,
                field: field.into(),
                why: why.into(),
            })
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", "must be a positive number");
        }
        if self.micro_batch == 0 {
            return bad("micro_batch", "must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1");
        }
        if self.total_steps == 0 {
            return bad("steps", "must be at least 1");
        }
        if self.max_grad_norm.is_some_and(|n| n.is_nan() || n <= 0.0) {
            return bad("max_grad_norm", "must be positive");
        }
        Ok(())
    }
}
