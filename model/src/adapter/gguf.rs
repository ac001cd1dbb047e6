//! LoRA adapters as llama.cpp's GGUF LoRA files, both ways, and LoRA adapters on the host
//! ([`HostLora`]) whatever file they came from.
//!
//! The layout is the one llama.cpp's `convert_lora_to_gguf.py` writes and
//! `llama_adapter_lora_init` reads: metadata `general.architecture` = `llama`,
//! `general.type` = `adapter`, `adapter.type` = `lora`, `adapter.lora.alpha` (f32); per
//! adapted weight `blk.N.<tensor>.weight.lora_a` (PEFT's A, `[r, d_in]` row-major, `ne` =
//! `{d_in, r}`) and `.lora_b` (PEFT's B, `[d_out, r]`), the rows of B for `attn_q` and `attn_k`
//! in llama.cpp's RoPE order (the permutation its converter applies to the base weights, see
//! [`crate::llama::gguf`]). llama.cpp scales each pair by `alpha / r` (by 1 when alpha is 0),
//! with `r` that pair's own rank.

use std::collections::BTreeMap;
use std::path::Path;

use hydralora_engine::no_grad;

use super::{attach, module_key, AdapterConfig, Method, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use crate::error::{ModelError, Result};
use crate::llama::config::LlamaConfig;
use crate::llama::gguf::file::{shown, shown_value, GgmlType, GgufFile, MetaValue};
use crate::llama::gguf::write::{meta_f32, meta_string, meta_u32, write_gguf, TensorToWrite};
use crate::llama::gguf::{gguf_name, hf_name, permute_rows, to_f32, unpermute_rows};
use crate::llama::weights::WeightFile;
use crate::llama::{Layer, Llama, TARGET_MODULES};

/// `general.type` of an adapter file.
pub const GENERAL_TYPE_ADAPTER: &str = "adapter";
/// `adapter.type` of a LoRA adapter file.
pub const ADAPTER_TYPE_LORA: &str = "lora";
/// ggml's `GGML_QUANT_VERSION`, which llama.cpp's writers record in every file.
pub const QUANTIZATION_VERSION: u32 = 2;

/// Whether `path` names a GGUF file (by its extension) rather than an adapter folder.
pub fn is_gguf_file(path: &Path) -> bool {
    !path.is_dir()
        && path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
}

/// Why a HydraLoRA adapter is no llama.cpp LoRA, and what can be exported instead.
pub fn hydra_is_not_lora(source: &Path, experts: usize) -> ModelError {
    ModelError::Input(format!(
        "`{}` is a HydraLoRA adapter: {experts} B heads mixed by a router whose mixture \
         depends on each token. llama.cpp (and Ollama, LM Studio) apply one fixed B·A to each \
         weight and have no per-token router, so no single LoRA (and no merged weight) equals \
         this adapter. What `hydralora export` can write (and `merge` then fold) is an \
         approximation, as an ordinary LoRA: one head (`--head 0` .. `--head {}`), or the \
         router-weighted mean of the heads (`--head mean --data EVAL.jsonl`); each prints \
         its measured cost in loss and exact match on `--data`. The adapter itself runs as \
         it is here (`--adapter`).",
        source.display(),
        experts.saturating_sub(1)
    ))
}

/// One adapted weight's matrices, rows in Hugging Face order.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    /// The decoder layer.
    pub layer: usize,
    /// The module, e.g. `q_proj`.
    pub module: String,
    /// A, `[r, d_in]` row-major.
    pub a: Vec<f32>,
    /// B, `[d_out, r]` row-major.
    pub b: Vec<f32>,
}

/// A LoRA adapter on the host: its settings and every adapted weight's A and B, one pair per
/// layer and target module, in model order (layers, then [`TARGET_MODULES`] order).
#[derive(Clone, Debug, PartialEq)]
pub struct HostLora {
    /// The settings (always [`Method::Lora`]); `scale()` is what each pair's B A is scaled by.
    pub config: AdapterConfig,
    /// The pairs, every layer times every target.
    pub pairs: Vec<LoraPair>,
}

/// `(d_in, d_out)` of a LLaMA module.
pub fn module_dims(config: &LlamaConfig, module: &str) -> (usize, usize) {
    let (h, i, q, kv) = (
        config.hidden_size,
        config.intermediate_size,
        config.q_dim(),
        config.kv_dim(),
    );
    match module {
        "q_proj" => (h, q),
        "k_proj" | "v_proj" => (h, kv),
        "o_proj" => (q, h),
        "gate_proj" | "up_proj" => (h, i),
        "down_proj" => (i, h),
        other => unreachable!("`{other}` is no LLaMA linear layer"),
    }
}

/// The heads whose rows llama.cpp permutes in a module's output, if it does.
fn permuted_heads(config: &LlamaConfig, module: &str) -> Option<usize> {
    match module {
        "q_proj" => Some(config.num_attention_heads),
        "k_proj" => Some(config.num_key_value_heads),
        _ => None,
    }
}

/// The GGUF name of a module's weight, e.g. `blk.0.attn_q.weight`.
fn gguf_weight(layer: usize, module: &str) -> String {
    gguf_name(&format!("{}.weight", Layer::module_path(layer, module)))
}

/// `(layer, module)` of a GGUF weight name such as `blk.3.ffn_up.weight`, if it is one of a
/// LLaMA layer's linear weights.
fn parse_gguf_weight(name: &str) -> Option<(usize, &'static str)> {
    let hf = hf_name(name);
    let layer: usize = hf
        .strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()?;
    TARGET_MODULES
        .into_iter()
        .find(|m| format!("{}.weight", Layer::module_path(layer, m)) == hf)
        .map(|m| (layer, m))
}

/// Rows of `values` (`rows` rows) reordered by `reorder` (one of the byte-level row
/// permutations), for `heads` heads.
fn reorder_rows(
    values: &[f32],
    rows: usize,
    heads: usize,
    reorder: fn(&[u8], usize, usize) -> Option<Vec<u8>>,
) -> Option<Vec<f32>> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let out = reorder(&bytes, rows, rows / heads.max(1))?;
    Some(
        out.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

impl HostLora {
    /// The LoRA adapter at `path`: a GGUF file ([`HostLora::from_gguf`]) or an adapter folder
    /// ([`HostLora::from_folder`]), for a base with hyper-parameters `model`.
    pub fn open(path: &Path, model: &LlamaConfig) -> Result<Self> {
        if is_gguf_file(path) {
            Self::from_gguf(path, model)
        } else {
            Self::from_folder(path, model)
        }
    }

    /// A PEFT LoRA adapter folder. A HydraLoRA folder is refused with
    /// [`hydra_is_not_lora`]'s explanation.
    pub fn from_folder(dir: &Path, model: &LlamaConfig) -> Result<Self> {
        let config = AdapterConfig::from_file(&dir.join(ADAPTER_CONFIG_FILE))?;
        if config.method == Method::Hydra {
            return Err(hydra_is_not_lora(dir, config.experts));
        }
        config.validate()?;
        let file = WeightFile::open(dir.join(ADAPTER_WEIGHTS_FILE))?;
        let mut expected = std::collections::HashSet::new();
        let mut pairs = Vec::new();
        for layer in 0..model.num_hidden_layers {
            for module in TARGET_MODULES
                .into_iter()
                .filter(|m| config.targets.iter().any(|t| t == m))
            {
                let (d_in, d_out) = module_dims(model, module);
                let key = module_key(layer, module);
                let (a_key, b_key) = (
                    format!("{key}.lora_A.weight"),
                    format!("{key}.lora_B.weight"),
                );
                let a = file.expect_f32(&a_key, &[config.r, d_in])?;
                let b = file.expect_f32(&b_key, &[d_out, config.r])?;
                expected.extend([a_key, b_key]);
                pairs.push(LoraPair {
                    layer,
                    module: module.to_string(),
                    a,
                    b,
                });
            }
        }
        if let Some(extra) = file.names().into_iter().find(|n| !expected.contains(*n)) {
            return Err(ModelError::UnexpectedTensor {
                tensor: extra.to_string(),
                file: file.path().to_path_buf(),
                shape: file.shape(extra).unwrap_or_default().to_vec(),
            });
        }
        Ok(HostLora { config, pairs })
    }

    /// A llama.cpp GGUF LoRA adapter for a LLaMA with hyper-parameters `model`. Everything is
    /// checked: the metadata says it is a LLaMA LoRA adapter, each tensor is the `lora_a` or
    /// `lora_b` of a linear weight of a layer the model has, pairs are complete and their
    /// shapes fit the model. Pairs of lower rank are padded with zeros to the highest rank and
    /// their B rescaled, so each keeps the scale llama.cpp gives it; weights of layers the
    /// file leaves out get zero matrices (which change nothing).
    pub fn from_gguf(path: &Path, model: &LlamaConfig) -> Result<Self> {
        let file = GgufFile::open(path)?;
        check_adapter_metadata(&file)?;
        let alpha = match file.get("adapter.lora.alpha") {
            None => 0.0,
            Some(value) => match value.as_f64() {
                Some(a) if a.is_finite() && a >= 0.0 => a,
                _ => {
                    return Err(file.error(format!(
                        "metadata `adapter.lora.alpha` is {}, expected a non-negative float",
                        shown_value(value)
                    )))
                }
            },
        };

        let mut found = stored_pairs(&file, model)?;
        if found.is_empty() {
            return Err(file.error("holds no LoRA matrices"));
        }
        let rank = found.values().map(|(_, _, r)| *r).max().unwrap_or(1);
        // llama.cpp scales a pair by alpha / r (by 1 when alpha is 0); one config scale,
        // alpha' / rank, is kept and each B carries its pair's ratio to it.
        let config_alpha = if alpha > 0.0 { alpha } else { rank as f64 };
        let config_scale = config_alpha / rank as f64;
        let mut targets: Vec<&str> = found.keys().map(|&(_, m)| TARGET_MODULES[m]).collect();
        targets.sort_by_key(|m| TARGET_MODULES.iter().position(|x| x == m));
        targets.dedup();
        let mut pairs = Vec::new();
        for layer in 0..model.num_hidden_layers {
            for &module in &targets {
                let (d_in, d_out) = module_dims(model, module);
                let m = TARGET_MODULES
                    .iter()
                    .position(|&x| x == module)
                    .expect("a module");
                let (a, b) = match found.remove(&(layer, m)) {
                    None => (vec![0.0; rank * d_in], vec![0.0; d_out * rank]),
                    Some((Some(a), Some(b), r)) => {
                        let b = match permuted_heads(model, module) {
                            Some(heads) => reorder_rows(&b, d_out, heads, unpermute_rows)
                                .ok_or_else(|| {
                                    file.error(format!(
                                        "tensor `{}.lora_b`: rows do not split into {heads} heads",
                                        gguf_weight(layer, module)
                                    ))
                                })?,
                            None => b,
                        };
                        let pair_scale = if alpha > 0.0 { alpha / r as f64 } else { 1.0 };
                        let ratio = (pair_scale / config_scale) as f32;
                        pad_rank(&a, &b, r, rank, d_in, d_out, ratio)
                    }
                    Some((a, _, _)) => {
                        let missing = if a.is_none() { "lora_a" } else { "lora_b" };
                        return Err(file.error(format!(
                            "tensor `{}.{missing}` is missing: LoRA matrices come in pairs",
                            gguf_weight(layer, module)
                        )));
                    }
                };
                pairs.push(LoraPair {
                    layer,
                    module: module.to_string(),
                    a,
                    b,
                });
            }
        }
        let config = AdapterConfig::lora(rank, config_alpha as f32, &targets);
        config.validate()?;
        Ok(HostLora { config, pairs })
    }

    /// Writes the adapter as a llama.cpp GGUF LoRA file at `path` (atomically), its matrices
    /// stored as `ggml_type` (F32, F16 or BF16), for a base with hyper-parameters `model`.
    /// `adapter.lora.alpha` is written as `scale * r`, so llama.cpp's `alpha / r` is this
    /// adapter's scale (rsLoRA's `alpha / sqrt(r)` included).
    pub fn write_gguf(
        &self,
        path: &Path,
        model: &LlamaConfig,
        ggml_type: GgmlType,
        name: &str,
    ) -> Result<()> {
        if ggml_type.is_quantized() {
            return Err(ModelError::Input(format!(
                "a LoRA adapter is written as F32, F16 or BF16, not {ggml_type}"
            )));
        }
        let r = self.config.r;
        let alpha = self.config.scale() * r as f32;
        let metadata = vec![
            meta_string("general.architecture", "llama"),
            meta_string("general.type", GENERAL_TYPE_ADAPTER),
            meta_string("general.name", name),
            meta_string("adapter.type", ADAPTER_TYPE_LORA),
            meta_f32("adapter.lora.alpha", alpha),
            meta_u32("general.quantization_version", QUANTIZATION_VERSION),
        ];
        let mut tensors = Vec::with_capacity(2 * self.pairs.len());
        for pair in &self.pairs {
            let (d_in, d_out) = module_dims(model, &pair.module);
            let weight = gguf_weight(pair.layer, &pair.module);
            let b = match permuted_heads(model, &pair.module) {
                Some(heads) => {
                    reorder_rows(&pair.b, d_out, heads, permute_rows).ok_or_else(|| {
                        ModelError::Input(format!(
                            "`{weight}`: rows do not split into {heads} heads"
                        ))
                    })?
                }
                None => pair.b.clone(),
            };
            tensors.push(TensorToWrite::encode(
                format!("{weight}.lora_a"),
                &[r, d_in],
                ggml_type,
                &pair.a,
            )?);
            tensors.push(TensorToWrite::encode(
                format!("{weight}.lora_b"),
                &[d_out, r],
                ggml_type,
                &b,
            )?);
        }
        write_gguf(path, &metadata, &tensors)
    }

    /// Puts the adapter on `model` (replacing any adapter it has); returns its settings.
    pub fn attach_to(&self, model: &mut Llama) -> Result<AdapterConfig> {
        attach(model, &self.config, 0)?;
        no_grad(|| -> Result<()> {
            for pair in &self.pairs {
                let adapter = model.layers[pair.layer]
                    .linear_mut(&pair.module)
                    .and_then(|l| l.adapter.as_ref())
                    .expect("attach put an adapter on every target");
                adapter.down.write_f32(&pair.a)?;
                adapter.b.write_f32(&pair.b)?;
            }
            Ok(())
        })?;
        Ok(self.config.clone())
    }

    /// The pair of `layer`'s `module`, if the adapter targets it.
    pub fn pair(&self, layer: usize, module: &str) -> Option<&LoraPair> {
        self.pairs
            .iter()
            .find(|p| p.layer == layer && p.module == module)
    }
}

/// The stored matrices of `file` by (layer, index in [`TARGET_MODULES`]): A `[r, d_in]`, B
/// `[d_out, r]` (rows still in llama.cpp's order), r; each tensor's name, shape and rank
/// checked against the model.
type StoredPairs = BTreeMap<(usize, usize), (Option<Vec<f32>>, Option<Vec<f32>>, usize)>;

fn stored_pairs(file: &GgufFile, model: &LlamaConfig) -> Result<StoredPairs> {
    let mut found = StoredPairs::new();
    for t in file.tensors() {
        let name = shown(&t.name);
        let (weight, is_a) = match (
            t.name.strip_suffix(".lora_a"),
            t.name.strip_suffix(".lora_b"),
        ) {
            (Some(w), _) => (w, true),
            (_, Some(w)) => (w, false),
            _ => {
                return Err(file.error(format!(
                    "tensor `{name}` is not a LoRA matrix (`<weight>.lora_a` or `.lora_b`); \
                     only LoRA on a LLaMA layer's linear weights is read here"
                )))
            }
        };
        let Some((layer, module)) = parse_gguf_weight(weight) else {
            return Err(file.error(format!(
                "tensor `{name}` adapts `{}`, which is not a linear weight of a LLaMA layer \
                 (attn_q/k/v/output, ffn_gate/up/down); adapters of the embeddings or the \
                 output layer are not read here",
                shown(weight)
            )));
        };
        if layer >= model.num_hidden_layers {
            return Err(file.error(format!(
                "tensor `{name}` adapts layer {layer}, but the model has {} layers \
                 (is this the adapter of another model?)",
                model.num_hidden_layers
            )));
        }
        let (d_in, d_out) = module_dims(model, module);
        let shape = t.shape();
        let r = match (is_a, shape.as_slice()) {
            (true, &[r, d]) if d == d_in => r,
            (false, &[d, r]) if d == d_out => r,
            _ => {
                let want = if is_a {
                    format!("[r, {d_in}]")
                } else {
                    format!("[{d_out}, r]")
                };
                return Err(file.error(format!(
                    "tensor `{name}` has shape {shape:?}, but the model's `{module}` needs \
                     {want} (is this the adapter of another model?)"
                )));
            }
        };
        if r > 1 << 16 {
            return Err(file.error(format!("tensor `{name}` has rank {r}, beyond any model")));
        }
        let values = to_f32(t.ggml_type, file.data(t)?)
            .map_err(|why| file.error(format!("tensor `{name}`: {why}")))?;
        let m = TARGET_MODULES
            .iter()
            .position(|&x| x == module)
            .expect("a module");
        let entry = found.entry((layer, m)).or_insert((None, None, r));
        if entry.2 != r {
            return Err(file.error(format!(
                "tensors `{}.lora_a` and `.lora_b` have ranks {} and {r}",
                shown(weight),
                entry.2
            )));
        }
        let slot = if is_a { &mut entry.0 } else { &mut entry.1 };
        if slot.replace(values).is_some() {
            return Err(file.error(format!("tensor `{name}` is given twice")));
        }
    }
    Ok(found)
}

/// A rank-`r` pair padded with zeros to rank `rank` (A's rows, B's columns), B scaled by
/// `ratio`: the same `B A` times `ratio`.
fn pad_rank(
    a: &[f32],
    b: &[f32],
    r: usize,
    rank: usize,
    d_in: usize,
    d_out: usize,
    ratio: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut padded_a = a.to_vec();
    padded_a.resize(rank * d_in, 0.0);
    let mut padded_b = vec![0.0; d_out * rank];
    for (row, src) in padded_b.chunks_mut(rank).zip(b.chunks(r)) {
        for (dst, &v) in row.iter_mut().zip(src) {
            *dst = v * ratio;
        }
    }
    (padded_a, padded_b)
}

/// Checks that `file` says it is a LoRA adapter of a LLaMA.
fn check_adapter_metadata(file: &GgufFile) -> Result<()> {
    let string = |key: &str| file.get(key).and_then(MetaValue::as_str);
    match string("general.type") {
        Some(GENERAL_TYPE_ADAPTER) => {}
        Some("model") | None if file.get("llama.block_count").is_some() => {
            return Err(file.error(
                "is a GGUF model, not an adapter (`general.type` is not `adapter`): \
                 pass it as the model (`--model`)",
            ))
        }
        other => {
            return Err(file.error(format!(
                "is not an adapter: `general.type` is {}, not `adapter`",
                other.map_or("missing".to_string(), |t| format!("`{}`", shown(t)))
            )))
        }
    }
    match string("adapter.type") {
        Some(ADAPTER_TYPE_LORA) => {}
        other => {
            return Err(file.error(format!(
                "is not a LoRA adapter: `adapter.type` is {}, not `lora`",
                other.map_or("missing".to_string(), |t| format!("`{}`", shown(t)))
            )))
        }
    }
    match string("general.architecture") {
        Some("llama") => Ok(()),
        other => Err(file.error(format!(
            "adapts a `{}` model (`general.architecture`); only `llama` is read here",
            shown(other.unwrap_or("missing"))
        ))),
    }
}
