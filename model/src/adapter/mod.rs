//! LoRA and HydraLoRA adapters on a [`Llama`]: [`forward`] (the adapted layer's forward),
//! [`config`] (the settings and `adapter_config.json`), [`attach`] and the trainable
//! parameters (here), [`files`] (adapter folders in PEFT's layout for LoRA and the official
//! HydraLoRA layout: `lora_A`, `lora_B0..lora_B{E-1}` for E experts, `lora_route`,
//! `lora_nums`), [`gguf`] (LoRA adapters as llama.cpp's GGUF LoRA files), [`approximate`] (a
//! LoRA standing in for a HydraLoRA adapter), [`router`] (what the routers do) and [`merge`] (folding LoRA into the base).
//!
//! The model carries what [`forward`] and [`config`] define (each [`Linear`](crate::Linear)
//! an optional [`Adapter`], the [`Llama`] its [`AdapterConfig`]), so those two import nothing
//! of the model but its module names; the rest works on a [`Llama`] and walks its adapters
//! with [`Llama::adapters`].

pub mod approximate;
pub mod config;
pub mod files;
pub mod forward;
pub mod gguf;
pub mod merge;
pub mod router;

use std::sync::{Arc, Mutex};

use hydralora_engine::{rng::Rng, Tensor};

use crate::error::Result;
use crate::llama::{Llama, TARGET_MODULES};

pub use config::{AdapterConfig, Method};
pub use files::{
    adapter_files, adapter_files_from, adapter_tensors, load_adapter, module_key,
    read_adapter_tensor, save_adapter, AdapterFiles, AdapterTensor, Part, ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
};
pub use forward::{dropout_mask, Adapter, Dropout};
pub use gguf::{hydra_is_not_lora, is_gguf_file, HostLora, LoraPair};
pub use merge::{merge_lora, merge_lora_gguf, GgufMergeSummary};
pub use router::{
    balance_loss, gates_by_category, gates_by_category_and_layer, gates_by_category_async,
    record_gates, recorded_gates, router_stats, router_stats_async, CategoryGates, RouterStats,
};

/// Adds a fresh adapter to every target module: A and the router Kaiming-uniform (bound
/// 1/sqrt(d_in), as PEFT and the HydraLoRA code), every B zero, so the model is unchanged.
/// An adapter already on a targeted layer is replaced (attach to a freshly loaded model).
/// Fails with [`crate::ModelError::Config`] when `cfg` is invalid ([`AdapterConfig::validate`]).
///
/// ```no_run
/// use hydralora_model::adapter::{attach, trainable_count};
/// use hydralora_model::{engine::Device, AdapterConfig, Llama};
/// # fn main() -> hydralora_model::Result<()> {
/// let device = Device::new()?;
/// let mut model = Llama::load(&device, "models/TinyLlama-1.1B")?;
/// attach(&mut model, &AdapterConfig::lora(8, 16.0, &["q_proj", "v_proj"]), 0)?;
/// // Per layer and module: A [r, d_in] + B [d_out, r].
/// println!("{} trainable parameters", trainable_count(&model));
/// # Ok(()) }
/// ```
pub fn attach(model: &mut Llama, cfg: &AdapterConfig, seed: u64) -> Result<()> {
    cfg.validate()?;
    let device = model.device().clone();
    let mut rng = Rng::new(seed);
    let dropout_seed = Arc::new(std::sync::atomic::AtomicU64::new(seed));
    for (l, layer) in model.layers.iter_mut().enumerate() {
        for (m, module) in cfg.targets.iter().enumerate() {
            let linear = layer.linear_mut(module).expect("targets were validated");
            let (d_in, d_out) = (linear.d_in(), linear.d_out());
            let bound = 1.0 / (d_in as f32).sqrt();
            let mut uniform = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| bound * (2.0 * rng.next_f32() - 1.0))
                    .collect()
            };
            // A's rows, then the router's (drawn in that order, so LoRA and HydraLoRA
            // start from the same A for a given seed).
            let router_rows = match cfg.method {
                Method::Hydra => cfg.experts,
                Method::Lora => 0,
            };
            let rows = cfg.r + router_rows;
            let down = Tensor::from_slice(&device, &uniform(rows * d_in), &[rows, d_in])?;
            let b = Tensor::zeros(&device, &[d_out, cfg.experts * cfg.r])?;
            let dropout = Dropout {
                p: cfg.dropout,
                seed: dropout_seed.clone(),
                salt: (l * TARGET_MODULES.len() + m) as u64,
            };
            linear.adapter = Some(new_adapter(cfg, down.into_param(), b.into_param(), dropout));
        }
    }
    model.adapter = Some(cfg.clone());
    Ok(())
}

fn new_adapter(cfg: &AdapterConfig, down: Tensor, b: Tensor, dropout: Dropout) -> Adapter {
    Adapter {
        down,
        b,
        rank: cfg.r,
        routed: cfg.method == Method::Hydra,
        scale: cfg.scale(),
        top_k: cfg.top_k,
        last_gates: Arc::new(Mutex::new(None)),
        record_gates: false,
        dropout,
    }
}

/// The trainable tensors (what the optimizer updates), in model order.
pub fn trainable_params(model: &Llama) -> Vec<Tensor> {
    model
        .adapters()
        .flat_map(|(_, _, adapter)| adapter.params().into_iter().cloned())
        .collect()
}

/// Number of trainable scalars.
pub fn trainable_count(model: &Llama) -> usize {
    trainable_params(model).iter().map(Tensor::numel).sum()
}

/// Sets the seed of every adapter's dropout masks (the trainer does, per micro-batch).
pub fn set_dropout_seed(model: &Llama, seed: u64) {
    // One seed, shared by all: setting the first adapter's sets every one's.
    if let Some((_, _, adapter)) = model.adapters().next() {
        adapter
            .dropout
            .seed
            .store(seed, std::sync::atomic::Ordering::Relaxed);
    }
}
