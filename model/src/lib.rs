//! # hydralora-model
//!
//! LLaMA-family models with LoRA and HydraLoRA adapters, on the
//! [`hydralora_engine`](crate::engine) GPU tensors: load a Hugging Face model folder,
//! fine-tune an adapter on JSONL data, save it in the files PEFT (LoRA) and the HydraLoRA
//! code read, and generate text.
//!
//! The crate's rooms:
//!
//! - [`llama`], the base model: a model folder's config, weight files, tokenizer and text
//!   codec (host side); [`Linear`] (a frozen layer that may carry an adapter), [`Layer`], the
//!   [`Llama`] decoder and [`generate()`] (on the GPU).
//! - [`adapter`], LoRA and HydraLoRA: the adapted layer's forward, [`AdapterConfig`],
//!   [`attach`](adapter::attach), adapter folders (save, load), router statistics, merging.
//! - [`data`]: JSONL data sets to token ids with loss masks, in seeded batches.
//! - [`train`]: a run's settings and schedule, the [`Trainer`](train::Trainer), its
//!   checkpoints (a run's resumable state), the memory estimate, the background worker.
//! - Tools: [`verify`], [`bench`](mod@bench), [`demo`], [`report`] (SVG charts).
//!
//! ## From a model folder to a saved adapter
//!
//! The steps below are what `hydralora train` and `hydralora generate` do. Each block
//! compiles on its own; the lines that repeat the earlier steps are hidden.
//!
//! ### 1. Open a device
//!
//! [`Device::new`](engine::Device::new) picks the best GPU (`WGPU_ADAPTER_NAME` and
//! `WGPU_BACKEND` choose another); on a machine without one, Mesa's lavapipe (a CPU Vulkan
//! driver) works. Engine errors convert into [`ModelError::Engine`], so `?` works throughout.
//!
//! ```no_run
//! use hydralora_model::engine::Device;
//! # fn main() -> hydralora_model::Result<()> {
//! let device = Device::new()?;
//! println!("{}", device.info());
//! # Ok(()) }
//! ```
//!
//! ### 2. Load a Hugging Face model folder
//!
//! [`Llama::load`] reads `config.json` and `model.safetensors` (or the shards named by
//! `model.safetensors.index.json`; f32, f16 or bf16 weights), checking every tensor's shape
//! against the config. [`HfCodec::from_dir`] reads `tokenizer.json` with the config's BOS and
//! EOS ids ([`llama::load_codec`] also takes the demo's `char_codec.json`).
//!
//! ```no_run
//! use hydralora_model::{engine::Device, HfCodec, Llama};
//! # fn main() -> hydralora_model::Result<()> {
//! # let device = Device::new()?;
//! let dir = "models/TinyLlama-1.1B";
//! let mut model = Llama::load(&device, dir)?;
//! let codec = HfCodec::from_dir(dir, &model.config)?;
//! println!(
//!     "{} layers, hidden size {}, vocabulary {}",
//!     model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size
//! );
//! // Optional: keep the frozen linear weights as f16 (half their memory).
//! model.store_frozen_weights_f16()?;
//! # Ok(()) }
//! ```
//!
//! ### 3. Attach an adapter
//!
//! An [`AdapterConfig`] says which linear layers ([`TARGET_MODULES`]) get an adapter, its
//! rank r and alpha (the output is scaled by alpha / r), and for HydraLoRA the number of
//! experts (B matrices). [`adapter::attach`] adds a fresh adapter to every targeted layer: A and the router
//! random, every B zero, so the model's output is unchanged until training moves B.
//!
//! ```no_run
//! use hydralora_model::adapter::{attach, trainable_count};
//! use hydralora_model::{engine::Device, AdapterConfig, Llama};
//! # fn main() -> hydralora_model::Result<()> {
//! # let device = Device::new()?;
//! # let mut model = Llama::load(&device, "models/TinyLlama-1.1B")?;
//! let targets = ["q_proj", "k_proj", "v_proj", "o_proj"];
//! // HydraLoRA: r = 8, alpha = 16, 4 experts. LoRA: AdapterConfig::lora(8, 16.0, &targets).
//! let mut cfg = AdapterConfig::hydra(8, 16.0, 4, &targets);
//! cfg.dropout = 0.05;
//! attach(&mut model, &cfg, 0)?; // seed 0
//! println!("{} trainable parameters", trainable_count(&model));
//! # Ok(()) }
//! ```
//!
//! ### 4. Read and tokenize a data set
//!
//! [`data::read_jsonl`] reads JSONL files whose lines are chat (`messages`), Alpaca
//! (`instruction`, `input`, `output`), Dolly (`instruction`, `context`, `response`) or plain
//! `text`; a `category` field is kept for per-category metrics. [`data::tokenize`] turns each
//! example into ids `[BOS] + prompt + response + [EOS]` with the loss only on the response,
//! cut to `max_len` tokens.
//!
//! ```no_run
//! use hydralora_model::data::{read_jsonl, split_eval, tokenize, ReadOptions};
//! use hydralora_model::{engine::Device, HfCodec, Llama};
//! # fn main() -> hydralora_model::Result<()> {
//! # let device = Device::new()?;
//! # let model = Llama::load(&device, "models/TinyLlama-1.1B")?;
//! # let codec = HfCodec::from_dir("models/TinyLlama-1.1B", &model.config)?;
//! let (examples, report) = read_jsonl(&["data/train.jsonl"], &ReadOptions::default())?;
//! println!("{report}"); // examples per format, malformed lines
//! let (train, eval) = split_eval(examples, 0.05, 0)?; // 5 % held out, stratified by category
//! let max_len = 512.min(model.config.max_position_embeddings);
//! let (train_tokens, report) = tokenize(&train, &codec, max_len)?;
//! println!("{report}"); // kept, truncated, trained-on tokens
//! let (eval_tokens, _) = tokenize(&eval, &codec, max_len)?;
//! # Ok(()) }
//! ```
//!
//! ### 5. Train
//!
//! A [`Trainer`](train::Trainer) owns the model, the shuffled data ([`data::Loader`]) and
//! AdamW. Each [`step`](train::Trainer::step) runs `grad_accum` micro-batches of
//! `micro_batch` sequences, clips the gradient norm, and updates the adapter at the
//! schedule's learning rate; it returns the step's [`StepStats`](train::StepStats). A
//! diverging run (a non-finite loss or gradient) is an error that names where it happened.
//!
//! ```no_run
//! use std::path::Path;
//! use hydralora_model::train::{ScheduleKind, TrainSettings, Trainer};
//! use hydralora_model::{engine::Device, HfCodec, Llama, TextCodec};
//! # fn main() -> hydralora_model::Result<()> {
//! # let device = Device::new()?;
//! # let mut model = Llama::load(&device, "models/TinyLlama-1.1B")?;
//! # let codec = HfCodec::from_dir("models/TinyLlama-1.1B", &model.config)?;
//! # let cfg = hydralora_model::AdapterConfig::lora(8, 16.0, &["q_proj", "v_proj"]);
//! # hydralora_model::adapter::attach(&mut model, &cfg, 0)?;
//! # let train_tokens: Vec<hydralora_model::data::TokenizedExample> = vec![];
//! let settings = TrainSettings {
//!     lr: 2e-4,
//!     schedule: ScheduleKind::Cosine,
//!     warmup_steps: 10,
//!     total_steps: 200,
//!     micro_batch: 4,
//!     grad_accum: 2, // 8 sequences per optimizer step
//!     ..TrainSettings::default()
//! };
//! let mut trainer = Trainer::new(model, train_tokens, codec.pad_id(), settings)?;
//! while trainer.steps_done() < trainer.settings.total_steps {
//!     let s = trainer.step()?;
//!     println!(
//!         "step {} loss {:.4} lr {:.2e} grad norm {:.3} ({:.0} tokens/s)",
//!         s.step, s.loss, s.lr, s.grad_norm, s.tokens as f64 / s.seconds
//!     );
//!     if s.step % 100 == 0 {
//!         // Adapter, optimizer moments and data position; Trainer::resume continues exactly.
//!         trainer.save_checkpoint(Path::new("runs/hydra/checkpoint"))?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ### 6. Evaluate
//!
//! [`Trainer::evaluate`](train::Trainer::evaluate) gives the mean loss per trained-on token
//! of held-out examples (no gradients), overall and per category.
//!
//! ```no_run
//! # use hydralora_model::train::Trainer;
//! # fn run(trainer: &Trainer, eval_tokens: &[hydralora_model::data::TokenizedExample]) -> hydralora_model::Result<()> {
//! let eval = trainer.evaluate(eval_tokens)?;
//! println!("eval loss {:.4} over {} tokens", eval.loss, eval.tokens);
//! for (category, loss) in &eval.per_category {
//!     println!("  {category}: {loss:.4}");
//! }
//! # Ok(()) }
//! ```
//!
//! ### 7. Save the adapter
//!
//! [`adapter::save_adapter`] writes `adapter_config.json` and `adapter_model.safetensors`.
//! A LoRA adapter is in PEFT's format (`...q_proj.lora_A.weight`, `...lora_B.weight`), so
//! `peft` loads it, and [`adapter::merge_lora`] folds it into the base weights. A HydraLoRA
//! adapter uses the official HydraLoRA layout: one `lora_A`, the experts' B as
//! `lora_B0` .. `lora_B{E-1}`, the router `lora_route`, and `lora_nums` = E in the config.
//!
//! ```no_run
//! use std::path::Path;
//! use hydralora_model::adapter::save_adapter;
//! # fn run(trainer: &hydralora_model::train::Trainer) -> hydralora_model::Result<()> {
//! save_adapter(&trainer.model, Path::new("runs/hydra/adapter"))?;
//! # Ok(()) }
//! ```
//!
//! ### 8. Load it back
//!
//! [`adapter::load_adapter`] reads either format onto a freshly loaded base model. Every
//! tensor the config implies must be in the file with the right shape, and nothing else; the
//! errors name the tensor and both shapes.
//!
//! ```no_run
//! use std::path::Path;
//! use hydralora_model::adapter::load_adapter;
//! use hydralora_model::{engine::Device, Llama, Method};
//! # fn main() -> hydralora_model::Result<()> {
//! # let device = Device::new()?;
//! let mut model = Llama::load(&device, "models/TinyLlama-1.1B")?;
//! let cfg = load_adapter(&mut model, Path::new("runs/hydra/adapter"))?;
//! assert_eq!(cfg.method, Method::Hydra);
//! # Ok(()) }
//! ```
//!
//! ### 9. Generate
//!
//! [`generate()`] decodes greedily (`temperature` 0) or samples (temperature, top-k, top-p,
//! seeded), with a KV cache, until a stop token or `max_new_tokens`; the callback sees each
//! token as it comes. Give the prompt the way training saw it: the same template, and
//! [`data::encode_prompt`] (BOS + prompt tokens).
//!
//! ```no_run
//! use hydralora_model::data::{encode_prompt, PromptTemplate};
//! use hydralora_model::{engine::Device, generate, HfCodec, Llama, ModelError};
//! use hydralora_model::{SamplingConfig, TextCodec};
//! # fn main() -> hydralora_model::Result<()> {
//! # let device = Device::new()?;
//! # let model = Llama::load(&device, "models/TinyLlama-1.1B")?;
//! # let codec = HfCodec::from_dir("models/TinyLlama-1.1B", &model.config)?;
//! let text = PromptTemplate::alpaca()
//!     .render("Name three colours.", "")
//!     .map_err(ModelError::Input)?;
//! let prompt = encode_prompt(&codec, &text)?;
//! let sampling = SamplingConfig {
//!     max_new_tokens: 64,
//!     stop_tokens: codec.eos_id().into_iter().collect(),
//!     ..SamplingConfig::default() // greedy
//! };
//! let mut stream = codec.tokenizer().decode_stream();
//! let tokens = generate(&model, &prompt, &sampling, |id| {
//!     if let Ok(Some(piece)) = stream.step(id) {
//!         print!("{piece}");
//!     }
//!     true // false stops early
//! })?;
//! println!("\n{} tokens: {:?}", tokens.len(), codec.decode(&tokens)?);
//! # Ok(()) }
//! ```
//!
//! ## Training in the background of an application
//!
//! A desktop app cannot stop drawing for the length of a step. Hand the trainer to a
//! [`TrainerWorker`](train::TrainerWorker): it runs on its own thread, and every call returns
//! at once. Build the engine's device on the app's own `wgpu::Device` and `Queue` with
//! [`Device::from_wgpu`](engine::Device::from_wgpu) to train on the GPU the app renders with
//! (`examples/desktop.rs` does this with eframe).
//!
//! ```no_run
//! use std::time::Duration;
//! use hydralora_model::train::{TrainEvent, Trainer, TrainerWorker, WorkerOptions};
//! # fn app(trainer: Trainer) -> hydralora_model::Result<()> {
//! let worker = TrainerWorker::spawn_with(
//!     trainer,
//!     WorkerOptions { router_stats: true, ..Default::default() },
//! );
//! worker.run(500); // train on its own; steer with pause(), resume(), cancel()
//! // Each frame: take the events that came in, without waiting.
//! while let Some(event) = worker.try_event() {
//!     if let TrainEvent::Step(p) = event {
//!         println!("step {} loss {:.3} {:.0} tokens/s", p.stats.step, p.stats.loss, p.tokens_per_second);
//!     }
//! }
//! // Between two steps: save (or evaluate, or generate from `trainer.model`).
//! let mut saved = worker.save_adapter("runs/adapter");
//! // ... draw frames; poll `saved.try_take()`, or block:
//! saved.wait()?;
//! let trainer = worker.finish()?; // the trainer back, after its last whole step
//! # let _ = (trainer, Duration::ZERO); Ok(()) }
//! ```
//!
//! ## Next steps
//!
//! - Resume an interrupted run from its checkpoint: [`Trainer::resume`](train::Trainer::resume).
//! - See how a HydraLoRA router splits the work: [`adapter::record_gates`],
//!   [`adapter::router_stats`], [`adapter::gates_by_category`].
//! - Train every weight instead of an adapter: [`train::Trainable::Full`].
//! - Check the model against Hugging Face `transformers` outputs: [`verify`].
//! - Measure speed and memory on random weights: [`bench`](mod@bench).
//! - The end-to-end demo on synthetic tasks: [`demo`].

#![warn(missing_docs)]

/// The engine this crate runs on (`hydralora-engine`): devices, tensors, autodiff, AdamW.
pub use hydralora_engine as engine;

pub mod adapter;
pub mod bench;
pub mod data;
pub mod demo;
pub mod error;
pub mod llama;
pub mod report;
pub mod train;
pub mod verify;

pub use adapter::{Adapter, AdapterConfig, Dropout, Method};
pub use error::{ModelError, Result};
pub use llama::codec::{CharCodec, HfCodec, TextCodec};
pub use llama::config::{GenerationConfig, Llama3RopeScaling, LlamaConfig};
pub use llama::generate::{generate, generate_async, generate_greedy_batch, SamplingConfig};
pub use llama::precision::Precision;
pub use llama::tokenizer::{DecodeStream, Tokenizer};
pub use llama::weights::{
    llama_tensor_shapes, save_model_folder, write_atomically, write_safetensors, ModelWeights,
    WeightFile,
};
pub use llama::{KvCache, Layer, Linear, Llama, TARGET_MODULES};
