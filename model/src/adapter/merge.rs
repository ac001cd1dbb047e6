//! Folding a LoRA adapter into its base model: W' = W + scale B A, written as a Hugging Face
//! model folder. A HydraLoRA adapter cannot be folded: its mixture of experts changes per token.

use std::path::Path;

use crate::adapter::{
    module_key, AdapterConfig, Method, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use crate::error::{ModelError, Result};
use crate::llama::config::LlamaConfig;
use crate::llama::weights::{llama_tensor_shapes, save_model_folder, ModelWeights, WeightFile};
use crate::llama::Layer;

/// Files copied beside the merged weights when the base folder has them.
const SIDE_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Writes `base + adapter` into `out` (model.safetensors + config.json + tokenizer files).
pub fn merge_lora(base_dir: &Path, adapter_dir: &Path, out: &Path) -> Result<()> {
    let cfg = AdapterConfig::from_file(&adapter_dir.join(ADAPTER_CONFIG_FILE))?;
    if cfg.method == Method::Hydra {
        return Err(ModelError::Input(format!(
            "`{}` is a HydraLoRA adapter ({} experts and a router): its mixture of experts depends on each token, \
             so no single weight matrix equals it and it cannot be merged; load the base model with the adapter instead",
            adapter_dir.display(),
            cfg.experts
        )));
    }
    let config = LlamaConfig::from_dir(base_dir)?;
    let base = ModelWeights::open(base_dir)?;
    base.check_llama(&config)?;
    let adapter = WeightFile::open(adapter_dir.join(ADAPTER_WEIGHTS_FILE))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, shape) in llama_tensor_shapes(&config) {
        let mut w = base.expect_f32(&name, &shape)?;
        if let Some((layer, module)) = adapted_module(&name, &cfg) {
            fold(
                &mut w,
                &shape,
                &adapter,
                &module_key(layer, module),
                cfg.scale(),
            )?;
        }
        tensors.push((name, shape, w));
    }
    let views: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    std::fs::create_dir_all(out).map_err(|e| ModelError::io("create", out, e))?;
    save_model_folder(out, &config, &views)?;
    for file in SIDE_FILES {
        let src = base_dir.join(file);
        if src.is_file() {
            std::fs::copy(&src, out.join(file)).map_err(|e| ModelError::io("copy", &src, e))?;
        }
    }
    Ok(())
}

/// (layer, module) when `name` is the weight of a module the adapter targets.
fn adapted_module<'a>(name: &str, cfg: &'a AdapterConfig) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let layer: usize = rest.split('.').next()?.parse().ok()?;
    cfg.targets
        .iter()
        .find(|m| name == format!("{}.weight", Layer::module_path(layer, m)))
        .map(|m| (layer, m.as_str()))
}

/// w [d_out, d_in] += scale * B [d_out, r] A [r, d_in], accumulated in f64.
fn fold(w: &mut [f32], shape: &[usize], adapter: &WeightFile, key: &str, scale: f32) -> Result<()> {
    let (d_out, d_in) = (shape[0], shape[1]);
    let a_name = format!("{key}.lora_A.weight");
    let r = adapter.shape(&a_name).map_or(0, |s| s[0]);
    let a = adapter.expect_f32(&a_name, &[r, d_in])?;
    let b = adapter.expect_f32(&format!("{key}.lora_B.weight"), &[d_out, r])?;
    for o in 0..d_out {
        for i in 0..d_in {
            let delta: f64 = (0..r)
                .map(|k| b[o * r + k] as f64 * a[k * d_in + i] as f64)
                .sum();
            w[o * d_in + i] = (w[o * d_in + i] as f64 + scale as f64 * delta) as f32;
        }
    }
    Ok(())
}
