//! `hydralora train`: fine-tune a LoRA or HydraLoRA adapter on a Hugging Face model folder
//! and JSONL data, with progress, metrics, evaluation, checkpoints and pictures.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use hydralora::engine::{DType, Device};
use hydralora::model::adapter::{attach, save_adapter, trainable_count, AdapterConfig, Method};
use hydralora::model::data::{
    read_jsonl, split_eval, tokenize, ChatTemplate, PromptTemplate, ReadOptions, TokenizedExample,
};
use hydralora::model::llama::codec::load_codec;
use hydralora::model::report::{line_chart_svg, Series};
use hydralora::model::train::memory::parse_bytes;
use hydralora::model::train::{ScheduleKind, TrainSettings, Trainer};
use hydralora::model::{Llama, Precision, TARGET_MODULES};
use serde::Deserialize;

use super::router_svg::{is_hydra, write_router_svgs};
use super::CliResult;

/// Every setting is a flag, or a key of the same name (kebab-case) in `--config FILE.toml`;
/// a flag given on the command line wins over the file.
///
/// Example:
///   hydralora train --model ./TinyLlama-1.1B --data train.jsonl --method hydra --experts 4 \
///       --rank 8 --alpha 16 --lr 2e-4 --epochs 2 --micro-batch 4 --output runs/hydra
#[derive(Debug, Args, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(
    after_help = "Every setting can also be a key of the same name in --config FILE.toml (flags win).\n\n\
Example:\n  hydralora train --model ./TinyLlama-1.1B --data train.jsonl --method hydra --experts 4 \\\n      \
--rank 8 --alpha 16 --lr 2e-4 --epochs 2 --micro-batch 4 --output runs/hydra\n\n\
Writes <output>/adapter, checkpoint/, metrics.jsonl, loss.svg and (hydra) router.svg and\n\
router-by-layer.svg (from the eval split, else from up to 64 training examples per category).\n\
Chat lines are rendered with the model's own chat template: chat_template.jinja or\n\
tokenizer_config.json's chat_template beside the model, or a GGUF's tokenizer.chat_template;\n\
a model without one gets the built-in <|role|> format. Every assistant turn is trained on.\n\
Continue an interrupted run with the same flags plus --resume."
)]
pub struct TrainArgs {
    /// A TOML file with any of these settings (keys as the flag names, e.g. `micro-batch = 8`).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The Hugging Face model folder (config.json, *.safetensors, tokenizer.json), or a GGUF
    /// LLaMA file (model.gguf: f32, f16, bf16, q8_0, q4_0, q4_K, q6_K tensors).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// JSONL data: {"text"}, Alpaca, Dolly or chat {"messages"} lines (repeat for several files).
    #[arg(long)]
    #[serde(default)]
    pub data: Vec<PathBuf>,
    /// Where the adapter, checkpoints, metrics and pictures go [default: runs/<method>].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// `lora` (one B) or `hydra` (a shared A, several experts B and a router) [default: hydra].
    #[arg(long)]
    pub method: Option<String>,
    /// Adapter rank r [default: 8].
    #[arg(long)]
    pub rank: Option<usize>,
    /// Adapter alpha; the update is scaled by alpha / r [default: 2 r].
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Number of experts (B matrices) for hydra [default: 4].
    #[arg(long)]
    pub experts: Option<usize>,
    /// Comma-separated modules to adapt [default: all seven q,k,v,o,gate,up,down_proj].
    #[arg(long, value_delimiter = ',')]
    pub targets: Option<Vec<String>>,
    /// Dropout on the adapter's input while training (PEFT's lora_dropout) [default: 0].
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Most device memory the run may hold, e.g. 6GiB, 512MiB or bytes; a run estimated
    /// over it is refused before its first step [default: the device's memory where the
    /// driver reports it (Vulkan), else no limit].
    #[arg(long, value_name = "SIZE")]
    pub memory_budget: Option<String>,
    /// Store the frozen base weights as f32, f16, bf16, q8_0, q4_0, q4_k or q6_k (computed
    /// in f32 either way; quantized on the host as the model loads). What is stored so: every
    /// layer's seven linear weights, the token embedding and an untied lm_head (q6_k under
    /// q4_0/q4_k, as llama.cpp does); the norms, the adapters and the router stay f32
    /// [default: as the checkpoint stores them: bf16 stays bf16, f32 stays f32].
    #[arg(long, value_name = "FORMAT", value_parser = crate::cli::weights::parse_weight_format)]
    #[serde(default, deserialize_with = "weight_format")]
    pub weights: Option<DType>,
    /// The same as `--weights f16`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub f16_weights: Option<bool>,
    /// f32, or mixed: the frozen weights stored as f16 (unless `--weights` says otherwise)
    /// and the activations that feed their matmuls rounded to f16, accumulating in f32;
    /// adapters, router, norms, softmax, loss, gradients and optimizer stay f32. The layers'
    /// products run on the f16 cooperative-matrix kernel where the device has one, else as
    /// f16 rounding in front of the f32 kernels (`hydralora info` says which) [default: f32].
    #[arg(long, value_name = "PRECISION", value_parser = crate::cli::weights::parse_precision)]
    #[serde(default, deserialize_with = "precision_name")]
    pub precision: Option<Precision>,
    /// Keep only each decoder layer's input and recompute the layer in backward (less
    /// memory, about one more forward of work; the same gradients) [default: only when the
    /// memory budget needs it].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub checkpoint_activations: Option<bool>,
    /// Scale by alpha / sqrt(r) (rsLoRA).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub rslora: Option<bool>,
    /// Route each token to its k best experts only (hydra; off by default, as the paper).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Coefficient of the load-balancing loss (hydra; 0 = off, as the paper).
    #[arg(long)]
    pub balance_coef: Option<f32>,
    /// Peak learning rate [default: 2e-4].
    #[arg(long)]
    pub lr: Option<f32>,
    /// constant, linear or cosine [default: cosine].
    #[arg(long)]
    pub schedule: Option<String>,
    /// Warmup steps [default: 0].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Passes over the training data [default: 1] (ignored when --steps is given).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Optimizer steps in total (overrides --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per forward pass [default: 4].
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Longest sequence in tokens; longer examples are truncated (and counted) [default: 512].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Global gradient-norm clipping (0 = off) [default: 1.0].
    #[arg(long)]
    pub max_grad_norm: Option<f32>,
    /// AdamW decoupled weight decay [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Fraction of the data held out for evaluation [default: 0.05; 0 = none].
    #[arg(long)]
    pub eval_split: Option<f64>,
    /// Evaluate every N steps [default: 50].
    #[arg(long)]
    pub eval_interval: Option<usize>,
    /// Write a checkpoint every N steps [default: 100].
    #[arg(long)]
    pub save_interval: Option<usize>,
    /// Seed of the adapter init, shuffling and the eval split [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from <output>/checkpoint.
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,
    /// Skip malformed JSONL lines (counted and reported) instead of stopping at the first.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub skip_bad_lines: Option<bool>,
    /// A prompt template with {instruction} and {input}, for Alpaca and Dolly lines
    /// [default: Alpaca]. Chat lines use the model's own chat template (see below).
    #[arg(long)]
    pub template: Option<String>,
}

impl TrainArgs {
    /// Flags over the TOML file's values.
    fn merged(self) -> Result<TrainArgs, Box<dyn std::error::Error>> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let file: TrainArgs =
            toml::from_str(&text).map_err(|e| format!("`{}`: {e}", path.display()))?;
        macro_rules! pick {
            ($($f:ident),*) => { TrainArgs { $($f: self.$f.or(file.$f),)* data: if self.data.is_empty() { file.data } else { self.data }, config: self.config, resume: self.resume } };
        }
        Ok(pick!(
            model,
            output,
            method,
            rank,
            alpha,
            experts,
            targets,
            dropout,
            memory_budget,
            weights,
            f16_weights,
            precision,
            checkpoint_activations,
            rslora,
            top_k,
            balance_coef,
            lr,
            schedule,
            warmup,
            epochs,
            steps,
            micro_batch,
            grad_accum,
            max_len,
            max_grad_norm,
            weight_decay,
            eval_split,
            eval_interval,
            save_interval,
            seed,
            skip_bad_lines,
            template
        ))
    }
}

pub fn run(args: TrainArgs) -> CliResult {
    let a = args.merged()?;
    let model_dir = a
        .model
        .clone()
        .ok_or("--model is required (a Hugging Face model folder or a .gguf file)")?;
    if a.data.is_empty() {
        return Err("--data is required (one or more JSONL files)".into());
    }
    let method = match a.method.as_deref().unwrap_or("hydra") {
        "lora" => Method::Lora,
        "hydra" => Method::Hydra,
        other => return Err(format!("--method must be lora or hydra, not `{other}`").into()),
    };
    let output = a.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "runs/{}",
            if method == Method::Lora {
                "lora"
            } else {
                "hydra"
            }
        ))
    });
    std::fs::create_dir_all(&output)
        .map_err(|e| format!("cannot create `{}`: {e}", output.display()))?;
    let seed = a.seed.unwrap_or(0);

    let budget = a.memory_budget.as_deref().map(parse_bytes).transpose();
    let budget = budget.map_err(|e| format!("--memory-budget: {e}"))?;
    let device = Device::new()?;
    eprintln!("device: {} ({})", device.info().name, device.info().backend);
    if budget.is_some() {
        device.set_memory_budget(budget);
    }
    let precision = a.precision.unwrap_or_default();
    let weights = match (a.f16_weights, a.weights, precision) {
        (Some(true), _, _) => Some(DType::F16),
        (_, None, Precision::Mixed) => Some(DType::F16),
        (_, weights, _) => weights,
    };
    let mut model = Llama::load_as(&device, &model_dir, weights)?;
    model.set_precision(precision);
    if precision == Precision::Mixed {
        eprintln!("precision: mixed (f16 weights, f16 inputs to their products, f32 sums)");
    }
    let codec = load_codec(&model_dir, &model.config)?;
    let template = match &a.template {
        Some(t) => PromptTemplate::new(t)?,
        None => PromptTemplate::alpaca(),
    };
    let chat_template = ChatTemplate::from_model(&model_dir)?;
    let (examples, read_report) = read_jsonl(
        &a.data,
        &ReadOptions {
            skip_bad_lines: a.skip_bad_lines.unwrap_or(false),
            template,
            chat_template: chat_template.clone(),
        },
    )?;
    eprintln!("data: {read_report}");
    if read_report.formats.chat > 0 {
        eprintln!("chat lines: {}", chat_format(chat_template.as_ref()));
    }
    let (train, eval) = match a.eval_split.unwrap_or(0.05) {
        f if f > 0.0 && examples.len() >= 2 => split_eval(examples, f, seed)?,
        _ => (examples, Vec::new()),
    };
    let max_len = a
        .max_len
        .unwrap_or(512)
        .min(model.config.max_position_embeddings);
    let (train_tokens, report) = tokenize(&train, codec.as_ref(), max_len)?;
    eprintln!("train: {report}");
    let eval_tokens = if eval.is_empty() {
        Vec::new()
    } else {
        tokenize(&eval, codec.as_ref(), max_len)?.0
    };

    let r = a.rank.unwrap_or(8);
    let targets: Vec<String> = a
        .targets
        .clone()
        .unwrap_or_else(|| TARGET_MODULES.iter().map(|s| s.to_string()).collect());
    let target_refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let alpha = a.alpha.unwrap_or(2.0 * r as f32);
    let mut adapter = match method {
        Method::Lora => AdapterConfig::lora(r, alpha, &target_refs),
        Method::Hydra => AdapterConfig::hydra(r, alpha, a.experts.unwrap_or(4), &target_refs),
    };
    adapter.rslora = a.rslora.unwrap_or(false);
    adapter.dropout = a.dropout.unwrap_or(0.0);
    adapter.top_k = a.top_k;
    adapter.balance_coef = a.balance_coef.unwrap_or(0.0);
    attach(&mut model, &adapter, seed)?;
    eprintln!(
        "adapter: {:?} r={r} alpha={alpha} experts={} on {:?}: {} trainable parameters",
        method,
        adapter.experts,
        targets,
        trainable_count(&model)
    );

    let micro = a.micro_batch.unwrap_or(4);
    let accum = a.grad_accum.unwrap_or(1);
    let per_epoch = train_tokens.len().div_ceil(micro * accum).max(1);
    let total = a
        .steps
        .unwrap_or_else(|| ((a.epochs.unwrap_or(1.0) * per_epoch as f64).ceil() as usize).max(1));
    let schedule: ScheduleKind = a.schedule.as_deref().unwrap_or("cosine").parse()?;
    let settings = TrainSettings {
        lr: a.lr.unwrap_or(2e-4),
        schedule,
        warmup_steps: a.warmup.unwrap_or(0),
        total_steps: total,
        micro_batch: micro,
        grad_accum: accum,
        max_grad_norm: a.max_grad_norm.or(Some(1.0)).filter(|&n| n > 0.0),
        weight_decay: a.weight_decay.unwrap_or(0.0),
        seed,
        checkpoint_activations: a.checkpoint_activations.unwrap_or(false),
        ..Default::default()
    };
    // The router pictures come from the eval split, else from some training examples.
    let router_examples = match (is_hydra(&model), eval_tokens.is_empty()) {
        (true, true) => first_per_category(&train_tokens, ROUTER_EXAMPLES_PER_CATEGORY),
        (true, false) => eval_tokens.clone(),
        (false, _) => Vec::new(),
    };
    let checkpoint = output.join("checkpoint");
    let pad = codec.pad_id();
    let mut trainer = if a.resume {
        let t = Trainer::resume(model, train_tokens, pad, &checkpoint)?;
        eprintln!(
            "resumed from {} at step {}",
            checkpoint.display(),
            t.steps_done()
        );
        t
    } else {
        Trainer::new(model, train_tokens, pad, settings)?
    };
    eprintln!("memory: {}", trainer.memory_plan());
    let outcome = train_loop(
        &mut trainer,
        &eval_tokens,
        &output,
        &checkpoint,
        a.eval_interval.unwrap_or(50),
        a.save_interval.unwrap_or(100),
    )?;
    finish(&mut trainer, &router_examples, &output, outcome)
}

/// Most training examples per category the router pictures are drawn from when there is no
/// eval split (each is one more forward).
const ROUTER_EXAMPLES_PER_CATEGORY: usize = 64;

/// The first `cap` examples of each category (examples without one are a category).
fn first_per_category(examples: &[TokenizedExample], cap: usize) -> Vec<TokenizedExample> {
    let mut taken: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for example in examples {
        let count = taken.entry(example.category.as_deref()).or_default();
        if *count < cap {
            *count += 1;
            out.push(example.clone());
        }
    }
    out
}

/// Which chat format is used, in words.
pub fn chat_format(template: Option<&ChatTemplate>) -> String {
    match template {
        Some(template) => format!("rendered with {}", template.origin()),
        None => "the model has no chat template: the built-in <|role|> format".into(),
    }
}

struct Outcome {
    interrupted: bool,
    seconds: f64,
    tokens: usize,
    last_loss: f32,
    last_eval: Option<f32>,
    train_curve: Vec<(f64, f64)>,
    eval_curve: Vec<(f64, f64)>,
}

fn train_loop(
    trainer: &mut Trainer,
    eval: &[TokenizedExample],
    output: &Path,
    checkpoint: &Path,
    eval_every: usize,
    save_every: usize,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C: finish the current step, write a checkpoint, then exit.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let total = trainer.settings.total_steps;
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .expect("a valid template"),
    );
    bar.set_position(trainer.steps_done() as u64);
    let mut metrics = OpenOptions::new()
        .create(true)
        .append(true)
        .open(output.join("metrics.jsonl"))
        .map_err(|e| format!("cannot open metrics.jsonl: {e}"))?;
    let start = Instant::now();
    let mut out = Outcome {
        interrupted: false,
        seconds: 0.0,
        tokens: 0,
        last_loss: f32::NAN,
        last_eval: None,
        train_curve: vec![],
        eval_curve: vec![],
    };
    while trainer.steps_done() < total {
        let s = match trainer.step() {
            Ok(s) => s,
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        };
        out.tokens += s.tokens;
        out.last_loss = s.loss;
        out.train_curve.push((s.step as f64, s.loss as f64));
        let tps = s.tokens as f64 / s.seconds.max(1e-9);
        bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.0} tok/s",
            s.loss, s.lr, tps
        ));
        bar.set_position(s.step as u64);
        write_metrics_line(
            &mut metrics,
            serde_json::json!({"step": s.step, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm, "tokens": s.tokens, "tokens_per_s": tps, "elapsed_s": start.elapsed().as_secs_f64()}),
        )?;
        if !eval.is_empty() && (s.step % eval_every.max(1) == 0 || s.step == total) {
            let e = trainer.evaluate(eval)?;
            out.last_eval = Some(e.loss);
            out.eval_curve.push((s.step as f64, e.loss as f64));
            say(
                &bar,
                format!(
                    "step {}: eval loss {:.4} (perplexity {:.2}) {}",
                    s.step,
                    e.loss,
                    e.loss.exp(),
                    per_category(&e.per_category)
                ),
            );
            write_metrics_line(
                &mut metrics,
                serde_json::json!({"step": s.step, "eval_loss": e.loss, "eval_tokens": e.tokens, "eval_per_category": e.per_category}),
            )?;
        }
        let stopping = stop.load(Ordering::SeqCst);
        if s.step % save_every.max(1) == 0 || stopping {
            trainer.save_checkpoint(checkpoint)?;
        }
        if stopping {
            say(
                &bar,
                format!(
                    "interrupted: checkpoint written at step {} to {}; continue with --resume",
                    s.step,
                    checkpoint.display()
                ),
            );
            out.interrupted = true;
            break;
        }
    }
    bar.finish();
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

/// A line above the progress bar, or on stdout when there is no terminal to draw it on.
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

fn per_category(m: &BTreeMap<String, f32>) -> String {
    if m.len() <= 1 {
        return String::new();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn finish(
    trainer: &mut Trainer,
    router_examples: &[TokenizedExample],
    output: &Path,
    o: Outcome,
) -> CliResult {
    trainer.save_checkpoint(&output.join("checkpoint"))?;
    let adapter_dir = output.join("adapter");
    save_adapter(&trainer.model, &adapter_dir)?;
    let mut files = vec![
        adapter_dir.display().to_string(),
        output.join("metrics.jsonl").display().to_string(),
    ];
    let curve = output.join("loss.svg");
    let mut series = vec![Series {
        name: "train",
        color: "#1f77b4",
        points: &o.train_curve,
        smooth: true,
    }];
    if !o.eval_curve.is_empty() {
        series.push(Series {
            name: "eval",
            color: "#d62728",
            points: &o.eval_curve,
            smooth: false,
        });
    }
    line_chart_svg(&curve, "loss", "loss", &series)?;
    files.push(curve.display().to_string());
    if is_hydra(&trainer.model) && !router_examples.is_empty() {
        let path = output.join("router.svg");
        for file in write_router_svgs(&mut trainer.model, router_examples, None, &path)? {
            files.push(file.display().to_string());
        }
    }
    println!(
        "{}",
        if o.interrupted {
            "stopped early (Ctrl-C)"
        } else {
            "done"
        }
    );
    println!(
        "  steps:       {} of {}",
        trainer.steps_done(),
        trainer.settings.total_steps
    );
    println!("  train loss:  {:.4} (last step)", o.last_loss);
    if let Some(e) = o.last_eval {
        println!("  eval loss:   {e:.4} (perplexity {:.2})", e.exp());
    }
    println!(
        "  time:        {:.1} s, {:.0} tokens/s",
        o.seconds,
        o.tokens as f64 / o.seconds.max(1e-9)
    );
    println!("  files:       {}", files.join("\n               "));
    Ok(())
}

/// `precision = "mixed"` in a training config file.
fn precision_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Precision>, D::Error> {
    let name = String::deserialize(d)?;
    crate::cli::weights::parse_precision(&name)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `weights = "q4_k"` in a training config file.
fn weight_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DType>, D::Error> {
    let name = String::deserialize(d)?;
    crate::cli::weights::parse_weight_format(&name)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// One JSON line of metrics.jsonl in a single write, so a reader following the file (a
/// dashboard, `tail -f`) never sees half a line.
fn write_metrics_line(file: &mut std::fs::File, value: serde_json::Value) -> std::io::Result<()> {
    file.write_all(format!("{value}\n").as_bytes())
}
