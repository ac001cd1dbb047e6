//! A LLaMA written as one GGUF model file that llama.cpp and Ollama run as it is: the
//! `llama.*` hyper-parameters, the tokenizer's vocabulary (`tokenizer.ggml.*`), the tensors
//! under GGUF names with llama.cpp's q/k row order, each stored in the type
//! [`merged_storage`] picks for the requested weight format.

use std::path::Path;

use hydralora_engine::DType;
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::llama::config::LlamaConfig;
use crate::llama::gguf::file::{GgmlType, MetaValue};
use crate::llama::gguf::write::{meta_f32, meta_string, meta_u32, TensorToWrite};
use crate::llama::gguf::{gguf_name, permute_rows};

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// The GGUF type a tensor of the merged model is stored in, for weight format `weights`:
/// norms (and every vector) f32; matrices in `weights`, except that a 4-bit format keeps
/// `output.weight` in q6_K, and q4_K (llama.cpp's Q4_K_M mix) also `attn_v` and `ffn_down` of
/// the layers llama.cpp's `use_more_bits` picks. A matrix whose rows are not whole blocks
/// of the chosen type falls back to q8_0, then f16.
pub fn merged_storage(gguf_name: &str, shape: &[usize], weights: DType, layers: usize) -> GgmlType {
    if shape.len() < 2 {
        return GgmlType::F32;
    }
    let chosen = match weights {
        DType::F16 => GgmlType::F16,
        DType::BF16 => GgmlType::BF16,
        DType::Q8_0 => GgmlType::Q8_0,
        DType::Q4_0 if gguf_name == "output.weight" => GgmlType::Q6K,
        DType::Q4_0 => GgmlType::Q4_0,
        DType::Q4K if gguf_name == "output.weight" || more_bits(gguf_name, layers) => GgmlType::Q6K,
        DType::Q4K => GgmlType::Q4K,
        DType::Q6K => GgmlType::Q6K,
        _ => GgmlType::F32,
    };
    let row = shape[shape.len() - 1];
    [chosen, GgmlType::Q8_0, GgmlType::F16]
        .into_iter()
        .find(|t| row % t.block_len() == 0)
        .unwrap_or(GgmlType::F16)
}

/// llama.cpp's Q4_K_M: `attn_v` and `ffn_down` in q6_K for the first and last eighth of the
/// layers and every third one between (`use_more_bits`).
fn more_bits(gguf_name: &str, layers: usize) -> bool {
    let Some((layer, rest)) = gguf_name
        .strip_prefix("blk.")
        .and_then(|s| s.split_once('.'))
    else {
        return false;
    };
    let Ok(i) = layer.parse::<usize>() else {
        return false;
    };
    matches!(rest, "attn_v.weight" | "ffn_down.weight")
        && (i < layers / 8 || i >= 7 * layers / 8 || (i as isize - (layers / 8) as isize) % 3 == 2)
}

/// llama.cpp's `llama_ftype` of a weight format (`general.file_type`).
pub fn file_type(weights: DType) -> u32 {
    match weights {
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q8_0 => 7,
        DType::Q4K => 15, // Q4_K_M
        DType::Q6K => 18,
        DType::BF16 => 32,
        _ => 0,
    }
}

/// The `general.*` and `llama.*` metadata of a model with hyper-parameters `config`.
pub fn llama_metadata(
    config: &LlamaConfig,
    name: &str,
    weights: DType,
) -> Vec<(String, MetaValue)> {
    let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let head_dim = u32_of(config.head_dim());
    vec![
        meta_string("general.architecture", "llama"),
        meta_string("general.type", "model"),
        meta_string("general.name", name),
        meta_u32("llama.block_count", u32_of(config.num_hidden_layers)),
        meta_u32(
            "llama.context_length",
            u32_of(config.max_position_embeddings),
        ),
        meta_u32("llama.embedding_length", u32_of(config.hidden_size)),
        meta_u32(
            "llama.feed_forward_length",
            u32_of(config.intermediate_size),
        ),
        meta_u32(
            "llama.attention.head_count",
            u32_of(config.num_attention_heads),
        ),
        meta_u32(
            "llama.attention.head_count_kv",
            u32_of(config.num_key_value_heads),
        ),
        meta_f32("llama.rope.freq_base", config.rope_theta as f32),
        meta_f32(
            "llama.attention.layer_norm_rms_epsilon",
            config.rms_norm_eps as f32,
        ),
        meta_u32("llama.attention.key_length", head_dim),
        meta_u32("llama.attention.value_length", head_dim),
        meta_u32("llama.vocab_size", u32_of(config.vocab_size)),
        meta_u32("llama.rope.dimension_count", head_dim),
        meta_u32("general.file_type", file_type(weights)),
        meta_u32(
            "general.quantization_version",
            crate::adapter::gguf::QUANTIZATION_VERSION,
        ),
    ]
}

/// Llama 3's RoPE frequency factors (`rope_freqs.weight`, `[head_dim / 2]`): each plain
/// inverse frequency over its scaled one, which llama.cpp divides its frequencies by. None
/// without Llama 3 scaling.
pub fn rope_freqs(config: &LlamaConfig) -> Option<Vec<f32>> {
    let scaling = config.rope_scaling.as_ref()?;
    let plain = LlamaConfig {
        rope_scaling: None,
        ..config.clone()
    }
    .inv_freq();
    Some(
        plain
            .iter()
            .map(|&f| (f / scaling.scale(f)) as f32)
            .collect(),
    )
}

/// Hugging Face tensor `name` `[rows, cols]` (f32 values) as the GGUF tensor a llama.cpp model
/// file holds: its GGUF name, q/k rows permuted, stored as `ggml_type`.
pub fn gguf_tensor(
    config: &LlamaConfig,
    name: &str,
    shape: &[usize],
    values: &[f32],
    ggml_type: GgmlType,
) -> Result<TensorToWrite<'static>> {
    let heads = if name.ends_with("self_attn.q_proj.weight") {
        Some(config.num_attention_heads)
    } else if name.ends_with("self_attn.k_proj.weight") {
        Some(config.num_key_value_heads)
    } else {
        None
    };
    let gguf = gguf_name(name);
    let mut tensor = TensorToWrite::encode(gguf.clone(), shape, ggml_type, values)?;
    if let Some(heads) = heads {
        let rows = shape[0];
        let permuted = permute_rows(&tensor.bytes, rows, rows / heads).ok_or_else(|| {
            ModelError::Input(format!("`{gguf}`: rows do not split into {heads} heads"))
        })?;
        tensor.bytes = permuted.into();
    }
    Ok(tensor)
}

/// The `tokenizer.ggml.*` metadata of the byte-level BPE `tokenizer.json` in `dir` (with the
/// chat template and special tokens of `tokenizer_config.json` when present), as llama.cpp's
/// `convert_hf_to_gguf.py` writes it: tokens by id (`[PAD{i}]` for ids the vocabulary lacks,
/// up to the model's `vocab_size`), types (added special tokens control, other added tokens
/// user-defined), merges as `"a b"`, the pre-tokenizer (`gpt-2` or `llama-bpe`), bos/eos.
/// None when `dir` has no `tokenizer.json`; an error names what is not byte-level BPE.
pub fn vocab_metadata(
    dir: &Path,
    config: &LlamaConfig,
) -> Result<Option<Vec<(String, MetaValue)>>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(None);
    }
    let not_built = |why: String| ModelError::Tokenizer {
        file: path.clone(),
        why: format!(
            "{why}; only byte-level BPE tokenizers (GPT-2, Llama 3 and their kin) are written \
             to GGUF here: merge into a Hugging Face folder and convert it with llama.cpp's \
             `convert_hf_to_gguf.py`, or merge onto a GGUF base"
        ),
    };
    let text = std::fs::read(&path).map_err(|e| ModelError::io("read", &path, e))?;
    let json: Value = serde_json::from_slice(&text).map_err(|e| ModelError::Tokenizer {
        file: path.clone(),
        why: e.to_string(),
    })?;
    let model = &json["model"];
    if model["type"] != "BPE" || model["byte_fallback"] == Value::Bool(true) {
        return Err(not_built(format!(
            "the tokenizer model is {} (byte_fallback {})",
            model["type"], model["byte_fallback"]
        )));
    }
    let pre = pre_tokenizer_name(&json["pre_tokenizer"]).ok_or_else(|| {
        not_built(format!(
            "the pre-tokenizer {} is not one llama.cpp names here",
            json["pre_tokenizer"]
        ))
    })?;

    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| not_built("`model.vocab` is not an object".into()))?;
    let mut by_id: Vec<Option<(String, i32)>> = Vec::new();
    let mut place = |id: u64, token: &str, kind: i32| -> Result<()> {
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < (1 << 24))
            .ok_or_else(|| {
                not_built(format!(
                    "token `{token}` has id {id}, beyond any vocabulary"
                ))
            })?;
        if by_id.len() <= id {
            by_id.resize(id + 1, None);
        }
        by_id[id] = Some((token.to_string(), kind));
        Ok(())
    };
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| not_built(format!("token `{token}` has no integer id")))?;
        place(id, token, TOKEN_NORMAL)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(not_built("an added token has no id or content".into()));
        };
        let kind = if added["special"] == Value::Bool(true) {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
        place(id, content, kind)?;
    }
    if by_id.len() > config.vocab_size {
        return Err(not_built(format!(
            "the tokenizer has ids up to {}, beyond the model's vocab_size {}",
            by_id.len() - 1,
            config.vocab_size
        )));
    }
    by_id.resize(config.vocab_size, None);
    let (tokens, types): (Vec<MetaValue>, Vec<MetaValue>) = by_id
        .into_iter()
        .enumerate()
        .map(|(i, entry)| match entry {
            Some((token, kind)) => (MetaValue::String(token), MetaValue::I32(kind)),
            None => (
                MetaValue::String(format!("[PAD{i}]")),
                MetaValue::I32(TOKEN_UNUSED),
            ),
        })
        .unzip();
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| not_built("`model.merges` is not a list".into()))?
        .iter()
        .map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(pair) => match (
                pair.first().and_then(Value::as_str),
                pair.get(1).and_then(Value::as_str),
            ) {
                (Some(a), Some(b)) if pair.len() == 2 => Some(format!("{a} {b}")),
                _ => None,
            },
            _ => None,
        })
        .map(|m| {
            m.map(MetaValue::String)
                .ok_or_else(|| not_built("a merge is not two symbols".into()))
        })
        .collect::<Result<Vec<_>>>()?;

    let mut meta = vec![
        meta_string("tokenizer.ggml.model", "gpt2"),
        meta_string("tokenizer.ggml.pre", pre),
        (
            "tokenizer.ggml.tokens".to_string(),
            MetaValue::Array(tokens.clone()),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            MetaValue::Array(types),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            MetaValue::Array(merges),
        ),
    ];
    let token_config: Value = std::fs::read(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let id_of = |key: &str| -> Option<u32> {
        let content = match &token_config[key] {
            Value::String(s) => s.as_str(),
            Value::Object(o) => o.get("content")?.as_str()?,
            _ => return None,
        };
        tokens
            .iter()
            .position(|t| t.as_str() == Some(content))
            .and_then(|i| u32::try_from(i).ok())
    };
    let bos = config.bos_token_id.or_else(|| id_of("bos_token"));
    let eos = config
        .eos_token_ids
        .first()
        .copied()
        .or_else(|| id_of("eos_token"));
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.unknown_token_id", id_of("unk_token")),
        ("tokenizer.ggml.padding_token_id", id_of("pad_token")),
    ] {
        if let Some(id) = id {
            meta.push(meta_u32(key, id));
        }
    }
    if let Some(flag) = token_config["add_bos_token"].as_bool() {
        meta.push(("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(flag)));
    }
    if let Some(template) = token_config["chat_template"].as_str() {
        meta.push(meta_string("tokenizer.chat_template", template));
    }
    Ok(Some(meta))
}

/// llama.cpp's name (`tokenizer.ggml.pre`) of a `tokenizer.json` pre-tokenizer: GPT-2's
/// byte-level split, or Llama 3's regex then byte-level.
fn pre_tokenizer_name(pre: &Value) -> Option<&'static str> {
    let byte_level = |v: &Value, regex: bool| {
        v["type"] == "ByteLevel" && v["use_regex"].as_bool().unwrap_or(true) == regex
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    let steps = pre["pretokenizers"]
        .as_array()
        .filter(|_| pre["type"] == "Sequence")?;
    match steps.as_slice() {
        [split, last]
            if split["type"] == "Split"
                && split["pattern"]["Regex"] == super::vocab::LLAMA3_SPLIT
                && byte_level(last, false) =>
        {
            Some("llama-bpe")
        }
        _ => None,
    }
}
