//! The built-in demo: nothing downloaded. A small LLaMA learns a generic copy task from
//! scratch (full-parameter training, cached on disk), then LoRA and HydraLoRA adapters with
//! equal trainable-parameter budgets are fine-tuned on four tasks that share one input
//! format but want different mappings (reverse, sort, add, a cipher), so one shared adapter
//! interferes with itself. Per-task exact match by greedy generation, over several seeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use web_time::Instant;

use hydralora_engine::{rng::Rng, DType, Device};
use serde::Serialize;

use crate::adapter::{self, attach, trainable_count, AdapterConfig};
use crate::bench::random_model;
use crate::data::{prompt_and_response_ids, tokenize, Example, TokenizedExample};
use crate::error::{ModelError, Result};
use crate::llama::codec::{CharCodec, TextCodec};
use crate::llama::config::LlamaConfig;
use crate::llama::generate::generate_greedy_batch;
use crate::llama::Llama;
use crate::report::{heatmap_svg, line_chart_svg, Series};
use crate::train::{ScheduleKind, StepStats, TrainSettings, Trainable, Trainer};

/// The four fine-tuning tasks: same `tag:input=` format, different mappings.
pub const TASKS: [&str; 4] = ["reverse", "sort", "add", "cipher"];
/// Inputs are short words over the first ten letters, so a 2-layer model learns the tasks
/// in a few hundred steps.
const LETTERS: &str = "abcdefghij";
const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789:+=";
/// Bump when the base model's recipe changes, so a stale cache is not reused. (3: full-parameter
/// training now trains the token embedding too.)
const BASE_VERSION: u32 = 3;
/// The base model's batch size (fixed, so `--quick` and the full demo share one cached base).
const BASE_BATCH: usize = 32;

/// How big a demo to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Fine-tuning runs per method, each with its own seed.
    pub seeds: usize,
    /// Steps of the base model's full-parameter training (cached per step count).
    pub base_steps: usize,
    /// Steps of each adapter run.
    pub finetune_steps: usize,
    /// Training examples per task.
    pub train_per_task: usize,
    /// Exact-match examples per task.
    pub eval_per_task: usize,
    /// Micro-batch of the adapter runs.
    pub batch: usize,
    /// Where the trained base model is cached.
    pub cache_dir: PathBuf,
    /// Where `results.json`, the pictures and the seed-0 adapters are written.
    pub out_dir: PathBuf,
    /// How the fine-tuning runs store the frozen base (`demo --weights`; see
    /// [`crate::llama::weight_storage`]): None keeps the trained base's f32.
    pub weights: Option<DType>,
}

impl DemoOptions {
    /// The default demo (a few minutes on a 2-core CPU with lavapipe).
    pub fn standard(cache_dir: PathBuf, out_dir: PathBuf) -> Self {
        DemoOptions {
            seeds: 3,
            base_steps: 300,
            finetune_steps: 500,
            train_per_task: 400,
            eval_per_task: 24,
            batch: 32,
            cache_dir,
            out_dir,
            weights: None,
        }
    }

    /// `--quick`: the same pipeline, smaller (under a minute on the same machine).
    pub fn quick(cache_dir: PathBuf, out_dir: PathBuf) -> Self {
        DemoOptions {
            seeds: 3,
            finetune_steps: 120,
            train_per_task: 200,
            eval_per_task: 12,
            batch: 16,
            ..Self::standard(cache_dir, out_dir)
        }
    }
}

/// Progress of the demo, for a progress display.
pub enum DemoEvent<'a> {
    /// A new phase begins (a line of text).
    Phase(String),
    /// One training step of a run finished.
    Step {
        /// The run, e.g. `base` or `hydra seed 0`.
        run: &'a str,
        /// What the step did.
        stats: &'a StepStats,
        /// Steps of this run.
        total: usize,
    },
}

/// One row of the result table: a task, a method, exact match over the seeds.
#[derive(Clone, Debug, Serialize)]
pub struct TaskResult {
    /// One of [`TASKS`].
    pub task: String,
    /// `lora` or `hydra`.
    pub method: String,
    /// Mean exact match over the seeds, in [0, 1].
    pub exact_match: f64,
    /// Sample standard deviation of exact match over the seeds.
    pub exact_match_std: f64,
    /// Exact match of each seed's run.
    pub per_seed: Vec<f64>,
    /// Trainable scalars of the method's adapter.
    pub trainable_params: usize,
}

/// Everything the demo measured and wrote (also saved as `results.json`).
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// One row per (task, method).
    pub results: Vec<TaskResult>,
    /// Exact match of the base model per task (before fine-tuning), `copy` included.
    pub base_exact_match: BTreeMap<String, f64>,
    /// The LoRA adapter's settings, in words.
    pub lora_config: String,
    /// The HydraLoRA adapter's settings, in words.
    pub hydra_config: String,
    /// The pictures written (`loss.svg`, `router.svg`).
    pub files: Vec<PathBuf>,
    /// Wall-clock time of the whole demo, in seconds.
    pub seconds: f64,
    /// Whether the base model came from the cache (not trained in this run).
    pub base_from_cache: bool,
}

/// One example of a task, from the seeded generator.
pub fn task_example(task: &str, rng: &mut Rng) -> Example {
    let n_letters = LETTERS.len() as u64;
    let word = |rng: &mut Rng| -> String {
        (0..3 + rng.below(2))
            .map(|_| LETTERS.as_bytes()[rng.below(n_letters) as usize] as char)
            .collect()
    };
    let (tag, input, output) = match task {
        "reverse" => {
            let w = word(rng);
            ("rev", w.clone(), w.chars().rev().collect())
        }
        "sort" => {
            let w = word(rng);
            let mut c: Vec<char> = w.chars().collect();
            c.sort_unstable();
            ("srt", w, c.into_iter().collect())
        }
        "add" => {
            let (a, b) = (rng.below(10), rng.below(10));
            ("add", format!("{a}+{b}"), (a + b).to_string())
        }
        "cipher" => {
            let w = word(rng);
            (
                "rot",
                w.clone(),
                w.chars()
                    .map(|c| (b'a' + (c as u8 - b'a' + 3) % n_letters as u8) as char)
                    .collect(),
            )
        }
        // The generic corpus of the base model: copy letters or digits.
        _ => {
            let w = if rng.below(3) == 0 {
                (0..1 + rng.below(4))
                    .map(|_| (b'0' + rng.below(10) as u8) as char)
                    .collect()
            } else {
                word(rng)
            };
            ("cpy", w.clone(), w)
        }
    };
    Example {
        prompt: format!("{tag}:{input}="),
        response: output,
        category: Some(task.to_string()),
        ..Example::default()
    }
}

fn task_set(tasks: &[&str], per_task: usize, seed: u64) -> Vec<Example> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(tasks.len() * per_task);
    for _ in 0..per_task {
        for t in tasks {
            out.push(task_example(t, &mut rng));
        }
    }
    out
}

/// The demo model: 2 layers, width 64, grouped-query attention (4 heads, 2 kv heads).
pub fn demo_config(vocab: usize) -> LlamaConfig {
    LlamaConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        vocab_size: vocab,
        max_position_embeddings: 32,
        tie_word_embeddings: false,
        bos_token_id: Some(CharCodec::BOS),
        eos_token_ids: vec![CharCodec::EOS],
    }
}

/// The adapter pair with equal budgets: HydraLoRA (r 4, 4 experts) and LoRA on the same modules
/// with the rank whose count comes closest.
pub fn adapter_pair(model: &Llama) -> (AdapterConfig, AdapterConfig) {
    // Reverse and sort need new attention patterns, so attention is adapted as well as the MLP.
    let targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let hydra = AdapterConfig::hydra(4, 8.0, 4, &targets);
    let count = |cfg: &AdapterConfig| -> usize {
        model
            .linears()
            .filter(|(_, module, _)| cfg.targets.iter().any(|t| t == module))
            .map(|(_, _, lin)| {
                cfg.r * lin.d_in()
                    + cfg.experts * cfg.r * lin.d_out()
                    + if cfg.experts > 1 {
                        cfg.experts * lin.d_in()
                    } else {
                        0
                    }
            })
            .sum()
    };
    let budget = count(&hydra);
    let r = (1..=64)
        .min_by_key(|&r| count(&AdapterConfig::lora(r, 2.0 * r as f32, &targets)).abs_diff(budget))
        .unwrap_or(8);
    (AdapterConfig::lora(r, 2.0 * r as f32, &targets), hydra)
}

/// How [`exact_match_with`] generates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExactMatchOptions {
    /// Most new tokens per example; `None`: the expected answer's token count + 2 (enough to
    /// see it and the stop token after it).
    pub max_new_tokens: Option<usize>,
    /// Tokens that end an answer (a model's end-of-turn ids); the codec's EOS is one too.
    pub stop_tokens: Vec<u32>,
    /// Examples per forward (those with prompts of the same length share one).
    pub batch: usize,
}

impl Default for ExactMatchOptions {
    fn default() -> Self {
        ExactMatchOptions {
            max_new_tokens: None,
            stop_tokens: Vec::new(),
            batch: 8,
        }
    }
}

/// Exact match of greedy generation against each example's response, per category, with
/// the default [`ExactMatchOptions`].
pub fn exact_match(
    model: &Llama,
    codec: &dyn TextCodec,
    examples: &[Example],
) -> Result<BTreeMap<String, f64>> {
    exact_match_with(model, codec, examples, &ExactMatchOptions::default())
}

/// Exact match of greedy generation against each example's response, per category (the
/// fraction of examples whose generated text is the response's text).
///
/// Generation starts from the example's prompt as it is trained on
/// ([`crate::data::prompt_and_response_ids`]: a multi-turn chat's earlier turns included) and
/// is batched ([`generate_greedy_batch`]). The expected answer is the response's tokens up to
/// its first stop token: a chat template's end-of-turn token, or the codec's EOS, and what
/// follows it, are not part of the answer.
pub fn exact_match_with(
    model: &Llama,
    codec: &dyn TextCodec,
    examples: &[Example],
    options: &ExactMatchOptions,
) -> Result<BTreeMap<String, f64>> {
    let mut stops = options.stop_tokens.clone();
    stops.extend(codec.eos_id());
    let mut prompts = Vec::with_capacity(examples.len());
    let mut answers = Vec::with_capacity(examples.len());
    let mut budgets = Vec::with_capacity(examples.len());
    for example in examples {
        let (prompt, response) = prompt_and_response_ids(example, codec)?;
        let answer_len = (response.iter())
            .position(|id| stops.contains(id))
            .unwrap_or(response.len());
        answers.push(codec.decode(&response[..answer_len])?);
        budgets.push(options.max_new_tokens.unwrap_or(answer_len + 2));
        prompts.push(prompt);
    }
    let generated = generate_greedy_batch(model, &prompts, &budgets, &stops, options.batch)?;
    let mut hits: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for ((example, answer), out) in examples.iter().zip(&answers).zip(&generated) {
        let entry = hits
            .entry(example.category.clone().unwrap_or_default())
            .or_default();
        entry.0 += usize::from(codec.decode(out)? == *answer);
        entry.1 += 1;
    }
    Ok(hits
        .into_iter()
        .map(|(k, (h, n))| (k, h as f64 / n.max(1) as f64))
        .collect())
}

/// The base model's training run from scratch: a random demo model, full-parameter training
/// on the copy task for `steps` steps (what [`prepare_tasks`] caches; the browser page runs it
/// too).
pub fn base_trainer(device: &Device, codec: &CharCodec, steps: usize) -> Result<Trainer> {
    let config = demo_config(codec.vocab_size());
    let corpus = task_set(&["copy"], steps * BASE_BATCH / 4 + 64, 1234);
    let (tokens, _) = tokenize(&corpus, codec, 32)?;
    let model = random_model(device, &config, 7)?;
    let settings = TrainSettings {
        lr: 5e-3,
        schedule: ScheduleKind::Cosine,
        warmup_steps: steps / 20,
        total_steps: steps,
        micro_batch: BASE_BATCH,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        weight_decay: 0.01,
        seed: 1,
        trainable: Trainable::Full,
        ..Default::default()
    };
    Trainer::new(model, tokens, codec.pad_id(), settings)
}

/// The character codec every demo model uses.
pub fn demo_codec() -> CharCodec {
    CharCodec::new(ALPHABET.chars()).expect("the demo alphabet has no repeated character")
}

/// The fine-tuning examples of the demo (`per_task` of each of [`TASKS`], interleaved).
pub fn finetune_examples(per_task: usize) -> Vec<Example> {
    task_set(&TASKS, per_task, TRAIN_SEED)
}

/// Held-out examples of the four tasks, for exact match and the router heatmap.
pub fn eval_examples(per_task: usize) -> Vec<Example> {
    task_set(&TASKS, per_task, EVAL_SEED)
}

const TRAIN_SEED: u64 = 99;
const EVAL_SEED: u64 = 4242;

/// The base model: from the cache when it is there, else trained now and cached.
fn base_model(
    device: &Device,
    codec: &CharCodec,
    opts: &DemoOptions,
    on_event: &mut dyn FnMut(DemoEvent),
) -> Result<(Llama, bool)> {
    let dir = opts.cache_dir.join(format!(
        "demo-base-v{BASE_VERSION}-{}steps",
        opts.base_steps
    ));
    if dir.join("model.safetensors").is_file() {
        if let Ok(model) = Llama::load(device, &dir) {
            return Ok((model, true));
        }
    }
    on_event(DemoEvent::Phase(format!(
        "training the base model ({} steps, full parameters, copy task); cached in {}",
        opts.base_steps,
        dir.display()
    )));
    let mut trainer = base_trainer(device, codec, opts.base_steps)?;
    for _ in 0..opts.base_steps {
        let stats = trainer.step()?;
        on_event(DemoEvent::Step {
            run: "base",
            stats: &stats,
            total: opts.base_steps,
        });
    }
    let model = trainer.model;
    std::fs::create_dir_all(&opts.cache_dir)
        .map_err(|e| ModelError::io("create", &opts.cache_dir, e))?;
    crate::train::checkpoint::replace_dir(&dir, |tmp| {
        model.save(tmp)?;
        codec.save(tmp.join(crate::llama::codec::CHAR_CODEC_FILE))
    })?;
    // Reload so the weights are frozen tensors again.
    Ok((Llama::load(device, &dir)?, false))
}

/// The demo's task set and base model, for other front ends (the desktop example).
pub struct DemoTasks {
    /// The character codec every demo model uses.
    pub codec: CharCodec,
    /// The base model: from the cache, or trained now (and cached).
    pub base: Llama,
    /// Whether `base` came from the cache.
    pub base_from_cache: bool,
    /// The fine-tuning set: the four tasks, tokenized.
    pub train: Vec<TokenizedExample>,
    /// Held-out examples of the four tasks, for exact match.
    pub eval: Vec<Example>,
}

/// Prepares the demo's base model and tasks as [`run_demo`] does (the base is trained and
/// cached under `opts.cache_dir` the first time); `on_event` sees the base model's steps.
pub fn prepare_tasks(
    device: &Device,
    opts: &DemoOptions,
    mut on_event: impl FnMut(DemoEvent),
) -> Result<DemoTasks> {
    let codec = demo_codec();
    let (base, base_from_cache) = base_model(device, &codec, opts, &mut on_event)?;
    let (train, _) = tokenize(&finetune_examples(opts.train_per_task), &codec, 32)?;
    Ok(DemoTasks {
        codec,
        base,
        base_from_cache,
        train,
        eval: eval_examples(opts.eval_per_task),
    })
}

/// The settings of a demo fine-tuning run (seed `seed` of `opts`).
pub fn finetune_settings(opts: &DemoOptions, seed: u64) -> TrainSettings {
    TrainSettings {
        lr: 1e-2,
        schedule: ScheduleKind::Cosine,
        warmup_steps: opts.finetune_steps / 10,
        total_steps: opts.finetune_steps,
        micro_batch: opts.batch,
        max_grad_norm: Some(1.0),
        weight_decay: 0.0,
        seed: 10 + seed,
        ..Default::default()
    }
}

/// Runs the whole demo; `on_event` sees phases and steps (for progress bars).
pub fn run_demo(
    device: &Device,
    opts: &DemoOptions,
    mut on_event: impl FnMut(DemoEvent),
) -> Result<DemoReport> {
    let start = Instant::now();
    let DemoTasks {
        codec,
        base,
        base_from_cache,
        train: train_tokens,
        eval,
    } = prepare_tasks(device, opts, &mut on_event)?;
    drop(base);
    let base_dir = opts.cache_dir.join(format!(
        "demo-base-v{BASE_VERSION}-{}steps",
        opts.base_steps
    ));
    let load_base = || Llama::load_as(device, &base_dir, opts.weights);
    on_event(DemoEvent::Phase(
        "exact match of the base model (before fine-tuning)".into(),
    ));
    let mut base_eval = eval.clone();
    base_eval.extend(task_set(&["copy"], opts.eval_per_task, 4243));
    let base_exact_match = exact_match(&load_base()?, &codec, &base_eval)?;
    let (lora_cfg, hydra_cfg) = adapter_pair(&load_base()?);

    std::fs::create_dir_all(&opts.out_dir)
        .map_err(|e| ModelError::io("create", &opts.out_dir, e))?;
    let mut scores: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    let mut curves: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut heatmap: Option<(Vec<String>, Vec<Vec<f32>>)> = None;
    for seed in 0..opts.seeds as u64 {
        for (method, cfg) in [("lora", &lora_cfg), ("hydra", &hydra_cfg)] {
            on_event(DemoEvent::Phase(format!(
                "fine-tuning {method} (seed {seed})"
            )));
            let mut model = load_base()?;
            attach(&mut model, cfg, 1000 + seed)?;
            counts.insert(method.to_string(), trainable_count(&model));
            let settings = finetune_settings(opts, seed);
            let mut trainer = Trainer::new(model, train_tokens.clone(), codec.pad_id(), settings)?;
            let mut curve = Vec::new();
            let run = format!("{method} seed {seed}");
            for _ in 0..opts.finetune_steps {
                let stats = trainer.step()?;
                curve.push((stats.step as f64, stats.loss as f64));
                on_event(DemoEvent::Step {
                    run: &run,
                    stats: &stats,
                    total: opts.finetune_steps,
                });
            }
            let mut model = trainer.model;
            let em = exact_match(&model, &codec, &eval)?;
            for (task, v) in em {
                scores
                    .entry((task, method.to_string()))
                    .or_default()
                    .push(v);
            }
            if seed == 0 {
                curves.push((method.to_string(), curve));
                if method == "hydra" {
                    heatmap = Some(router_heatmap(&mut model, &codec, &eval)?);
                }
                adapter::save_adapter(&model, &opts.out_dir.join(format!("{method}-adapter")))?;
            }
        }
    }
    let files = write_pictures(opts, &curves, heatmap)?;
    let results = scores
        .into_iter()
        .map(|((task, method), per_seed)| {
            let (mean, std) = mean_std(&per_seed);
            TaskResult {
                trainable_params: counts[&method],
                task,
                method,
                exact_match: mean,
                exact_match_std: std,
                per_seed,
            }
        })
        .collect();
    let describe = |c: &AdapterConfig| {
        format!(
            "{:?} r={} alpha={} experts={} targets={:?}",
            c.method, c.r, c.alpha, c.experts, c.targets
        )
    };
    let report = DemoReport {
        results,
        base_exact_match,
        lora_config: describe(&lora_cfg),
        hydra_config: describe(&hydra_cfg),
        files,
        seconds: start.elapsed().as_secs_f64(),
        base_from_cache,
    };
    let json = serde_json::to_string_pretty(&report).expect("the report serialises");
    let path = opts.out_dir.join("results.json");
    crate::llama::weights::write_atomically(&path, |out| {
        std::io::Write::write_all(out, json.as_bytes())
    })?;
    Ok(report)
}

/// Mean gate weight of each expert per task, averaged over every router.
fn router_heatmap(
    model: &mut Llama,
    codec: &dyn TextCodec,
    eval: &[Example],
) -> Result<(Vec<String>, Vec<Vec<f32>>)> {
    let mut groups = Vec::new();
    for task in TASKS {
        let examples: Vec<Example> = eval
            .iter()
            .filter(|e| e.category.as_deref() == Some(task))
            .cloned()
            .collect();
        let (tokens, _) = tokenize(&examples, codec, 32)?;
        groups.push((
            task.to_string(),
            tokens.into_iter().map(|t| t.ids).collect(),
        ));
    }
    let rows = adapter::gates_by_category(model, &groups)?;
    Ok((TASKS.iter().map(|t| t.to_string()).collect(), rows))
}

fn write_pictures(
    opts: &DemoOptions,
    curves: &[(String, Vec<(f64, f64)>)],
    heatmap: Option<(Vec<String>, Vec<Vec<f32>>)>,
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let colors = ["#1f77b4", "#d62728"];
    let series: Vec<Series> = curves
        .iter()
        .zip(colors)
        .map(|((name, pts), color)| Series {
            name,
            color,
            points: pts,
            smooth: true,
        })
        .collect();
    let loss = opts.out_dir.join("loss.svg");
    line_chart_svg(
        &loss,
        "demo fine-tuning loss (seed 0)",
        "train loss",
        &series,
    )?;
    files.push(loss);
    if let Some((rows, values)) = heatmap {
        let cols: Vec<String> = (0..values.first().map_or(0, Vec::len))
            .map(|i| format!("expert {i}"))
            .collect();
        let path = opts.out_dir.join("router.svg");
        heatmap_svg(
            &path,
            "HydraLoRA router: mean gate weight per task (all layers)",
            &rows,
            &cols,
            &values,
        )?;
        files.push(path);
    }
    Ok(files)
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// The default cache folder: `$XDG_CACHE_HOME/hydralora`, else `~/.cache/hydralora`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&x).join("hydralora");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".hydralora-cache"),
        |h| Path::new(&h).join(".cache").join("hydralora"),
    )
}
