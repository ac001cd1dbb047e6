//! hydralora: LoRA and HydraLoRA fine-tuning of LLaMA-family models on any GPU.
pub use hydralora_engine as engine;
pub use hydralora_model as model;
