//! Benchmarks of whole-model work on random weights: forward tokens/s and the training step
//! (forward, backward, AdamW) with FLOPs, achieved GFLOP/s, pool memory and pipeline counts.
//! The configs are Hugging Face `config.json` files (e.g. `../shared/bench/bench-s.json`)
//! whose `bench` object gives batch, sequence length, adapter and optimizer settings.

use std::path::Path;
use web_time::Instant;

use hydralora_engine::{no_grad, rng::Rng, AdamW, AdamWConfig, DType, Device, Tensor};
use serde::Serialize;
use serde_json::Value;

use crate::adapter::{attach, trainable_count, trainable_params, AdapterConfig};
use crate::error::{ModelError, Result};
use crate::llama::config::LlamaConfig;
use crate::llama::weights::StoredTensor;
use crate::llama::Llama;

/// What to train in a step benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchMethod {
    /// The config's `bench.lora` adapter.
    Lora,
    /// The config's `bench.hydra` adapter.
    Hydra,
    /// Every weight (full-parameter training, no adapter).
    Full,
}

/// A benchmark config: the model plus its `bench` block.
pub struct BenchConfig {
    /// The model's architecture (the file's `config.json` fields).
    pub model: LlamaConfig,
    /// `bench.batch`: sequences per step.
    pub batch: usize,
    /// `bench.seq`: tokens per sequence.
    pub seq: usize,
    /// `bench.seed` (default 0): seeds the weights, the token ids and the adapter.
    pub seed: u64,
    /// `bench.lora` (`r` 8, `alpha` 16 and no targets unless given).
    pub lora: AdapterConfig,
    /// `bench.hydra` (`r` 8, `alpha` 16, `experts` 4 and no targets unless given).
    pub hydra: AdapterConfig,
    /// `bench.adamw` (`lr` 2e-4, `betas` [0.9, 0.999], `eps` 1e-8, `weight_decay` 0 unless given).
    pub adamw: AdamWConfig,
    /// The frozen layer weights' format ([`crate::llama::weight_storage`]): f32 unless
    /// `bench step --weights` says otherwise; not read from the file. Adapter methods only
    /// for anything but f32.
    pub weights: DType,
    /// Checkpoint the decoder layers ([`Llama::checkpoint_activations`]); not read from the
    /// file (false), set by `bench step --checkpoint-activations`.
    pub checkpoint_activations: bool,
    /// The frozen products' precision ([`crate::Precision`]); not read from the file (f32),
    /// set by `bench step --precision`.
    pub precision: crate::Precision,
}

impl BenchConfig {
    /// Reads a benchmark config file; `bench.batch` and `bench.seq` are required, errors name
    /// the file and the field.
    pub fn from_file(path: &Path) -> Result<BenchConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io("read", path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::json(path, &e))?;
        let model = LlamaConfig::from_json_value(&v, Some(path))?;
        model.validate()?;
        let b = v.get("bench").cloned().unwrap_or(Value::Null);
        let field = |name: &str| ModelError::Config {
            file: Some(path.to_path_buf()),
            field: format!("bench.{name}"),
            why: "missing or of the wrong type".into(),
        };
        let num = |o: &Value, k: &str| o.get(k).and_then(Value::as_f64).ok_or_else(|| field(k));
        let targets = |o: &Value| -> Vec<String> {
            o.get("targets")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let lora_v = b.get("lora").cloned().unwrap_or(Value::Null);
        let hydra_v = b.get("hydra").cloned().unwrap_or(Value::Null);
        let adamw_v = b.get("adamw").cloned().unwrap_or(Value::Null);
        let mut lora = AdapterConfig::lora(
            num(&lora_v, "r").unwrap_or(8.0) as usize,
            num(&lora_v, "alpha").unwrap_or(16.0) as f32,
            &[],
        );
        lora.targets = targets(&lora_v);
        let mut hydra = AdapterConfig::hydra(
            num(&hydra_v, "r").unwrap_or(8.0) as usize,
            num(&hydra_v, "alpha").unwrap_or(16.0) as f32,
            num(&hydra_v, "experts").unwrap_or(4.0) as usize,
            &[],
        );
        hydra.targets = targets(&hydra_v);
        let betas: Vec<f64> = adamw_v
            .get("betas")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_else(|| vec![0.9, 0.999]);
        Ok(BenchConfig {
            model,
            batch: num(&b, "batch")? as usize,
            seq: num(&b, "seq")? as usize,
            seed: num(&b, "seed").unwrap_or(0.0) as u64,
            lora,
            hydra,
            adamw: AdamWConfig {
                lr: num(&adamw_v, "lr").unwrap_or(2e-4) as f32,
                beta1: betas.first().copied().unwrap_or(0.9) as f32,
                beta2: betas.get(1).copied().unwrap_or(0.999) as f32,
                eps: num(&adamw_v, "eps").unwrap_or(1e-8) as f32,
                weight_decay: num(&adamw_v, "weight_decay").unwrap_or(0.0) as f32,
            },
            weights: DType::F32,
            checkpoint_activations: false,
            precision: crate::Precision::F32,
        })
    }
}

/// A model with random weights (normal, std 0.02; norms 1), seeded.
pub fn random_model(device: &Device, config: &LlamaConfig, seed: u64) -> Result<Llama> {
    random_model_as(device, config, seed, DType::F32)
}

/// [`random_model`] with its frozen weights stored as `weights` (quantized on the host as
/// each tensor is drawn: an 8B model's f32 weights never exist on the device).
pub fn random_model_as(
    device: &Device,
    config: &LlamaConfig,
    seed: u64,
    weights: DType,
) -> Result<Llama> {
    let mut rng = Rng::new(seed);
    Llama::from_stored(device, config.clone(), weights, |name, shape| {
        let n: usize = shape.iter().product();
        Ok(StoredTensor::f32(&if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            (0..n)
                .map(|_| 0.02 * rng.next_normal())
                .collect::<Vec<f32>>()
        }))
    })
}

/// Matmul FLOPs of one forward over `tokens` tokens in sequences of `seq`: 2 T (linear
/// weights + lm_head) + 4 B H T^2 hd for the attention scores and their use (full square,
/// as the kernels compute it).
pub fn forward_flops(c: &LlamaConfig, batch: usize, seq: usize) -> f64 {
    let t = (batch * seq) as f64;
    let (h, i, v) = (
        c.hidden_size as f64,
        c.intermediate_size as f64,
        c.vocab_size as f64,
    );
    let (q, kv) = (c.q_dim() as f64, c.kv_dim() as f64);
    let linear = c.num_hidden_layers as f64 * (h * q + 2.0 * h * kv + q * h + 3.0 * h * i);
    let attention = c.num_hidden_layers as f64
        * 4.0
        * batch as f64
        * c.num_attention_heads as f64
        * (seq * seq) as f64
        * c.head_dim() as f64;
    2.0 * t * (linear + h * v) + attention
}

/// What [`bench_step`] measured (serialised as the benchmark's JSON output).
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// `lora`, `hydra` or `full`.
    pub method: String,
    /// The adapted modules (empty for `full`).
    pub targets: Vec<String>,
    /// batch * seq.
    pub tokens_per_step: usize,
    /// Trainable scalars.
    pub trainable_params: usize,
    /// Median step time over the timed steps, in seconds (forward, backward, AdamW, waited for).
    pub median_s: f64,
    /// Fastest timed step, in seconds.
    pub min_s: f64,
    /// Steps timed after the warm-up. 0 when only the warm-up ran (a memory measurement of a
    /// model too big to step twice on a slow device): the times are then the warm-up's, which
    /// include compiling every pipeline.
    pub timed_steps: usize,
    /// tokens_per_step / median_s.
    pub tokens_per_s: f64,
    /// Matmul FLOPs counted for one step (see `flops_formula`).
    pub flops_per_step: f64,
    /// How `flops_per_step` was counted, in words.
    pub flops_formula: String,
    /// flops_per_step / median_s, in GFLOP/s.
    pub gflops: f64,
    /// Peak bytes held by live tensors during the first step.
    pub peak_pool_bytes_first_step: u64,
    /// Peak bytes held by live tensors during the last step.
    pub peak_pool_bytes_last_step: u64,
    /// The up-front estimate of the peak ([`crate::train::memory::estimate_training`]).
    pub estimated_peak_bytes: u64,
    /// Whether the decoder layers were checkpointed (recomputed in backward).
    pub checkpoint_activations: bool,
    /// Pipelines compiled in every step after the first, summed (0 when shapes repeat).
    pub pipelines_after_first_step: usize,
    /// Command batches submitted per timed step, on average.
    pub submits_per_step: f64,
    /// Kernel dispatches per timed step, on average.
    pub dispatches_per_step: f64,
    /// The GPU's name (the engine's `DeviceInfo::name`).
    pub device: String,
    /// A dry run ([`Device::set_dry_run`]): no kernel ran, so the pool peaks and the
    /// dispatch count are a real step's and the times are not.
    pub dry_run: bool,
    /// With `profile`: GPU time per kernel entry point over one extra step, most first.
    pub profile: Vec<KernelTime>,
}

/// GPU time of one kernel entry point over a profiled step.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTime {
    /// The WGSL entry point.
    pub kernel: String,
    /// Dispatches of it.
    pub calls: u64,
    /// Their total GPU time, in seconds.
    pub seconds: f64,
}

/// One benchmark run's model, optimizer and batch, ready to step.
struct StepRunner {
    model: Llama,
    params: Vec<Tensor>,
    opt: AdamW,
    ids: Vec<u32>,
    labels: Vec<i32>,
    method: BenchMethod,
}

/// What one step took and left behind.
struct StepSample {
    seconds: f64,
    peak_bytes: u64,
    pipelines: usize,
    submits: u64,
    dispatches: u64,
}

impl StepRunner {
    /// The config's model with `method` set up (`targets` overriding the config's).
    fn new(
        device: &Device,
        cfg: &BenchConfig,
        method: BenchMethod,
        targets: Option<Vec<String>>,
    ) -> Result<StepRunner> {
        let mut model = random_model_as(device, &cfg.model, cfg.seed, cfg.weights)?;
        model.checkpoint_activations = cfg.checkpoint_activations;
        model.set_precision(cfg.precision);
        let adapter = match method {
            BenchMethod::Lora => Some(cfg.lora.clone()),
            BenchMethod::Hydra => Some(cfg.hydra.clone()),
            BenchMethod::Full => None,
        };
        let params: Vec<Tensor> = match adapter {
            Some(mut a) => {
                if let Some(t) = targets {
                    a.targets = t;
                }
                attach(&mut model, &a, cfg.seed)?;
                trainable_params(&model)
            }
            None => model
                .make_trainable()?
                .into_iter()
                .map(|(_, t)| t)
                .collect(),
        };
        let mut rng = Rng::new(cfg.seed);
        let ids: Vec<u32> = (0..cfg.batch * cfg.seq)
            .map(|_| rng.below(cfg.model.vocab_size as u64) as u32)
            .collect();
        let labels = ids.iter().map(|&i| i as i32).collect();
        Ok(StepRunner {
            model,
            params,
            opt: AdamW::new(cfg.adamw),
            ids,
            labels,
            method,
        })
    }

    /// One training step (forward, backward, AdamW), waited for, with the loss its only
    /// readback.
    fn step(&mut self, batch: usize) -> Result<StepSample> {
        let device = self.model.device().clone();
        device.synchronize()?;
        device.reset_peak();
        let (pipelines0, submits0, dispatches0) = (
            device.pipelines_created(),
            device.submits(),
            device.dispatches(),
        );
        let start = Instant::now();
        let loss = self.model.loss(&self.ids, batch, &self.labels)?;
        let grads = loss.backward()?;
        self.opt.step(&self.params, &grads)?;
        let value = loss.to_scalar()?;
        device.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        if !value.is_finite() {
            return Err(ModelError::Input(format!("the benchmark loss is {value}")));
        }
        drop(grads);
        Ok(StepSample {
            seconds,
            peak_bytes: device.pool_stats().peak_in_use,
            pipelines: device.pipelines_created() - pipelines0,
            submits: device.submits() - submits0,
            dispatches: device.dispatches() - dispatches0,
        })
    }

    /// GPU time per kernel over one more step (empty without timestamp queries).
    fn profile(&mut self, batch: usize) -> Result<Vec<KernelTime>> {
        let device = self.model.device().clone();
        device.set_profiling(true);
        let step = self.step(batch);
        let kernels = device
            .take_profile()
            .into_iter()
            .map(|(k, calls, seconds)| KernelTime {
                kernel: k.to_string(),
                calls,
                seconds,
            })
            .collect();
        device.set_profiling(false);
        step.map(|_| kernels)
    }

    /// The report of `samples` (the first one the untimed warm-up).
    fn report(
        &self,
        cfg: &BenchConfig,
        samples: &[StepSample],
        warmup: usize,
        profile: Vec<KernelTime>,
    ) -> StepReport {
        let device = self.model.device();
        let timed = match &samples[warmup..] {
            [] => samples,
            timed => timed,
        };
        let mut times: Vec<f64> = timed.iter().map(|s| s.seconds).collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let (b, t) = (cfg.batch, cfg.seq);
        let fwd = forward_flops(&cfg.model, b, t);
        let (factor, formula) = match self.method {
            BenchMethod::Full => (3.0, "3 x forward (forward, input grads, weight grads)"),
            _ => (
                2.0,
                "2 x forward (forward, input grads; adapter FLOPs not counted)",
            ),
        };
        let flops = factor * fwd;
        let run = crate::train::memory::RunShape {
            micro_batch: b,
            seq: t,
            grad_accum: 1,
        };
        let per_step = |f: fn(&StepSample) -> u64| {
            timed.iter().map(f).sum::<u64>() as f64 / timed.len() as f64
        };
        StepReport {
            method: format!("{:?}", self.method).to_lowercase(),
            targets: self
                .model
                .adapter
                .as_ref()
                .map(|a| a.targets.clone())
                .unwrap_or_default(),
            tokens_per_step: b * t,
            trainable_params: match self.method {
                BenchMethod::Full => self.params.iter().map(Tensor::numel).sum(),
                _ => trainable_count(&self.model),
            },
            median_s: median,
            min_s: times[0],
            timed_steps: samples.len() - warmup,
            tokens_per_s: (b * t) as f64 / median,
            flops_per_step: flops,
            flops_formula: format!("{formula}; forward = 2 T (linear + lm_head params) + 4 B H T^2 hd per layer = {:.3} GFLOP", fwd / 1e9),
            gflops: flops / median / 1e9,
            peak_pool_bytes_first_step: samples[0].peak_bytes,
            peak_pool_bytes_last_step: samples[samples.len() - 1].peak_bytes,
            estimated_peak_bytes: crate::train::memory::estimate_training(&self.model, &self.params, run)
                .total(),
            checkpoint_activations: self.model.checkpoint_activations,
            pipelines_after_first_step: samples[1..].iter().map(|s| s.pipelines).sum(),
            submits_per_step: per_step(|s| s.submits),
            dispatches_per_step: per_step(|s| s.dispatches),
            device: device.info().name.clone(),
            dry_run: device.dry_run(),
            profile,
        }
    }
}

/// Times `steps` training steps after `warmup` steps; `targets` overrides the config's.
/// `steps` 0 runs the warm-up alone (its peak is the memory measurement; its time includes
/// compiling the pipelines). With `profile`, one more step runs with every dispatch timed
/// (needs `TIMESTAMP_QUERY`).
pub fn bench_step(
    device: &Device,
    cfg: &BenchConfig,
    method: BenchMethod,
    targets: Option<Vec<String>>,
    warmup: usize,
    steps: usize,
    profile: bool,
) -> Result<StepReport> {
    let mut runner = StepRunner::new(device, cfg, method, targets)?;
    let warmup = warmup.max(1);
    let samples = (0..warmup + steps)
        .map(|_| runner.step(cfg.batch))
        .collect::<Result<Vec<_>>>()?;
    let kernels = match profile {
        true => runner.profile(cfg.batch)?,
        false => Vec::new(),
    };
    Ok(runner.report(cfg, &samples, warmup, kernels))
}

/// Two methods on the same targets, their steps alternating in one process so that both
/// see the same machine (a shared, noisy one included): each one's report, and the
/// median over step pairs of `a`'s time over `b`'s. Both models share the device's pool, so
/// each report's pool peaks count the other model's tensors too.
#[derive(Clone, Debug, Serialize)]
pub struct PairReport {
    /// The first method's steps.
    pub a: StepReport,
    /// The second method's steps, each run right after one of `a`'s.
    pub b: StepReport,
    /// Median over the timed pairs of a's step time / b's.
    pub median_ratio: f64,
    /// a's median step time / b's.
    pub ratio_of_medians: f64,
}

/// [`bench_step`] for two methods at once, alternating a step of `a` and a step of `b`
/// (both on `targets`, or each on its config's when `None`).
pub fn bench_step_pair(
    device: &Device,
    cfg: &BenchConfig,
    (a, b): (BenchMethod, BenchMethod),
    targets: Option<Vec<String>>,
    warmup: usize,
    steps: usize,
) -> Result<PairReport> {
    let mut runners = [
        StepRunner::new(device, cfg, a, targets.clone())?,
        StepRunner::new(device, cfg, b, targets)?,
    ];
    let warmup = warmup.max(1);
    let mut samples: [Vec<StepSample>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..warmup + steps.max(1) {
        for (runner, out) in runners.iter_mut().zip(&mut samples) {
            out.push(runner.step(cfg.batch)?);
        }
    }
    let mut ratios: Vec<f64> = samples[0][warmup..]
        .iter()
        .zip(&samples[1][warmup..])
        .map(|(x, y)| x.seconds / y.seconds)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let ra = runners[0].report(cfg, &samples[0], warmup, Vec::new());
    let rb = runners[1].report(cfg, &samples[1], warmup, Vec::new());
    Ok(PairReport {
        median_ratio: ratios[ratios.len() / 2],
        ratio_of_medians: ra.median_s / rb.median_s,
        a: ra,
        b: rb,
    })
}

/// What [`bench_forward`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct ForwardReport {
    /// Tokens per forward (batch * seq).
    pub tokens: usize,
    /// Median forward time, in seconds (waited for).
    pub median_s: f64,
    /// tokens / median_s.
    pub tokens_per_s: f64,
    /// [`forward_flops`] / median_s, in GFLOP/s.
    pub gflops: f64,
    /// The GPU's name (the engine's `DeviceInfo::name`).
    pub device: String,
}

/// Times an inference forward (no_grad) over the config's batch.
pub fn bench_forward(
    device: &Device,
    cfg: &BenchConfig,
    warmup: usize,
    runs: usize,
) -> Result<ForwardReport> {
    let model = random_model(device, &cfg.model, cfg.seed)?;
    let (b, t) = (cfg.batch, cfg.seq);
    let mut rng = Rng::new(cfg.seed);
    let ids: Vec<u32> = (0..b * t)
        .map(|_| rng.below(cfg.model.vocab_size as u64) as u32)
        .collect();
    let mut times = Vec::new();
    for r in 0..warmup.max(1) + runs {
        device.synchronize()?;
        let start = Instant::now();
        let logits = no_grad(|| model.forward(&ids, b, None))?;
        device.synchronize()?;
        drop(logits);
        if r >= warmup.max(1) {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(ForwardReport {
        tokens: b * t,
        median_s: median,
        tokens_per_s: (b * t) as f64 / median,
        gflops: forward_flops(&cfg.model, b, t) / median / 1e9,
        device: device.info().name.clone(),
    })
}
