//! Folding a LoRA adapter into its base model: W' = W + scale B A, written as a Hugging Face
//! model folder or as one GGUF model file llama.cpp and Ollama run. The base is a Hugging Face
//! folder or a GGUF model; the adapter a PEFT folder or a llama.cpp GGUF LoRA file. A
//! HydraLoRA adapter cannot be folded: its mixture of experts changes per token.

use std::collections::BTreeMap;
use std::path::Path;

use hydralora_engine::DType;

use crate::adapter::gguf::{module_dims, HostLora};
use crate::error::{ModelError, Result};
use crate::llama::config::LlamaConfig;
use crate::llama::gguf::export::{
    gguf_tensor, llama_metadata, merged_storage, rope_freqs, vocab_metadata,
};
use crate::llama::gguf::file::{GgmlType, MetaValue};
use crate::llama::gguf::write::{meta_string, write_gguf, TensorToWrite};
use crate::llama::gguf::{gguf_path, GgufModel};
use crate::llama::weights::{llama_tensor_shapes, save_model_folder, ModelWeights};
use crate::llama::{Layer, TARGET_MODULES};

/// Files copied beside the merged weights when the base folder has them.
const SIDE_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// A base model's weights on the host, from a Hugging Face folder or a GGUF file.
enum Base {
    Folder(ModelWeights, LlamaConfig),
    Gguf(GgufModel),
}

impl Base {
    fn open(path: &Path) -> Result<Self> {
        if let Some(file) = gguf_path(path) {
            return Ok(Base::Gguf(GgufModel::open(file)?));
        }
        let config = LlamaConfig::from_dir(path)?;
        let weights = ModelWeights::open(path)?;
        weights.check_llama(&config)?;
        Ok(Base::Folder(weights, config))
    }

    fn config(&self) -> &LlamaConfig {
        match self {
            Base::Folder(_, config) => config,
            Base::Gguf(model) => model.config(),
        }
    }

    /// Hugging Face tensor `name` as f32, Hugging Face row order.
    fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self {
            Base::Folder(weights, _) => weights.expect_f32(name, shape),
            Base::Gguf(model) => model.read_f32(name, shape),
        }
    }
}

/// The base's tensors, Hugging Face names and shapes, with `adapter` folded in; each is handed
/// to `take` as it is made, so only one is held as f32 at a time.
fn merged_tensors(
    base: &Base,
    adapter: &HostLora,
    mut take: impl FnMut(String, Vec<usize>, Vec<f32>) -> Result<()>,
) -> Result<()> {
    let config = base.config();
    for (name, shape) in llama_tensor_shapes(config) {
        let mut w = base.read_f32(&name, &shape)?;
        if let Some((layer, module)) = adapted_module(&name) {
            if let Some(pair) = adapter.pair(layer, module) {
                let (d_in, d_out) = module_dims(config, module);
                fold(
                    &mut w,
                    d_out,
                    d_in,
                    &pair.a,
                    &pair.b,
                    adapter.config.r,
                    adapter.config.scale(),
                );
            }
        }
        take(name, shape, w)?;
    }
    Ok(())
}

/// Writes `base + adapter` into the folder `out` as a Hugging Face model (model.safetensors,
/// config.json, and the tokenizer files of a folder base).
pub fn merge_lora(base_path: &Path, adapter_path: &Path, out: &Path) -> Result<()> {
    let base = Base::open(base_path)?;
    let adapter = HostLora::open(adapter_path, base.config())?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    merged_tensors(&base, &adapter, |name, shape, w| {
        tensors.push((name, shape, w));
        Ok(())
    })?;
    let views: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    std::fs::create_dir_all(out).map_err(|e| ModelError::io("create", out, e))?;
    save_model_folder(out, base.config(), &views)?;
    if let Base::Folder(..) = base {
        for file in SIDE_FILES {
            let src = base_path.join(file);
            if src.is_file() {
                std::fs::copy(&src, out.join(file)).map_err(|e| ModelError::io("copy", &src, e))?;
            }
        }
    }
    Ok(())
}

/// What [`merge_lora_gguf`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufMergeSummary {
    /// How many tensors each GGUF type stores.
    pub tensor_types: BTreeMap<String, usize>,
    /// Where the vocabulary came from: the GGUF base, the base's `tokenizer.json`, or none.
    pub vocabulary: String,
}

/// Writes `base + adapter` as one GGUF model file `out` (atomically), the matrices stored in
/// `weights` (see [`merged_storage`]): llama hyper-parameters, the vocabulary (a GGUF base's
/// `tokenizer.*` metadata as it is; a folder base's `tokenizer.json`, byte-level BPE only, see
/// [`vocab_metadata`]; `tokenizer.ggml.model` = `none` when the base has no tokenizer, so
/// llama.cpp runs it on token ids only), llama.cpp's q/k row order, and Llama 3's RoPE
/// factors. A folder base's `chat_template` goes into `tokenizer.chat_template`.
pub fn merge_lora_gguf(
    base_path: &Path,
    adapter_path: &Path,
    out: &Path,
    weights: DType,
) -> Result<GgufMergeSummary> {
    if !DType::WEIGHT_FORMATS.contains(&weights) {
        return Err(ModelError::Input(format!(
            "`{}` is no weight format for a GGUF file",
            weights.name()
        )));
    }
    let base = Base::open(base_path)?;
    let config = base.config().clone();
    let adapter = HostLora::open(adapter_path, &config)?;
    let name = base_path
        .file_stem()
        .map_or("merged".into(), |s| s.to_string_lossy().to_string());
    let mut metadata = llama_metadata(&config, &name, weights);
    let vocabulary = match &base {
        Base::Gguf(model) => {
            let copied: Vec<(String, MetaValue)> = model
                .file()
                .metadata()
                .iter()
                .filter(|(key, _)| key.starts_with("tokenizer."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let what = if copied.is_empty() {
                "none"
            } else {
                "copied from the GGUF base"
            };
            if copied.is_empty() {
                metadata.push(meta_string("tokenizer.ggml.model", "none"));
            }
            metadata.extend(copied);
            what
        }
        Base::Folder(..) => match vocab_metadata(base_path, &config)? {
            Some(vocab) => {
                metadata.extend(vocab);
                "from the base's tokenizer.json"
            }
            None => {
                metadata.push(meta_string("tokenizer.ggml.model", "none"));
                "none"
            }
        },
    };

    let layers = config.num_hidden_layers;
    let mut tensors: Vec<TensorToWrite> = Vec::new();
    if let Some(factors) = rope_freqs(&config) {
        tensors.push(TensorToWrite::encode(
            "rope_freqs.weight",
            &[factors.len()],
            GgmlType::F32,
            &factors,
        )?);
    }
    merged_tensors(&base, &adapter, |name, shape, w| {
        let gguf = crate::llama::gguf::gguf_name(&name);
        let ggml_type = merged_storage(&gguf, &shape, weights, layers);
        tensors.push(gguf_tensor(&config, &name, &shape, &w, ggml_type)?);
        Ok(())
    })?;
    let mut tensor_types = BTreeMap::new();
    for t in &tensors {
        *tensor_types
            .entry(t.ggml_type.name().to_string())
            .or_insert(0) += 1;
    }
    write_gguf(out, &metadata, &tensors)?;
    Ok(GgufMergeSummary {
        tensor_types,
        vocabulary: vocabulary.into(),
    })
}

/// (layer, module) when `name` is the weight of one of a layer's linear modules.
fn adapted_module(name: &str) -> Option<(usize, &'static str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let layer: usize = rest.split('.').next()?.parse().ok()?;
    TARGET_MODULES
        .into_iter()
        .find(|m| name == format!("{}.weight", Layer::module_path(layer, m)))
        .map(|m| (layer, m))
}

/// w [d_out, d_in] += scale * B [d_out, r] A [r, d_in], accumulated in f64.
fn fold(w: &mut [f32], d_out: usize, d_in: usize, a: &[f32], b: &[f32], r: usize, scale: f32) {
    for o in 0..d_out {
        let b_row = &b[o * r..(o + 1) * r];
        for i in 0..d_in {
            let delta: f64 = (0..r)
                .map(|k| b_row[k] as f64 * a[k * d_in + i] as f64)
                .sum();
            w[o * d_in + i] = (w[o * d_in + i] as f64 + scale as f64 * delta) as f32;
        }
    }
}
