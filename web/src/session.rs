//! A fine-tuning session as the page drives it, in plain async Rust (no JavaScript types, so
//! it also runs natively, under `pollster`, in this crate's tests): a base model held as
//! safetensors bytes, the demo's tasks or the user's JSONL, a LoRA or HydraLoRA run stepped
//! one optimizer step per call, generation, the router heatmap and the adapter's PEFT files.
//! Every readback is awaited (`*_async`), which is what lets it run in a browser.

use std::collections::BTreeMap;
use std::path::Path;

use hydralora_model::adapter::{
    adapter_files_from, adapter_tensors, attach, gates_by_category_async, AdapterFiles,
};
use hydralora_model::data::{
    encode_prompt, parse_line, prompt_and_response_ids, tokenize, Example, ReadOptions,
};
use hydralora_model::demo::{
    adapter_pair, base_trainer, demo_codec, eval_examples, finetune_examples, finetune_settings,
    DemoOptions,
};
use hydralora_model::engine::{no_grad, shaders, Device};
use hydralora_model::llama::weights::safetensors_bytes;
use hydralora_model::train::{StepStats, Trainer};
use hydralora_model::{
    generate_async, HfCodec, Llama, LlamaConfig, ModelError, ModelWeights, Result, SamplingConfig,
    TextCodec, Tokenizer, WeightFile,
};
use serde::Serialize;

/// Longest example the page trains on, in tokens (the demo's tasks need 32).
const MAX_TOKENS: usize = 128;
/// Held-out examples per category for the router heatmap.
const HEATMAP_EXAMPLES: usize = 8;

/// Which adapter a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// One low-rank update per module.
    Lora,
    /// A shared A, several B heads and a router (the demo's equal-budget pair).
    Hydra,
}

impl Method {
    /// `lora` or `hydra`.
    pub fn parse(name: &str) -> Result<Method> {
        match name {
            "lora" => Ok(Method::Lora),
            "hydra" => Ok(Method::Hydra),
            other => Err(ModelError::Input(format!(
                "unknown method {other:?}: lora or hydra"
            ))),
        }
    }
}

/// A fine-tuning run's settings, as the page sets them.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// The adapter.
    pub method: Method,
    /// Optimizer steps (the learning-rate schedule's length).
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// The run's seed (adapter initialisation and data order), as the native demo's.
    pub seed: u64,
}

/// The frozen base: its config and its weights file, in memory.
struct Base {
    config: LlamaConfig,
    weights: ModelWeights,
}

/// One fine-tuning run in progress.
struct Run {
    trainer: Trainer,
    method: Method,
    /// Held-out examples, for the router heatmap.
    eval: Vec<Example>,
}

/// The router heatmap: mean gate weight of each expert per category.
#[derive(Clone, Debug, Serialize)]
pub struct Heatmap {
    /// Row labels.
    pub categories: Vec<String>,
    /// `[category][expert]`, each row summing to 1.
    pub gates: Vec<Vec<f32>>,
}

/// What the page holds: the device, the codec, the base and the runs.
pub struct Session {
    device: Device,
    codec: Box<dyn TextCodec>,
    base: Option<Base>,
    base_training: Option<Trainer>,
    run: Option<Run>,
}

impl Session {
    /// Opens the GPU (in a browser, WebGPU's adapter); the demo's character codec until a
    /// model brings its own tokenizer.
    pub async fn open() -> Result<Session> {
        Ok(Session {
            device: Device::new_async().await?,
            codec: Box::new(demo_codec()),
            base: None,
            base_training: None,
            run: None,
        })
    }

    /// The device in words: adapter, backend, features and limits.
    pub fn device_info(&self) -> String {
        self.device.info().to_string()
    }

    /// Takes a base model from its files' bytes: `config.json`, `model.safetensors`, and its
    /// tokenizer, either a `tokenizer.json` or the demo's character codec JSON (the demo's
    /// alphabet when neither is given). The model is built once here, so a file that does not
    /// fit the device or does not match its config is refused now, by name.
    pub fn load_base(
        &mut self,
        config_json: &[u8],
        weights: Vec<u8>,
        tokenizer_json: Option<&[u8]>,
    ) -> Result<()> {
        let value = serde_json::from_slice(config_json)
            .map_err(|e| ModelError::Input(format!("config.json: {e}")))?;
        let config = LlamaConfig::from_json_value(&value, Some(Path::new("config.json")))?;
        let weights =
            ModelWeights::from_file(WeightFile::from_bytes("model.safetensors", weights)?);
        let codec: Box<dyn TextCodec> = match tokenizer_json {
            None => Box::new(demo_codec()),
            Some(bytes) if is_char_codec(bytes) => Box::new(hydralora_model::CharCodec::from_json(
                bytes,
                Path::new("codec.json"),
            )?),
            Some(bytes) => {
                let tokenizer =
                    Tokenizer::from_json(bytes, "tokenizer.json".into(), config.bos_token_id)?;
                Box::new(HfCodec::new(
                    tokenizer,
                    config.eos_token_ids.first().copied(),
                    None,
                )?)
            }
        };
        Llama::from_weights(&self.device, config.clone(), &weights, None)?;
        self.base = Some(Base { config, weights });
        self.codec = codec;
        self.run = None;
        Ok(())
    }

    /// Starts training the demo's base model from scratch (full parameters, the copy task)
    /// for `steps` steps; [`Session::base_step`] advances it.
    pub fn start_base_training(&mut self, steps: usize) -> Result<()> {
        let codec = demo_codec();
        self.base_training = Some(base_trainer(&self.device, &codec, steps)?);
        self.codec = Box::new(codec);
        Ok(())
    }

    /// One step of the base model's training; after its last step the trained model becomes
    /// the base (its weights read back into a safetensors file in memory).
    pub async fn base_step(&mut self) -> Result<StepStats> {
        let trainer = self
            .base_training
            .as_mut()
            .ok_or_else(|| ModelError::Input("no base model is being trained".into()))?;
        let stats = trainer.step_async().await?;
        if trainer.steps_done() >= trainer.settings.total_steps {
            let trainer = self.base_training.take().expect("checked above");
            let bytes = model_safetensors(&trainer.model).await?;
            let config = trainer.model.config.clone();
            let weights =
                ModelWeights::from_file(WeightFile::from_bytes("model.safetensors", bytes)?);
            self.base = Some(Base { config, weights });
            self.run = None;
        }
        Ok(stats)
    }

    /// The base model's weights as a `model.safetensors` file (to save a trained base).
    pub fn base_weights(&self) -> Option<&[u8]> {
        self.base
            .as_ref()
            .map(|b| b.weights.files()[0].file_bytes())
    }

    /// Starts a fine-tuning run on the demo's four tasks (`jsonl` None) or on the user's
    /// JSONL lines (any format `hydralora train` reads; errors name the line).
    pub fn start_run(&mut self, settings: &RunSettings, jsonl: Option<&str>) -> Result<()> {
        let base = self.base.as_ref().ok_or_else(|| {
            ModelError::Input("there is no base model yet: train the small base or load one".into())
        })?;
        let (train, eval) = match jsonl {
            None => (finetune_examples(200), eval_examples(HEATMAP_EXAMPLES)),
            Some(text) => parse_jsonl(text)?,
        };
        let max_len = MAX_TOKENS.min(base.config.max_position_embeddings);
        let (tokens, _) = tokenize(&train, &*self.codec, max_len)?;
        let mut model =
            Llama::from_weights(&self.device, base.config.clone(), &base.weights, None)?;
        let (lora, hydra) = adapter_pair(&model);
        let adapter = match settings.method {
            Method::Lora => lora,
            Method::Hydra => hydra,
        };
        attach(&mut model, &adapter, 1000 + settings.seed)?;
        let mut demo = DemoOptions::quick("".into(), "".into());
        demo.finetune_steps = settings.steps;
        demo.batch = settings.batch;
        let train_settings = finetune_settings(&demo, settings.seed);
        let trainer = Trainer::new(model, tokens, self.codec.pad_id(), train_settings)?;
        self.run = Some(Run {
            trainer,
            method: settings.method,
            eval,
        });
        Ok(())
    }

    fn run(&self) -> Result<&Run> {
        self.run
            .as_ref()
            .ok_or_else(|| ModelError::Input("no fine-tuning run has started".into()))
    }

    /// One optimizer step of the run.
    pub async fn step(&mut self) -> Result<StepStats> {
        let run = self
            .run
            .as_mut()
            .ok_or_else(|| ModelError::Input("no fine-tuning run has started".into()))?;
        run.trainer.step_async().await
    }

    /// Greedy continuation of `prompt` by the model being trained (the base when no run has
    /// started), up to `max_tokens` tokens.
    pub async fn generate(&self, prompt: &str, max_tokens: usize) -> Result<String> {
        let fresh;
        let model = match &self.run {
            Some(run) => &run.trainer.model,
            None => {
                let base = self.base.as_ref().ok_or_else(|| {
                    ModelError::Input("there is no model yet to generate with".into())
                })?;
                fresh =
                    Llama::from_weights(&self.device, base.config.clone(), &base.weights, None)?;
                &fresh
            }
        };
        let ids = encode_prompt(&*self.codec, prompt)?;
        let cfg = SamplingConfig {
            max_new_tokens: max_tokens,
            stop_tokens: self.codec.eos_id().into_iter().collect(),
            ..SamplingConfig::default()
        };
        let out = generate_async(model, &ids, &cfg).await?;
        self.codec.decode(&out)
    }

    /// The run's logits `[T, V]` (row-major) for `prompt`'s tokens: what the page reports for
    /// the check that its downloaded adapter gives the same logits natively.
    pub async fn logits(&self, prompt: &str) -> Result<Vec<f32>> {
        let run = self.run()?;
        let ids = encode_prompt(&*self.codec, prompt)?;
        let logits = no_grad(|| run.trainer.model.logits(&ids, 1))?;
        Ok(logits.to_vec_f32_async().await?)
    }

    /// The mean gates of a HydraLoRA run per category of its held-out examples (None for
    /// LoRA).
    pub async fn heatmap(&mut self) -> Result<Option<Heatmap>> {
        let codec = &self.codec;
        let run = self
            .run
            .as_mut()
            .ok_or_else(|| ModelError::Input("no fine-tuning run has started".into()))?;
        if run.method != Method::Hydra {
            return Ok(None);
        }
        let model = &mut run.trainer.model;
        let mut groups: BTreeMap<String, Vec<Vec<u32>>> = BTreeMap::new();
        for example in &run.eval {
            let (mut ids, response) = prompt_and_response_ids(example, &**codec)?;
            ids.extend(response);
            ids.truncate(model.config.max_position_embeddings);
            let category = example.category.clone().unwrap_or_else(|| "all".into());
            groups.entry(category).or_default().push(ids);
        }
        let groups: Vec<(String, Vec<Vec<u32>>)> = groups.into_iter().collect();
        let gates = gates_by_category_async(model, &groups).await?;
        let categories = groups.into_iter().map(|(name, _)| name).collect();
        Ok(Some(Heatmap { categories, gates }))
    }

    /// The run's adapter as PEFT files (`adapter_model.safetensors`, `adapter_config.json`).
    pub async fn adapter_files(&self) -> Result<AdapterFiles> {
        let model = &self.run()?.trainer.model;
        let mut params = Vec::new();
        for t in adapter_tensors(model) {
            params.push(t.param.to_vec_f32_async().await?);
        }
        adapter_files_from(model, params)
    }

    /// The kernels this session compiled so far (`variant:entry`), sorted.
    pub fn kernels_used(&self) -> Vec<String> {
        self.device.compiled_kernels()
    }

    /// Compiles every kernel variant the device can run and returns its compiler's
    /// complaints (none when all are accepted).
    pub async fn check_every_kernel(&self) -> Vec<String> {
        self.device.check_kernels(shaders::ALL).await
    }
}

/// Whether a tokenizer file is the demo's character codec (`{"type": "char", ...}`).
fn is_char_codec(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .is_ok_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("char"))
}

/// The user's JSONL: every line an example; the first tenth of each category (at most
/// [`HEATMAP_EXAMPLES`]) is also kept for the heatmap. Errors name the line.
fn parse_jsonl(text: &str) -> Result<(Vec<Example>, Vec<Example>)> {
    let options = ReadOptions::default();
    let mut train = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (example, _) = parse_line(line, &options)
            .map_err(|why| ModelError::Input(format!("the JSONL file, line {}: {why}", i + 1)))?;
        train.push(example);
    }
    if train.is_empty() {
        return Err(ModelError::Input("the JSONL file has no examples".into()));
    }
    let mut per_category: BTreeMap<Option<String>, usize> = BTreeMap::new();
    let eval = (train.iter())
        .filter(|e| {
            let n = per_category.entry(e.category.clone()).or_default();
            *n += 1;
            *n <= HEATMAP_EXAMPLES
        })
        .cloned()
        .collect();
    Ok((train, eval))
}

/// A trained model's weights, read back (awaited) into a safetensors file in memory.
async fn model_safetensors(model: &Llama) -> Result<Vec<u8>> {
    let mut host = Vec::new();
    for (name, tensor) in model.named_weights() {
        host.push((
            name,
            tensor.shape().to_vec(),
            tensor.to_vec_f32_async().await?,
        ));
    }
    let entries: Vec<(String, Vec<usize>, &[f32])> = host
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    safetensors_bytes("model.safetensors", &entries, &[("format", "pt")])
}
