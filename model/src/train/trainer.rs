//! The training step: micro-batches with gradient accumulation, the optional load-balancing
//! loss, global gradient-norm clipping, a learning-rate schedule and fused AdamW; evaluation;
//! and checkpoints that resume exactly.

use std::collections::BTreeMap;
use std::path::Path;
use web_time::Instant;

use hydralora_engine::{no_grad, AdamW, Gradients, Tensor};
use serde::{Deserialize, Serialize};

use crate::adapter::{balance_loss, load_adapter, record_gates, save_adapter, trainable_params};
use crate::data::{Batch, Loader, LoaderState, TokenizedExample};
use crate::error::{ModelError, Result};
use crate::llama::weights::{write_atomically, write_safetensors, WeightFile};
use crate::llama::Llama;
use crate::train::checkpoint;
use crate::train::memory::{check_training_fits, MemoryPlan, RunShape};
use crate::train::settings::{TrainSettings, Trainable};

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Optimizer steps done after this one (1 for the first step).
    pub step: usize,
    /// Mean language-model loss over the step's micro-batches (without the balance loss).
    pub loss: f32,
    /// The learning rate this step used.
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Tokens with a label (the ones the loss counts).
    pub tokens: usize,
    /// Wall-clock time of the step, in seconds: forward and backward up to the loss readback,
    /// plus recording the optimizer update (which runs on the GPU after the step returns).
    pub seconds: f64,
}

/// Mean loss over an evaluation set, overall and per category.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalStats {
    /// Mean loss per labelled token, over every category.
    pub loss: f32,
    /// Labelled tokens scored (after the shift).
    pub tokens: usize,
    /// Mean loss per labelled token of each category (`all` for examples without one).
    pub per_category: BTreeMap<String, f32>,
}

/// A step whose forwards and backwards are recorded, waiting for its one readback.
struct PendingStep {
    start: Instant,
    grads: Gradients,
    /// `[2]`: the summed micro-batch losses and the squared global gradient norm.
    readout: Tensor,
    /// Each micro-batch's ids and batch size, to find where a non-finite loss starts.
    batches: Vec<(Vec<u32>, usize)>,
    tokens: usize,
}

/// Training went numerically wrong: the step, and the first parameter with a bad gradient.
fn diverged(step: usize, what: String) -> ModelError {
    ModelError::Input(format!("training diverged at step {step}: {what}; the last checkpoint is kept, resume from it with a lower learning rate"))
}

/// The state of a run: model, optimizer, data position.
///
/// ```no_run
/// use hydralora_model::adapter::attach;
/// use hydralora_model::data::{tokenize, Example};
/// use hydralora_model::train::{TrainSettings, Trainer};
/// use hydralora_model::{engine::Device, AdapterConfig, HfCodec, Llama, TextCodec};
/// # fn main() -> hydralora_model::Result<()> {
/// let device = Device::new()?;
/// let mut model = Llama::load(&device, "models/TinyLlama-1.1B")?;
/// let codec = HfCodec::from_dir("models/TinyLlama-1.1B", &model.config)?;
/// attach(&mut model, &AdapterConfig::lora(8, 16.0, &["q_proj", "v_proj"]), 0)?;
/// let examples = vec![Example {
///     prompt: "2 + 2 =".into(),
///     response: " 4".into(),
///     ..Example::default()
/// }];
/// let (tokens, _) = tokenize(&examples, &codec, 64)?;
/// let settings = TrainSettings { micro_batch: 1, total_steps: 10, ..TrainSettings::default() };
/// let mut trainer = Trainer::new(model, tokens, codec.pad_id(), settings)?;
/// let stats = trainer.step()?;
/// println!("step {}: loss {:.4}", stats.step, stats.loss);
/// # Ok(()) }
/// ```
pub struct Trainer {
    /// The model being trained.
    pub model: Llama,
    /// The run's settings.
    pub settings: TrainSettings,
    params: Vec<(String, Tensor)>, // trainable tensors with stable names, in model order
    optimizer: AdamW,
    loader: Loader,
    step: usize,
    balance_coef: f32,
    memory: MemoryPlan,
}

impl Trainer {
    /// A new run on `examples`. For `Trainable::Adapter` the model must carry an adapter.
    /// `pad_id` pads short sequences (their labels are -100, so its value never matters).
    /// Errors: invalid settings ([`TrainSettings::validate`]), no examples, no adapter, or a
    /// micro-batch of the longest example that would not fit the device
    /// ([`Llama::check_batch_fits`]), or a run over the device's memory budget even with
    /// activation checkpointing, which is turned on when asked in the settings or when only
    /// it fits ([`Trainer::memory_plan`] says which and why).
    pub fn new(
        model: Llama,
        examples: Vec<TokenizedExample>,
        pad_id: u32,
        settings: TrainSettings,
    ) -> Result<Trainer> {
        let loader = Loader::new(examples, settings.micro_batch, pad_id, settings.seed)?;
        Self::build(model, loader, settings)
    }

    fn build(mut model: Llama, loader: Loader, settings: TrainSettings) -> Result<Trainer> {
        settings.validate()?;
        let longest = loader
            .examples()
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(1);
        model.check_batch_fits(settings.micro_batch, longest)?;
        let params = match settings.trainable {
            Trainable::Adapter => {
                let cfg = model.adapter.clone().ok_or_else(|| {
                    ModelError::Input(
                        "adapter training needs an adapter attached to the model".into(),
                    )
                })?;
                if cfg.balance_coef > 0.0 {
                    record_gates(&mut model, true);
                }
                trainable_params(&model)
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| (format!("adapter.{i}"), t))
                    .collect()
            }
            Trainable::Full => model.make_trainable()?,
        };
        // Refused before any step when the device's memory budget cannot hold the run;
        // checkpointed when asked or when only that fits.
        let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
        let run = RunShape {
            micro_batch: settings.micro_batch,
            seq: longest,
            grad_accum: settings.grad_accum,
        };
        let budget = model.device().memory_budget();
        let memory = check_training_fits(
            &model,
            &tensors,
            run,
            budget,
            settings.checkpoint_activations,
        )?;
        model.checkpoint_activations = memory.checkpoint_activations;
        let balance_coef = model.adapter.as_ref().map_or(0.0, |a| a.balance_coef);
        let optimizer = AdamW::new(settings.adamw());
        Ok(Trainer {
            model,
            settings,
            params,
            optimizer,
            loader,
            step: 0,
            balance_coef,
            memory,
        })
    }

    /// The run's memory estimate, and whether activation checkpointing is on and why
    /// (decided when the trainer was made).
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.memory
    }

    /// Optimizer steps done.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// The trainable tensors, in model order (what [`Trainer::step`] updates).
    pub fn params(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Where the data loader stands (epoch, position).
    pub fn loader_state(&self) -> LoaderState {
        self.loader.state()
    }

    /// One optimizer step over `grad_accum` micro-batches: forward, the causal-LM loss (plus
    /// the load-balancing loss when on), backward, gradient clipping to `max_grad_norm`, and
    /// AdamW at the schedule's learning rate. A non-finite loss or gradient norm is an error
    /// naming the step and where the bad values first appear. A step that fails changes
    /// nothing: the optimizer has not run, and the data loader is back where it was.
    pub fn step(&mut self) -> Result<StepStats> {
        self.step_unless(&|| false)
    }

    /// [`Trainer::step`], abandoned when `cancelled()` is true before a micro-batch or
    /// before the optimizer update: it then returns [`ModelError::Cancelled`] and the run is
    /// exactly as before the call (same weights, moments, step count and data position), so
    /// the next step is the one the cancelled step would have been.
    pub fn step_unless(&mut self, cancelled: &dyn Fn() -> bool) -> Result<StepStats> {
        let before = self.loader.state();
        let result = self.try_step(cancelled);
        if result.is_err() {
            self.loader.rewind(&before);
        }
        result
    }

    fn try_step(&mut self, cancelled: &dyn Fn() -> bool) -> Result<StepStats> {
        let pending = self.record_step(cancelled)?;
        let both = pending.readout.to_vec_f32()?;
        self.finish_step(pending, &both, cancelled)
    }

    /// [`Trainer::step`] for async callers, and the one a browser can run: the step's single
    /// readback (the loss and the gradient norm) is awaited, not waited for. A step that fails
    /// changes nothing, as with [`Trainer::step`].
    pub async fn step_async(&mut self) -> Result<StepStats> {
        let before = self.loader.state();
        let never = || false;
        let result = match self.record_step(&never) {
            Ok(pending) => match pending.readout.to_vec_f32_async().await {
                Ok(both) => self.finish_step(pending, &both, &never),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.loader.rewind(&before);
        }
        result
    }

    /// Records the step's forwards and backwards (nothing read back yet).
    fn record_step(&mut self, cancelled: &dyn Fn() -> bool) -> Result<PendingStep> {
        let start = Instant::now();
        let accum = self.settings.grad_accum;
        let mut summed: Option<Gradients> = None;
        let mut loss_sum: Option<Tensor> = None; // [1]
        let mut tokens = 0;
        let mut batches = Vec::with_capacity(accum);
        let stop = |step| Err(ModelError::Cancelled { step });
        for micro in 0..accum {
            if cancelled() {
                return stop(self.step);
            }
            crate::adapter::set_dropout_seed(
                &self.model,
                self.settings.seed
                    ^ ((self.step * accum + micro) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
            );
            let batch = self.loader.next_batch();
            tokens += counted_tokens(&batch);
            batches.push((batch.ids.clone(), batch.batch));
            let lm_loss = self.model.loss(&batch.ids, batch.batch, &batch.labels)?;
            // The balance loss reads the gates recorded in this forward (only when it is on).
            let aux = if self.balance_coef > 0.0 {
                balance_loss(&self.model, self.balance_coef)?
            } else {
                None
            };
            let objective = match aux {
                Some(aux) => lm_loss.add(&aux)?,
                None => lm_loss.clone(),
            };
            // Scaling each micro-batch by 1/accum makes the summed gradient the mean's.
            let grads = objective.scale(1.0 / accum as f32)?.backward()?;
            summed = Some(match summed {
                None => grads,
                Some(acc) => add_gradients(acc, grads, &self.params)?,
            });
            let lm = lm_loss.detach();
            loss_sum = Some(match loss_sum {
                None => lm,
                Some(s) => no_grad(|| s.add(&lm))?,
            });
        }
        let grads = summed.expect("grad_accum >= 1");
        let sq_norm = self.squared_grad_norm(&grads)?;
        let readout =
            no_grad(|| Tensor::concat(&[loss_sum.expect("grad_accum >= 1"), sq_norm], 0))?;
        Ok(PendingStep {
            start,
            grads,
            readout,
            batches,
            tokens,
        })
    }

    /// The rest of a step once its readout (`[loss sum, squared gradient norm]`) is on the
    /// host: the divergence checks, clipping and the optimizer update.
    fn finish_step(
        &mut self,
        pending: PendingStep,
        both: &[f32],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<StepStats> {
        let PendingStep {
            start,
            mut grads,
            batches,
            tokens,
            ..
        } = pending;
        let accum = self.settings.grad_accum;
        let stop = |step| Err(ModelError::Cancelled { step });
        let (loss, grad_norm) = (both[0] / accum as f32, both[1].sqrt());
        let next = self.step + 1;
        if !loss.is_finite() {
            let mut place = None;
            // (The search reads back blocking, which a browser cannot.)
            let searchable = if cfg!(target_arch = "wasm32") {
                &batches[..0]
            } else {
                &batches[..]
            };
            for (ids, b) in searchable {
                place = self.model.first_nonfinite(ids, *b)?;
                if place.is_some() {
                    break;
                }
            }
            let place = place.map_or(String::new(), |p| {
                format!(" (first non-finite values: {p})")
            });
            return Err(diverged(next, format!("the loss is {loss}{place}")));
        }
        if !grad_norm.is_finite() {
            return Err(diverged(
                next,
                format!(
                    "the gradient norm is {grad_norm} (first bad gradient: {})",
                    self.first_bad_gradient(&grads)?
                ),
            ));
        }
        if let Some(max) = self.settings.max_grad_norm {
            if grad_norm > max {
                grads = scale_gradients(grads, &self.params, max / (grad_norm + 1e-6))?;
            }
        }
        if cancelled() {
            return stop(self.step);
        }
        let lr = self.settings.schedule().at(self.step);
        self.optimizer.step_with_lr(&self.params(), &grads, lr)?;
        self.step = next;
        Ok(StepStats {
            step: next,
            loss,
            lr,
            grad_norm,
            tokens,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// sum over parameters of |g|^2, as a [1] tensor (not read back).
    fn squared_grad_norm(&self, grads: &Gradients) -> Result<Tensor> {
        no_grad(|| {
            let mut total: Option<Tensor> = None;
            for (_, p) in &self.params {
                if let Some(g) = grads.get(p) {
                    let sq = g.mul(g)?.sum_all()?;
                    total = Some(match total {
                        Some(t) => t.add(&sq)?,
                        None => sq,
                    });
                }
            }
            Ok(match total {
                Some(t) => t,
                None => Tensor::zeros(self.model.device(), &[1])?,
            })
        })
    }

    /// The name of the first parameter whose gradient holds a NaN or infinity.
    fn first_bad_gradient(&self, grads: &Gradients) -> Result<String> {
        if cfg!(target_arch = "wasm32") {
            return Ok("not searched in a browser".into());
        }
        for (name, p) in &self.params {
            if let Some(g) = grads.get(p) {
                if g.to_vec_f32()?.iter().any(|x| !x.is_finite()) {
                    return Ok(self.param_label(name));
                }
            }
        }
        Ok("none found".into())
    }

    /// A parameter's readable name: the adapter file key or the model weight name.
    fn param_label(&self, name: &str) -> String {
        if let Some(i) = name
            .strip_prefix("adapter.")
            .and_then(|i| i.parse::<usize>().ok())
        {
            let p = &self.params[i].1;
            if let Some(t) = crate::adapter::adapter_tensors(&self.model)
                .into_iter()
                .find(|t| t.param.id() == p.id())
            {
                return t.key.split(".lora_B").next().unwrap_or(&t.key).to_string();
            }
        }
        name.to_string()
    }

    /// Mean token loss over `examples` (no gradients), overall and per category.
    pub fn evaluate(&self, examples: &[TokenizedExample]) -> Result<EvalStats> {
        evaluate(&self.model, examples, self.settings.micro_batch)
    }

    /// Writes the run's state into `dir` (replaced atomically as a whole).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        checkpoint::replace_dir(dir, |tmp| {
            match self.settings.trainable {
                Trainable::Adapter => save_adapter(&self.model, tmp)?,
                Trainable::Full => self.model.save(tmp)?,
            }
            self.save_optimizer(&tmp.join(checkpoint::OPTIMIZER_FILE))?;
            let state = checkpoint::TrainerState {
                step: self.step,
                optimizer_steps: self.optimizer.steps(),
                loader: self.loader.state(),
                settings: self.settings.clone(),
            };
            let json = serde_json::to_string_pretty(&state).expect("the state serialises");
            write_atomically(tmp.join(checkpoint::STATE_FILE), |out| {
                std::io::Write::write_all(out, json.as_bytes())
            })
        })
    }

    fn save_optimizer(&self, path: &Path) -> Result<()> {
        let mut host = Vec::new();
        for (name, p) in &self.params {
            if let Some((m, v)) = self.optimizer.moments(p) {
                host.push((
                    format!("{name}.exp_avg"),
                    p.shape().to_vec(),
                    m.to_vec_f32()?,
                ));
                host.push((
                    format!("{name}.exp_avg_sq"),
                    p.shape().to_vec(),
                    v.to_vec_f32()?,
                ));
            }
        }
        let views: Vec<(String, Vec<usize>, &[f32])> = host
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
            .collect();
        write_safetensors(path, &views, &[("format", "hydralora-optimizer")])
    }

    /// Continues a run from a checkpoint folder written by [`Trainer::save_checkpoint`]:
    /// the model must be the same base (with the adapter attached for adapter runs; its
    /// weights are replaced by the checkpoint's).
    pub fn resume(
        mut model: Llama,
        examples: Vec<TokenizedExample>,
        pad_id: u32,
        dir: &Path,
    ) -> Result<Trainer> {
        let dir = checkpoint::readable_dir(dir)?;
        let state = checkpoint::read_state(&dir)?;
        match state.settings.trainable {
            Trainable::Adapter => {
                load_adapter(&mut model, &dir)?;
            }
            Trainable::Full => model.load_weights_from(&dir)?,
        }
        let loader = Loader::restore(examples, state.settings.micro_batch, pad_id, &state.loader)?;
        let mut trainer = Trainer::build(model, loader, state.settings.clone())?;
        trainer.step = state.step;
        let file = WeightFile::open(dir.join(checkpoint::OPTIMIZER_FILE))?;
        let mut moments = Vec::new();
        // A checkpoint saved before the first update has no moments yet.
        let saved_moments = if state.optimizer_steps > 0 {
            &trainer.params[..]
        } else {
            &[]
        };
        for (name, p) in saved_moments {
            let m = file.expect_f32(&format!("{name}.exp_avg"), p.shape())?;
            let v = file.expect_f32(&format!("{name}.exp_avg_sq"), p.shape())?;
            moments.push((
                p,
                Tensor::from_slice(p.device(), &m, p.shape())?,
                Tensor::from_slice(p.device(), &v, p.shape())?,
            ));
        }
        trainer.optimizer.restore(state.optimizer_steps, moments);
        Ok(trainer)
    }
}

/// Mean token loss of `model` over `examples`, batched, overall and per category.
pub fn evaluate(
    model: &Llama,
    examples: &[TokenizedExample],
    batch_size: usize,
) -> Result<EvalStats> {
    let mut by_category: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let (mut total, mut tokens) = (0.0f64, 0usize);
    no_grad(|| -> Result<()> {
        for chunk in examples.chunks(batch_size.max(1)) {
            for ex in chunk {
                // One sequence at a time keeps per-category sums exact and padding out.
                let n = ex
                    .labels
                    .iter()
                    .skip(1)
                    .filter(|&&l| l != hydralora_engine::IGNORE_INDEX)
                    .count();
                if n == 0 {
                    continue;
                }
                let loss = model.loss(&ex.ids, 1, &ex.labels)?.to_scalar()? as f64;
                total += loss * n as f64;
                tokens += n;
                let entry = by_category
                    .entry(ex.category.clone().unwrap_or_else(|| "all".into()))
                    .or_default();
                entry.0 += loss * n as f64;
                entry.1 += n;
            }
        }
        Ok(())
    })?;
    let per_category = by_category
        .into_iter()
        .map(|(c, (sum, n))| (c, (sum / n.max(1) as f64) as f32))
        .collect();
    Ok(EvalStats {
        loss: (total / tokens.max(1) as f64) as f32,
        tokens,
        per_category,
    })
}

/// Labels the loss counts (after the shift: every label but each sequence's first).
fn counted_tokens(batch: &Batch) -> usize {
    batch
        .labels
        .chunks(batch.seq.max(1))
        .map(|row| {
            row.iter()
                .skip(1)
                .filter(|&&l| l != hydralora_engine::IGNORE_INDEX)
                .count()
        })
        .sum()
}

fn add_gradients(
    mut acc: Gradients,
    more: Gradients,
    params: &[(String, Tensor)],
) -> Result<Gradients> {
    no_grad(|| {
        for (_, p) in params {
            if let Some(g) = more.get(p) {
                let sum = match acc.remove(p) {
                    Some(a) => a.add(g)?,
                    None => g.clone(),
                };
                acc.insert(p, sum);
            }
        }
        Ok(acc)
    })
}

fn scale_gradients(
    mut grads: Gradients,
    params: &[(String, Tensor)],
    factor: f32,
) -> Result<Gradients> {
    no_grad(|| {
        for (_, p) in params {
            if let Some(g) = grads.remove(p) {
                grads.insert(p, g.scale(factor)?);
            }
        }
        Ok(grads)
    })
}
