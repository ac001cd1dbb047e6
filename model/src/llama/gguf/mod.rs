//! LLaMA models in GGUF files, as llama.cpp writes and quantizes them.
//!
//! [`file`](mod@file) reads the container (checked against the file before anything is allocated);
//! this module reads a LLaMA from it: the hyper-parameters from the `llama.*` metadata, the
//! tensors under Hugging Face names, and llama.cpp's own row order of `attn_q` and `attn_k`
//! undone. [`vocab`] builds the tokenizer from the file's vocabulary.
//!
//! llama.cpp's `convert_hf_to_gguf.py` permutes the rows of each q/k head from Hugging Face's
//! halves layout (rotate_half: pairs `(j, j + hd/2)`) to adjacent pairs `(2j, 2j + 1)`, which
//! its RoPE rotates. A head's GGUF row `2j + s` is Hugging Face row `s hd/2 + j`; rows are
//! whole blocks in every ggml type, so the permutation is undone on the stored bytes, before
//! any dequantization.

pub mod export;
pub mod file;
pub mod vocab;
pub mod write;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use hydralora_engine::DType;

use crate::error::{ModelError, Result};
use crate::llama::config::{
    Llama3RopeScaling, LlamaConfig, CONFIG_FILE, DEFAULT_MAX_POSITION_EMBEDDINGS,
    DEFAULT_ROPE_THETA,
};
use crate::llama::weights::{check_llama_tensors, Present, StoredTensor};

pub use file::{GgmlType, GgufFile, GgufTensor, MetaValue};

use file::{shown, shown_value};

/// The name of a GGUF model in a folder (as the fixtures lay it out).
pub const GGUF_FILE: &str = "model.gguf";

/// The GGUF file `path` names, if any: `path` itself when it ends in `.gguf`, or the
/// `model.gguf` of a folder that has no `config.json`.
pub fn gguf_path(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        let file = path.join(GGUF_FILE);
        (!path.join(CONFIG_FILE).is_file() && file.is_file()).then_some(file)
    } else {
        path.extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
            .then(|| path.to_path_buf())
    }
}

/// A LLaMA in a GGUF file: its config, and its tensors under Hugging Face names.
#[derive(Debug)]
pub struct GgufModel {
    file: GgufFile,
    config: LlamaConfig,
}

impl GgufModel {
    /// Opens `path`, reads the LLaMA hyper-parameters from its metadata and checks every
    /// tensor's name and shape against them. Errors name the file, the key or tensor.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = read_config(&file)?;
        check_tensors(&file, &config)?;
        Ok(GgufModel { file, config })
    }

    /// The container.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The GGUF tensor of Hugging Face tensor `name`, checked against `shape` (row-major).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<&GgufTensor> {
        let gguf_name = gguf_name(name);
        let tensor = self
            .file
            .tensor(&gguf_name)
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: gguf_name.clone(),
                file: self.file.path().to_path_buf(),
                expected: Some(shape.to_vec()),
            })?;
        if tensor.shape() != shape {
            return Err(ModelError::TensorShape {
                tensor: gguf_name,
                file: self.file.path().to_path_buf(),
                expected: shape.to_vec(),
                found: tensor.shape(),
            });
        }
        Ok(tensor)
    }

    /// The stored bytes of Hugging Face tensor `name` [rows, cols] in its ggml type, rows in
    /// Hugging Face order (q/k rows un-permuted).
    pub fn blocks(&self, name: &str, shape: &[usize]) -> Result<(GgmlType, Cow<'_, [u8]>)> {
        let tensor = self.tensor(name, shape)?;
        let bytes = self.file.data(tensor)?;
        let heads = if name.ends_with("self_attn.q_proj.weight") {
            self.config.num_attention_heads
        } else if name.ends_with("self_attn.k_proj.weight") {
            self.config.num_key_value_heads
        } else {
            return Ok((tensor.ggml_type, Cow::Borrowed(bytes)));
        };
        let rows = shape[0];
        let unpermuted = unpermute_rows(bytes, rows, rows / heads).ok_or_else(|| {
            self.file.error(format!(
                "tensor `{}`: rows do not split into {heads} heads",
                tensor.name
            ))
        })?;
        Ok((tensor.ggml_type, Cow::Owned(unpermuted)))
    }

    /// Hugging Face tensor `name` as stored (q/k rows un-permuted), checked against `shape`.
    pub fn stored(&self, name: &str, shape: &[usize]) -> Result<StoredTensor> {
        let (ggml_type, bytes) = self.blocks(name, shape)?;
        Ok(StoredTensor {
            dtype: ggml_type.dtype(),
            bytes: bytes.into_owned(),
        })
    }

    /// The type most linear weights are stored in, as the engine names it (the frozen
    /// format the memory estimate assumes).
    pub fn main_format(&self) -> DType {
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for t in self.file.tensors().iter().filter(|t| t.dims.len() == 2) {
            match counts.iter_mut().find(|(ty, _)| *ty == t.ggml_type) {
                Some((_, n)) => *n += 1,
                None => counts.push((t.ggml_type, 1)),
            }
        }
        counts
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .map_or(DType::F32, |(ty, _)| ty.dtype())
    }

    /// Hugging Face tensor `name` as f32 values, row-major, checked against `shape`.
    pub fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (ggml_type, bytes) = self.blocks(name, shape)?;
        to_f32(ggml_type, &bytes).map_err(|why| {
            self.file
                .error(format!("tensor `{}`: {why}", gguf_name(name)))
        })
    }
}

/// The values of `bytes`, whole blocks of `ggml_type`, as f32 (the engine's dequantizer).
pub fn to_f32(ggml_type: GgmlType, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let dtype = ggml_type.dtype();
    let block = ggml_type.block_bytes();
    if bytes.len() % block != 0 {
        return Err(format!(
            "{} bytes are not whole {ggml_type} blocks of {block} bytes",
            bytes.len()
        ));
    }
    let numel = bytes.len() / block * ggml_type.block_len();
    hydralora_engine::quant::dequantize(dtype, bytes, numel).map_err(|e| e.to_string())
}

/// Hugging Face rows of a q or k weight from llama.cpp's: `bytes` holds `rows` equal rows,
/// heads of `head_dim` rows each, a head's row `2j + s` going to `s head_dim/2 + j`. None when
/// the rows do not split so.
pub fn unpermute_rows(bytes: &[u8], rows: usize, head_dim: usize) -> Option<Vec<u8>> {
    let half = head_dim / 2;
    // Output row `s half + j` of a head comes from its row `2j + s`.
    reorder_head_rows(bytes, rows, head_dim, |within| {
        2 * (within % half) + within / half
    })
}

/// llama.cpp's rows of a q or k weight from Hugging Face's: the inverse of
/// [`unpermute_rows`] (Hugging Face row `s head_dim/2 + j` of a head goes to `2j + s`), as
/// `convert_hf_to_gguf.py`'s `permute` does. None when the rows do not split so.
pub fn permute_rows(bytes: &[u8], rows: usize, head_dim: usize) -> Option<Vec<u8>> {
    let half = head_dim / 2;
    // Output row `2j + s` of a head comes from its row `s half + j`.
    reorder_head_rows(bytes, rows, head_dim, |within| {
        (within % 2) * half + within / 2
    })
}

/// `bytes`' `rows` equal rows reordered within each head of `head_dim` rows: output row
/// `within` of a head is the head's row `source(within)`. None when the rows do not split
/// into whole heads of an even size.
fn reorder_head_rows(
    bytes: &[u8],
    rows: usize,
    head_dim: usize,
    source: impl Fn(usize) -> usize,
) -> Option<Vec<u8>> {
    if rows == 0
        || head_dim == 0
        || rows % head_dim != 0
        || head_dim % 2 != 0
        || bytes.len() % rows != 0
    {
        return None;
    }
    let row_bytes = bytes.len() / rows;
    let mut out = vec![0u8; bytes.len()];
    for (r, dst) in out.chunks_exact_mut(row_bytes).enumerate() {
        let src = r / head_dim * head_dim + source(r % head_dim);
        dst.copy_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
    }
    Some(out)
}

/// The GGUF name of a Hugging Face LLaMA tensor name (itself when it is not one).
pub fn gguf_name(name: &str) -> String {
    const LAYER: [(&str, &str); 9] = [
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ];
    match name {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    if let Some((layer, rest)) = name
        .strip_prefix("model.layers.")
        .and_then(|s| s.split_once('.'))
    {
        if let Some((_, gguf)) = LAYER.iter().find(|(hf, _)| *hf == rest) {
            return format!("blk.{layer}.{gguf}");
        }
    }
    name.to_string()
}

/// The Hugging Face name of a GGUF LLaMA tensor name (itself when it is not one).
pub fn hf_name(name: &str) -> String {
    match name {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    if let Some((layer, rest)) = name.strip_prefix("blk.").and_then(|s| s.split_once('.')) {
        let candidate = format!("model.layers.{layer}.");
        for hf in [
            "input_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            let full = format!("{candidate}{hf}");
            if gguf_name(&full) == format!("blk.{layer}.{rest}") {
                return full;
            }
        }
    }
    name.to_string()
}

/// The GGUF tensor llama.cpp stores Llama 3.1-style RoPE frequency factors in.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Checks every tensor of `file` against `config`: the same check as a model folder's (see
/// [`check_llama_tensors`]), with GGUF names in its errors.
fn check_tensors(file: &GgufFile, config: &LlamaConfig) -> Result<()> {
    let named: Vec<(String, Vec<usize>)> = file
        .tensors()
        .iter()
        .filter(|t| t.name != ROPE_FREQS)
        .map(|t| (hf_name(&t.name), t.shape()))
        .collect();
    let present: Present = named
        .iter()
        .map(|(name, shape)| (name.as_str(), (shape.as_slice(), file.path())))
        .collect();
    check_llama_tensors(config, &present, file.path()).map_err(|e| match e {
        ModelError::MissingTensor {
            tensor,
            file,
            expected,
        } => ModelError::MissingTensor {
            tensor: gguf_name(&tensor),
            file,
            expected,
        },
        ModelError::TensorShape {
            tensor,
            file,
            expected,
            found,
        } => ModelError::TensorShape {
            tensor: gguf_name(&tensor),
            file,
            expected,
            found,
        },
        ModelError::UnexpectedTensor {
            tensor,
            file,
            shape,
        } => ModelError::UnexpectedTensor {
            tensor: gguf_name(&tensor),
            file,
            shape,
        },
        other => other,
    })
}

/// The `llama.*` hyper-parameters, the vocabulary size and the special tokens of `file`.
fn read_config(file: &GgufFile) -> Result<LlamaConfig> {
    let meta = Meta { file };
    let arch = meta.string("general.architecture")?;
    if arch != "llama" {
        return Err(file.error(format!(
            "holds a `{}` model (general.architecture); only `llama` models are read here",
            shown(arch)
        )));
    }
    if let Some(experts) = meta.optional_usize("llama.expert_count")? {
        if experts > 0 {
            return Err(file.error(format!(
                "`llama.expert_count` is {experts}: mixture-of-experts LLaMAs are not read here"
            )));
        }
    }
    let num_attention_heads = meta.usize("llama.attention.head_count")?;
    let hidden_size = meta.usize("llama.embedding_length")?;
    let head_dim = meta.optional_usize("llama.attention.key_length")?;
    if let (Some(k), Some(v)) = (
        head_dim,
        meta.optional_usize("llama.attention.value_length")?,
    ) {
        if k != v {
            return Err(file.error(format!(
                "`llama.attention.key_length` {k} and `value_length` {v} differ, which LLaMA does not do"
            )));
        }
    }
    let resolved_head_dim = head_dim.unwrap_or(hidden_size / num_attention_heads.max(1));
    if let Some(rope_dims) = meta.optional_usize("llama.rope.dimension_count")? {
        if rope_dims != resolved_head_dim {
            return Err(file.error(format!(
                "`llama.rope.dimension_count` is {rope_dims} but heads are {resolved_head_dim} wide: \
                 partial rotary embeddings are not read here"
            )));
        }
    }
    if let Some(kind) = file.get("llama.rope.scaling.type") {
        match kind.as_str() {
            Some("none") => {}
            _ => {
                return Err(file.error(format!(
                    "`llama.rope.scaling.type` is {kind:?}: only plain RoPE and Llama 3 \
                     frequency factors (`{ROPE_FREQS}`) are read here"
                )))
            }
        }
    }
    let vocab_size = match meta.optional_usize("llama.vocab_size")? {
        Some(v) => v,
        None => match file.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(tokens)) => tokens.len(),
            _ => file
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .ok_or_else(|| {
                    file.error("gives no vocabulary size (`llama.vocab_size`, `tokenizer.ggml.tokens` or `token_embd.weight`)")
                })?,
        },
    };
    let rope_theta = meta
        .optional_f64("llama.rope.freq_base")?
        .unwrap_or(DEFAULT_ROPE_THETA);
    let eos = meta.optional_token("tokenizer.ggml.eos_token_id")?;
    let eot = meta.optional_token("tokenizer.ggml.eot_token_id")?;
    let mut config = LlamaConfig {
        hidden_size,
        intermediate_size: meta.usize("llama.feed_forward_length")?,
        num_hidden_layers: meta.usize("llama.block_count")?,
        num_attention_heads,
        num_key_value_heads: meta
            .optional_usize("llama.attention.head_count_kv")?
            .unwrap_or(num_attention_heads),
        head_dim,
        rms_norm_eps: meta.f64("llama.attention.layer_norm_rms_epsilon")?,
        rope_theta,
        rope_scaling: None,
        vocab_size,
        max_position_embeddings: meta
            .optional_usize("llama.context_length")?
            .unwrap_or(DEFAULT_MAX_POSITION_EMBEDDINGS),
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        bos_token_id: meta.optional_token("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: eos
            .into_iter()
            .chain(eot.filter(|&t| Some(t) != eos))
            .collect(),
    };
    config.validate().map_err(|e| match e {
        ModelError::Config { field, why, .. } => file.error(format!(
            "its hyper-parameters do not fit together: {field} {why}"
        )),
        other => other,
    })?;
    if let Some(factors) = file.tensor(ROPE_FREQS) {
        config.rope_scaling = Some(llama3_scaling(file, factors, &config)?);
    }
    Ok(config)
}

/// The Llama 3 RoPE scaling whose frequency factors `rope_freqs.weight` holds.
///
/// llama.cpp stores the factors (`inv_freq / scaled inv_freq` per frequency), not the
/// parameters they came from; the parameters of the Llama 3.1 and 3.2 releases are tried and
/// the one reproducing the stored factors is taken.
fn llama3_scaling(
    file: &GgufFile,
    factors: &GgufTensor,
    config: &LlamaConfig,
) -> Result<Llama3RopeScaling> {
    let half = config.head_dim() / 2;
    if factors.shape() != [half] {
        return Err(ModelError::TensorShape {
            tensor: ROPE_FREQS.into(),
            file: file.path().to_path_buf(),
            expected: vec![half],
            found: factors.shape(),
        });
    }
    let stored = to_f32(factors.ggml_type, file.data(factors)?)
        .map_err(|why| file.error(format!("tensor `{ROPE_FREQS}`: {why}")))?;
    let plain = LlamaConfig {
        rope_scaling: None,
        ..config.clone()
    }
    .inv_freq();
    let candidates = [8.0, 16.0, 32.0, 64.0].map(|factor| Llama3RopeScaling {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    });
    candidates
        .into_iter()
        .find(|scaling| {
            plain.iter().zip(&stored).all(|(&f, &s)| {
                let expected = f / scaling.scale(f);
                (expected - f64::from(s)).abs() <= 1e-5 * expected
            })
        })
        .ok_or_else(|| {
            file.error(format!(
                "tensor `{ROPE_FREQS}` holds RoPE frequency factors that no Llama 3 scaling \
                 (factor 8 to 64, low 1, high 4, context 8192) gives"
            ))
        })
}

/// Typed reads of a file's metadata; errors name the key and what it held.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl Meta<'_> {
    fn required<'v>(&'v self, key: &str) -> Result<&'v MetaValue> {
        self.file
            .get(key)
            .ok_or_else(|| self.file.error(format!("metadata `{key}` is missing")))
    }

    fn wrong(&self, key: &str, value: &MetaValue, expected: &str) -> ModelError {
        self.file.error(format!(
            "metadata `{key}` is {}, expected {expected}",
            shown_value(value)
        ))
    }

    fn string(&self, key: &str) -> Result<&str> {
        let value = self.required(key)?;
        value
            .as_str()
            .ok_or_else(|| self.wrong(key, value, "a string"))
    }

    fn optional_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(value) = self.file.get(key) else {
            return Ok(None);
        };
        value
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| self.wrong(key, value, "a non-negative integer"))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.required(key)?;
        Ok(self.optional_usize(key)?.unwrap_or_default())
    }

    fn optional_token(&self, key: &str) -> Result<Option<u32>> {
        let Some(value) = self.file.get(key) else {
            return Ok(None);
        };
        value
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| self.wrong(key, value, "a token id"))
    }

    /// A float; an f32 is read as the shortest decimal that gives it back (`1e-5`, not
    /// `9.99999974e-6`), the number a config file held before conversion.
    fn optional_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(MetaValue::F32(v)) => Ok(Some(v.to_string().parse().unwrap_or(f64::from(*v)))),
            Some(MetaValue::F64(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong(key, other, "a float")),
        }
    }

    fn f64(&self, key: &str) -> Result<f64> {
        self.required(key)?;
        Ok(self.optional_f64(key)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            (
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
            ),
            (
                "model.layers.12.mlp.down_proj.weight",
                "blk.12.ffn_down.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ] {
            assert_eq!(gguf_name(hf), gguf);
            assert_eq!(hf_name(gguf), hf);
        }
        assert_eq!(hf_name("blk.0.attn_qkv.weight"), "blk.0.attn_qkv.weight");
    }

    /// llama.cpp's `permute` (convert_hf_to_gguf.py), written as its numpy: reshape
    /// [heads, 2, hd/2, ...], swap axes 1 and 2.
    fn permute(rows: &[u32], heads: usize) -> Vec<u32> {
        let half = rows.len() / heads / 2;
        let mut out = Vec::new();
        for h in 0..heads {
            for j in 0..half {
                for s in 0..2 {
                    out.push(rows[h * 2 * half + s * half + j]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_undoes_llama_cpp_permutation() {
        for (rows, heads) in [(8, 1), (8, 2), (12, 3), (16, 4)] {
            let hf: Vec<u32> = (0..rows as u32).collect();
            let stored = permute(&hf, heads);
            // Two bytes per row, both carrying the row's id.
            let bytes: Vec<u8> = stored
                .iter()
                .flat_map(|&r| [r as u8, 100 + r as u8])
                .collect();
            let back = unpermute_rows(&bytes, rows, rows / heads).unwrap();
            let expected: Vec<u8> = hf.iter().flat_map(|&r| [r as u8, 100 + r as u8]).collect();
            assert_eq!(back, expected, "rows {rows}, heads {heads}");
            assert_eq!(
                permute_rows(&expected, rows, rows / heads).unwrap(),
                bytes,
                "permute_rows is llama.cpp's permute: rows {rows}, heads {heads}"
            );
        }
        assert!(unpermute_rows(&[0; 12], 3, 3).is_none(), "odd head width");
        assert!(permute_rows(&[0; 12], 3, 3).is_none(), "odd head width");
        assert!(unpermute_rows(&[0; 10], 4, 2).is_none(), "ragged rows");
    }
}
