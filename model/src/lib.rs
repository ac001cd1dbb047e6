//! LLaMA with LoRA and HydraLoRA adapters on the hydralora engine.
//!
//! Host-side I/O (no GPU): [`config`] reads `config.json` / `generation_config.json`,
//! [`weights`] reads and writes safetensors checkpoints, [`tokenizer`] wraps `tokenizer.json`.

pub use hydralora_engine as engine;

pub mod adapter;
pub mod bench;
pub mod codec;
pub mod config;
pub mod data;
pub mod demo;
pub mod error;
pub mod generate;
pub mod linear;
pub mod llama;
pub mod memory;
pub mod merge;
pub mod report;
pub mod tokenizer;
pub mod train;
pub mod verify;
pub mod weights;

pub use adapter::{AdapterConfig, Method};
pub use codec::{CharCodec, HfCodec, TextCodec};
pub use config::{GenerationConfig, Llama3RopeScaling, LlamaConfig};
pub use error::{ModelError, Result};
pub use generate::{generate, SamplingConfig};
pub use linear::{Adapter, Dropout, Linear};
pub use llama::{KvCache, Layer, Llama, TARGET_MODULES};
pub use tokenizer::{DecodeStream, Tokenizer};
pub use weights::{
    llama_tensor_shapes, save_checkpoint, write_atomically, write_safetensors, Checkpoint,
    WeightFile,
};
