//! The base model: a Hugging Face LLaMA model folder and what is made of it.
//!
//! Host side: [`config`] reads `config.json` / `generation_config.json`, [`weights`] reads and
//! writes safetensors weight files, [`gguf`] reads llama.cpp's GGUF files (weights, config and
//! vocabulary), [`tokenizer`] wraps `tokenizer.json` and [`codec`] puts
//! text <-> token ids behind one trait. On the GPU: [`Linear`] (a frozen linear layer that
//! may carry an adapter), the [`Llama`] decoder, and [`generate()`].

pub mod codec;
pub mod config;
pub mod decoder;
pub mod generate;
pub mod gguf;
pub mod layer;
pub mod linear;
pub mod precision;
pub mod tokenizer;
pub mod weights;

pub use codec::{load_codec, CharCodec, HfCodec, TextCodec, CHAR_CODEC_FILE};
pub use config::{GenerationConfig, Llama3RopeScaling, LlamaConfig};
pub use decoder::{weight_storage, KvCache, Llama};
pub use generate::{generate, generate_greedy_batch, SamplingConfig};
pub use layer::{Layer, TARGET_MODULES};
pub use linear::Linear;
pub use tokenizer::{DecodeStream, Tokenizer};
