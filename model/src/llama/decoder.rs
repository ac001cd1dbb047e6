//! The LLaMA decoder on the engine: embedding, N x (rms_norm, attention with RoPE and
//! grouped-query heads, residual, rms_norm, SwiGLU MLP, residual), final norm, lm_head.
//! One forward serves training (recorded for autodiff) and inference (under `no_grad`).

use std::path::Path;
use std::sync::atomic::Ordering;

use hydralora_engine::{
    attention_kernel_in_use, causal_attention, causal_attention_tokens_first, checkpoint,
    embedding_host_ids, embedding_parts, human_bytes, is_recording, linear_cross_entropy_chunked,
    loss_chunk_rows, no_grad, pool_bytes, rope, swiglu, AttentionKernel, AttnDims, DType, Device,
    RopeTables, Tensor, IGNORE_INDEX,
};

use crate::adapter::Adapter;
use crate::error::{ModelError, Result};
use crate::llama::config::LlamaConfig;
use crate::llama::gguf::{gguf_path, GgufModel};
use crate::llama::layer::Layer;
use crate::llama::linear::Linear;
use crate::llama::precision::Precision;
use crate::llama::weights::{llama_tensor_shapes, ModelWeights, StoredTensor};

/// Keys and values of the tokens seen so far, per layer: [B, nkv, S, hd] each.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache; [`Llama::forward`] fills it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens cached so far (S).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dim(2))
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this step's keys and values for `layer` and returns all of them.
    fn extend(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        let kv = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::concat(&[pk, k], 2)?, Tensor::concat(&[pv, v], 2)?),
            None => (k, v),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }
}

/// A LLaMA-family causal language model.
pub struct Llama {
    /// The architecture, from `config.json`.
    pub config: LlamaConfig,
    device: Device,
    /// The embedding, split by rows where it is larger than one kernel binding.
    pub embed: Vec<Tensor>, // parts of [V, H]
    /// The decoder layers, in order.
    pub layers: Vec<Layer>,
    /// The final RMS norm weight, `[H]`.
    pub norm: Tensor, // [H]
    /// lm_head split by rows like `embed` (the same tensors when tied).
    pub lm_head: Vec<Tensor>, // parts of [V, H]
    inv_freq: Vec<f64>, // [hd / 2]
    /// The settings of the attached adapter, if any (see [`crate::adapter`]).
    pub adapter: Option<crate::adapter::AdapterConfig>,
    /// Activation checkpointing: while recording a graph, keep only each decoder layer's
    /// input and recompute the layer in backward (same gradients, bitwise; a second forward
    /// of the layers' work). The trainer sets it from its settings or the memory budget.
    pub checkpoint_activations: bool,
    /// Tokens per chunk of the fused lm_head + loss ([`Llama::loss`]); None: the engine's
    /// default ([`hydralora_engine::loss_chunk_rows`]), logits of about
    /// [`hydralora_engine::LOSS_CHUNK_BYTES`] per chunk.
    pub loss_chunk_tokens: Option<usize>,
    /// Where the base model was loaded from (an absolute folder or file path; None for a
    /// model built in memory): what a saved adapter names as its `base_model_name_or_path`,
    /// so PEFT's `AutoPeftModelForCausalLM` finds the base. Settable for a hub id.
    pub base_name: Option<String>,
    /// The precision of the frozen products ([`Llama::set_precision`]).
    precision: Precision,
}

impl Llama {
    /// Loads a Hugging Face model folder (`config.json` + safetensors, single or sharded;
    /// f32, f16 or bf16 weights), or a GGUF LLaMA: a `.gguf` file, or a folder holding
    /// `model.gguf` and no `config.json` (see [`crate::llama::gguf`]). The config is
    /// validated and every tensor's name and shape checked against it; errors name the file
    /// and the tensor.
    ///
    /// ```no_run
    /// use hydralora_model::{engine::Device, Llama};
    /// # fn main() -> hydralora_model::Result<()> {
    /// let device = Device::new()?;
    /// let model = Llama::load(&device, "models/TinyLlama-1.1B")?;
    /// let ids = [1, 2, 3]; // one sequence: [B = 1, T = 3]
    /// let logits = model.logits(&ids, 1)?; // [B, T, V]
    /// assert_eq!(logits.shape(), &[1, 3, model.config.vocab_size]);
    /// # Ok(()) }
    /// ```
    pub fn load(device: &Device, dir: impl AsRef<Path>) -> Result<Llama> {
        Self::load_as(device, dir, None)
    }

    /// [`Llama::load`], with the frozen layer weights (and an untied lm_head) stored as
    /// `frozen` (f32, f16, bf16 or a GGUF block format, quantized on the host as they are
    /// read), or as the checkpoint stores most of them when `None`: a bf16 checkpoint stays
    /// bf16, byte for byte. See [`weight_storage`] for what each tensor gets. A GGUF model's
    /// weights are kept as its own blocks when `None`, each tensor in its stored type (a
    /// Q4_K_M file's q4_K and q6_K alike), its norms in f32.
    pub fn load_as(device: &Device, dir: impl AsRef<Path>, frozen: Option<DType>) -> Result<Llama> {
        let dir = dir.as_ref();
        let mut model = Self::load_from(device, dir, frozen)?;
        let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        model.base_name = Some(absolute.to_string_lossy().into_owned());
        Ok(model)
    }

    fn load_from(device: &Device, dir: &Path, frozen: Option<DType>) -> Result<Llama> {
        if let Some(file) = gguf_path(dir) {
            let model = GgufModel::open(file)?;
            let estimate = frozen.unwrap_or_else(|| model.main_format());
            let storage = |name: &str, shape: &[usize], stored: DType| match frozen {
                Some(frozen) => weight_storage(name, shape, frozen),
                None if name.contains("norm") => DType::F32,
                None => stored,
            };
            return Self::from_stored_with(
                device,
                model.config().clone(),
                estimate,
                storage,
                |name, shape| model.stored(name, shape),
            );
        }
        let config = LlamaConfig::from_dir(dir)?;
        let weights = ModelWeights::open(dir)?;
        Self::from_weights(device, config, &weights, frozen)
    }

    /// [`Llama::load_as`] from safetensors weights already opened (a folder's, or a file in
    /// memory: [`crate::llama::weights::WeightFile::from_bytes`]).
    pub fn from_weights(
        device: &Device,
        config: LlamaConfig,
        weights: &ModelWeights,
        frozen: Option<DType>,
    ) -> Result<Llama> {
        weights.check_llama(&config)?;
        let frozen = frozen.unwrap_or_else(|| weights.main_float_format());
        Self::from_stored(device, config, frozen, |name, shape| {
            weights.expect_stored(name, shape)
        })
    }

    /// Builds the model from a source of named f32 tensors (checked against `shape`).
    pub fn from_tensors(
        device: &Device,
        config: LlamaConfig,
        mut get: impl FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    ) -> Result<Llama> {
        Self::from_stored(device, config, DType::F32, |name, shape| {
            Ok(StoredTensor::f32(&get(name, shape)?))
        })
    }

    /// Builds the model from a source of named tensors as files store them (checked against
    /// `shape`), each uploaded in the format [`weight_storage`] gives it for `frozen`:
    /// as it is when that is its stored format, converted on the host otherwise.
    pub fn from_stored(
        device: &Device,
        config: LlamaConfig,
        frozen: DType,
        get: impl FnMut(&str, &[usize]) -> Result<StoredTensor>,
    ) -> Result<Llama> {
        let storage =
            |name: &str, shape: &[usize], _stored: DType| weight_storage(name, shape, frozen);
        Self::from_stored_with(device, config, frozen, storage, get)
    }

    /// [`Llama::from_stored`] with each tensor's device format chosen by
    /// `storage(name, shape, stored format)`; `estimate` is the frozen format the memory
    /// check assumes.
    pub fn from_stored_with(
        device: &Device,
        config: LlamaConfig,
        estimate: DType,
        storage: impl Fn(&str, &[usize], DType) -> DType,
        mut get: impl FnMut(&str, &[usize]) -> Result<StoredTensor>,
    ) -> Result<Llama> {
        config.validate()?;
        check_weights_fit(device, &config, estimate)?;
        let (h, i, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let (q, kv) = (config.q_dim(), config.kv_dim());
        let mut rows = |name: &str, shape: [usize; 2]| -> Result<Vec<Tensor>> {
            let stored = get(name, &shape)?;
            let format = storage(name, &shape, stored.dtype);
            upload_rows(device, stored, shape, format)
        };
        let embed = rows("model.embed_tokens.weight", [v, h])?;
        let lm_head = match config.tie_word_embeddings {
            true => embed.clone(),
            false => rows("lm_head.weight", [v, h])?,
        };
        let mut tensor = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let stored = get(name, shape)?;
            let format = storage(name, shape, stored.dtype);
            upload(device, stored, shape, format)
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let mut lin = |s: &str, shape: &[usize]| -> Result<Linear> {
                Ok(Linear::new(tensor(&p(s), shape)?))
            };
            layers.push(Layer {
                q_proj: lin("self_attn.q_proj.weight", &[q, h])?,
                k_proj: lin("self_attn.k_proj.weight", &[kv, h])?,
                v_proj: lin("self_attn.v_proj.weight", &[kv, h])?,
                o_proj: lin("self_attn.o_proj.weight", &[h, q])?,
                gate_proj: lin("mlp.gate_proj.weight", &[i, h])?,
                up_proj: lin("mlp.up_proj.weight", &[i, h])?,
                down_proj: lin("mlp.down_proj.weight", &[h, i])?,
                input_norm: tensor(&p("input_layernorm.weight"), &[h])?,
                post_norm: tensor(&p("post_attention_layernorm.weight"), &[h])?,
            });
        }
        let norm = tensor("model.norm.weight", &[h])?;
        let inv_freq = config.inv_freq();
        Ok(Llama {
            config,
            device: device.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            adapter: None,
            checkpoint_activations: false,
            loss_chunk_tokens: None,
            base_name: None,
            precision: Precision::F32,
        })
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every linear layer as (decoder layer, module name, the layer), in model order: layer
    /// by layer, each in [`TARGET_MODULES`](crate::TARGET_MODULES) order.
    pub fn linears(&self) -> impl Iterator<Item = (usize, &'static str, &Linear)> {
        self.layers.iter().enumerate().flat_map(|(l, layer)| {
            layer
                .linears()
                .map(move |(module, linear)| (l, module, linear))
        })
    }

    /// [`Llama::linears`], mutable.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = (usize, &'static str, &mut Linear)> {
        self.layers.iter_mut().enumerate().flat_map(|(l, layer)| {
            layer
                .linears_mut()
                .map(move |(module, linear)| (l, module, linear))
        })
    }

    /// Every adapted layer's adapter as (decoder layer, module name, the adapter), in model
    /// order ([`Llama::linears`] that carry one).
    pub fn adapters(&self) -> impl Iterator<Item = (usize, &'static str, &Adapter)> {
        self.linears()
            .filter_map(|(l, module, linear)| Some((l, module, linear.adapter.as_ref()?)))
    }

    /// [`Llama::adapters`], mutable.
    pub fn adapters_mut(&mut self) -> impl Iterator<Item = (usize, &'static str, &mut Adapter)> {
        self.linears_mut()
            .filter_map(|(l, module, linear)| Some((l, module, linear.adapter.as_mut()?)))
    }

    /// Logits [B, T, V] for token ids [B, T] (row-major in `ids`). With a cache, the tokens
    /// continue the cached ones (positions start at the cache length) and are appended to it.
    /// Training needs no logits: [`Llama::loss`] never holds them whole.
    pub fn forward(
        &self,
        ids: &[u32],
        batch: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let hidden = self.hidden_states(ids, batch, cache)?; // [B T, H]
        let t = ids.len() / batch;
        let logits = self.project_vocab(&hidden)?; // [B T, V]
        Ok(logits.reshape(&[batch, t, self.config.vocab_size])?)
    }

    /// The final normed hidden states [B T, H].
    pub fn hidden_states(
        &self,
        ids: &[u32],
        batch: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.hidden_states_inspected(ids, batch, cache, &mut |_, _| Ok(()))
    }

    /// Where the forward of `ids` first produces a NaN or an infinity ("the embedding",
    /// "layer 3 attention", "layer 3 MLP", "the final norm", "the logits"), or None. A
    /// diagnosis after a bad loss: it reads every intermediate result back.
    pub fn first_nonfinite(&self, ids: &[u32], batch: usize) -> Result<Option<String>> {
        let mut found = None;
        let result = no_grad(|| {
            let hidden = self.hidden_states_inspected(ids, batch, None, &mut |place, x| {
                if x.to_vec_f32()?.iter().any(|v| !v.is_finite()) {
                    found = Some(place.to_string());
                    return Err(ModelError::Input(String::new())); // stop here
                }
                Ok(())
            })?;
            // The logits a loss chunk's rows at a time: never whole.
            let rows = self.loss_chunk_rows();
            for start in (0..hidden.dim(0)).step_by(rows) {
                let len = rows.min(hidden.dim(0) - start);
                let logits = self.project_vocab(&hidden.narrow(0, start, len)?)?;
                if logits.to_vec_f32()?.iter().any(|v| !v.is_finite()) {
                    found = Some("the logits".to_string());
                    break;
                }
            }
            Ok(())
        });
        match (result, found) {
            (_, Some(place)) => Ok(Some(place)),
            (Err(e), None) => Err(e),
            (Ok(()), None) => Ok(None),
        }
    }

    /// The forward, with `inspect` shown the residual stream after each stage.
    fn hidden_states_inspected(
        &self,
        ids: &[u32],
        batch: usize,
        mut cache: Option<&mut KvCache>,
        inspect: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let c = &self.config;
        if batch == 0 || ids.is_empty() || ids.len() % batch != 0 {
            return Err(ModelError::Input(format!(
                "{} token ids do not split into {batch} sequences of equal length",
                ids.len()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        let t = ids.len() / batch;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let positions: Vec<u32> = (past..past + t).map(|p| p as u32).collect();
        let tables = RopeTables::new(&self.device, &positions, &self.inv_freq)?;
        let ids_t = Tensor::from_u32(&self.device, ids, &[batch * t])?;
        let mut x = match self.embed.as_slice() {
            // Recorded: full-parameter training trains the table (its rows get dY's rows).
            [table] => embedding_host_ids(table, &ids_t, ids)?, // [B T, H]
            parts => embedding_parts(parts, &ids_t)?,           // frozen only: too large to train
        };
        inspect("the embedding", &x)?;
        let dims = Dims { b: batch, t };
        for (l, layer) in self.layers.iter().enumerate() {
            if self.checkpoint_activations && cache.is_none() && is_recording() {
                x = checkpointed_layer(c, layer, &x, dims, &tables)?;
                inspect(&format!("layer {l} MLP"), &x)?;
                continue;
            }
            let kv = cache.as_deref_mut().map(|c| (c, l));
            x = attention_block(c, layer, &x, dims, &tables, kv)?;
            inspect(&format!("layer {l} attention"), &x)?;
            x = mlp_block(c, layer, &x)?;
            inspect(&format!("layer {l} MLP"), &x)?;
        }
        let out = x.rms_norm(&self.norm, c.rms_norm_eps as f32)?;
        inspect("the final norm", &out)?;
        match self.precision {
            Precision::Mixed => Ok(out.round_half()?), // what lm_head's product takes
            Precision::F32 => Ok(out),
        }
    }

    /// logits = hidden lm_head^T, [N, V], part by part when lm_head is split.
    pub fn project_vocab(&self, hidden: &Tensor) -> Result<Tensor> {
        let parts: Vec<Tensor> = self
            .lm_head
            .iter()
            .map(|w| hidden.matmul_nt(w))
            .collect::<hydralora_engine::Result<_>>()?;
        Ok(if parts.len() == 1 {
            parts.into_iter().next().expect("one part")
        } else {
            Tensor::concat(&parts, 1)?
        })
    }

    /// The causal-LM loss of token ids [B, T] against `labels` [B, T] (row-major), with the
    /// `transformers` convention of [`Llama::causal_lm_loss`], through the fused lm_head +
    /// cross-entropy: the [B T, V] logits and their gradient are never whole, only
    /// [`Llama::loss_chunk_tokens`] rows of them at a time. What training calls.
    pub fn loss(&self, ids: &[u32], batch: usize, labels: &[i32]) -> Result<Tensor> {
        let hidden = self.hidden_states(ids, batch, None)?; // [B T, H]
        self.causal_lm_loss_from_hidden(&hidden, batch, labels)
    }

    /// [`Llama::loss`] from the final hidden states [B T, H] ([`Llama::hidden_states`]).
    pub fn causal_lm_loss_from_hidden(
        &self,
        hidden: &Tensor,
        batch: usize,
        labels: &[i32],
    ) -> Result<Tensor> {
        let n = hidden.dim(0);
        if batch == 0 || n % batch != 0 {
            return Err(ModelError::Input(format!(
                "{n} hidden rows do not split into {batch} sequences"
            )));
        }
        let labels_t = self.shifted_labels(labels, batch, n / batch)?; // [B T]
        Ok(linear_cross_entropy_chunked(
            hidden,
            &self.lm_head,
            &labels_t,
            self.loss_chunk_rows(),
        )?)
    }

    /// The rows per chunk of the fused loss: [`Llama::loss_chunk_tokens`] or the engine's
    /// default for this vocabulary.
    pub fn loss_chunk_rows(&self) -> usize {
        self.loss_chunk_tokens
            .unwrap_or_else(|| loss_chunk_rows(&self.device, self.config.vocab_size))
            .max(1)
    }

    /// The causal-LM loss with the `transformers` convention: logits at t predict labels at
    /// t + 1 (the shift happens here), -100 labels are ignored, mean over the rest.
    /// logits: [B, T, V]; labels: [B, T] row-major. For a caller that holds the logits anyway;
    /// [`Llama::loss`] computes the same without them.
    pub fn causal_lm_loss(&self, logits: &Tensor, labels: &[i32]) -> Result<Tensor> {
        let (b, t, v) = (logits.dim(0), logits.dim(1), logits.dim(2));
        let labels_t = self.shifted_labels(labels, b, t)?; // [B T]
        Ok(hydralora_engine::cross_entropy(
            &logits.reshape(&[b * t, v])?,
            &labels_t,
        )?)
    }

    /// Labels [B, T] checked against the vocabulary and shifted ([`shift_labels`]), on the
    /// device as i32 [B T].
    fn shifted_labels(&self, labels: &[i32], b: usize, t: usize) -> Result<Tensor> {
        let v = self.config.vocab_size;
        if labels.len() != b * t {
            return Err(ModelError::Input(format!(
                "{} labels for {b} sequences of {t} tokens",
                labels.len()
            )));
        }
        if let Some(&bad) = labels
            .iter()
            .find(|&&l| l != IGNORE_INDEX && (l < 0 || l as usize >= v))
        {
            return Err(ModelError::Input(format!(
                "label {bad} is outside the vocabulary of {v} tokens (and is not -100)"
            )));
        }
        let shifted = shift_labels(labels, b, t);
        Ok(Tensor::from_i32(&self.device, &shifted, &[b * t])?)
    }

    /// Every weight with its Hugging Face name, lm_head omitted when tied. The embedding and
    /// lm_head appear once per row part (in order) when they are split across bindings.
    pub fn named_weights(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = self
            .embed
            .iter()
            .map(|t| ("model.embed_tokens.weight".to_string(), t))
            .collect();
        for (l, layer) in self.layers.iter().enumerate() {
            out.push((
                format!("model.layers.{l}.input_layernorm.weight"),
                &layer.input_norm,
            ));
            for (m, linear) in layer.linears() {
                out.push((
                    format!("{}.weight", Layer::module_path(l, m)),
                    &linear.weight,
                ));
            }
            out.push((
                format!("model.layers.{l}.post_attention_layernorm.weight"),
                &layer.post_norm,
            ));
        }
        out.push(("model.norm.weight".to_string(), &self.norm));
        if !self.config.tie_word_embeddings {
            out.extend(
                self.lm_head
                    .iter()
                    .map(|t| ("lm_head.weight".to_string(), t)),
            );
        }
        out
    }

    /// Makes every weight trainable (full-parameter training) and returns them with their
    /// names. The embedding must fit one binding.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Tensor)>> {
        if self.embed.len() > 1 || self.lm_head.len() > 1 {
            return Err(ModelError::Input("full-parameter training needs the embedding to fit one kernel binding; train an adapter instead".into()));
        }
        let tied = self.config.tie_word_embeddings;
        self.store_weights_as(DType::F32, |_| true)?; // trained weights are f32
        for w in [&mut self.embed[0], &mut self.lm_head[0]] {
            if w.dtype() != DType::F32 {
                *w = Tensor::from_slice(&self.device, &w.to_vec_dequantized()?, w.shape())?;
            }
        }
        let param = |t: &mut Tensor| *t = t.clone().into_param();
        param(&mut self.embed[0]);
        if tied {
            self.lm_head = self.embed.clone();
        } else {
            param(&mut self.lm_head[0]);
        }
        param(&mut self.norm);
        for layer in &mut self.layers {
            param(&mut layer.input_norm);
            param(&mut layer.post_norm);
            for (_, linear) in layer.linears_mut() {
                param(&mut linear.weight);
            }
        }
        Ok(self
            .named_weights()
            .into_iter()
            .map(|(n, t)| (n, t.clone()))
            .collect())
    }

    /// Writes the model (without any adapter) as a Hugging Face model folder.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut host: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        for (name, t) in self.named_weights() {
            let values = t.to_vec_dequantized()?;
            match host.last_mut() {
                // Row parts of one matrix are joined back.
                Some((last, shape, data)) if *last == name => {
                    shape[0] += t.dim(0);
                    data.extend(values);
                }
                _ => host.push((name, t.shape().to_vec(), values)),
            }
        }
        let views: Vec<(String, Vec<usize>, &[f32])> = host
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
            .collect();
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io("create", dir, e))?;
        crate::llama::weights::save_model_folder(dir, &self.config, &views)
    }

    /// Overwrites the weights in place from a model folder of the same architecture (or a
    /// training checkpoint of a full-parameter run, which holds one).
    pub fn load_weights_from(&self, dir: &Path) -> Result<()> {
        let weights = ModelWeights::open(dir)?;
        weights.check_llama(&self.config)?;
        let mut row = 0;
        let mut last = String::new();
        let mut cache: Option<Vec<f32>> = None;
        for (name, t) in self.named_weights() {
            if name != last {
                (row, last, cache) = (0, name.clone(), None);
            }
            let full = match cache.take() {
                Some(c) => c,
                None => weights.read_f32(&name)?.1,
            };
            let len = t.numel();
            t.write_f32(&full[row..row + len])?;
            row += len;
            cache = Some(full);
        }
        Ok(())
    }

    /// Refuses, before any training work, a batch whose largest tensors would not fit one
    /// kernel binding: the attention scores [B, heads, T, T] (only where the composed
    /// attention runs; the flash kernels never store them) and the MLP activations
    /// [B T, I]. The logits are not among them: the loss ([`Llama::loss`]) holds one chunk
    /// of their rows at a time, and the engine sizes the chunk to fit a binding. The error
    /// gives both numbers and what to lower.
    pub fn check_batch_fits(&self, batch: usize, seq: usize) -> Result<()> {
        let c = &self.config;
        let limit = self.device.info().max_binding_bytes();
        let tokens = (batch * seq) as u64;
        // (what, bytes, how the size grows with T: 1 linear, 2 quadratic)
        let mut largest = vec![(
            "MLP activations [B*T, intermediate]",
            tokens * c.intermediate_size as u64 * 4,
            1.0,
        )];
        let attn = AttnDims {
            b: batch,
            hq: c.num_attention_heads,
            hkv: c.num_key_value_heads,
            t: seq,
            s: seq,
            d: c.head_dim(),
        };
        if attention_kernel_in_use(&self.device, &attn) == AttentionKernel::Composed {
            largest.push((
                "attention scores [B, heads, T, T]",
                attn.scores_bytes(),
                2.0,
            ));
        }
        for (what, bytes, power) in largest {
            if bytes > limit {
                let scale = limit as f64 / bytes as f64;
                return Err(ModelError::Input(format!(
                    "a batch of {batch} sequences of {seq} tokens needs {bytes} bytes for the {what}, over this device's \
                     limit of {limit} bytes for one kernel binding ({}); use a micro-batch of at most {} (with gradient \
                     accumulation to keep the effective batch) or sequences of at most {} tokens",
                    self.device.info().name,
                    ((batch as f64 * scale).floor() as usize).max(1),
                    ((seq as f64 * scale.powf(1.0 / power)).floor() as usize).max(1),
                )));
            }
        }
        Ok(())
    }

    /// Sets the precision of the frozen products (see [`Precision`]). `Mixed` rounds the
    /// inputs of every frozen linear layer and of lm_head to f16; it does not change how the
    /// weights are stored (load with f16 weights for that, as `--precision mixed` does).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        for layer in &mut self.layers {
            for (_, linear) in layer.linears_mut() {
                linear.half_inputs = precision == Precision::Mixed;
            }
        }
    }

    /// The precision of the frozen products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Stores the frozen linear weights of every layer as f16 (half their memory; the
    /// matmuls widen them to f32 as they load and accumulate in f32). The embedding, the
    /// norms and lm_head stay f32. Not for weights being trained.
    pub fn store_frozen_weights_f16(&mut self) -> Result<()> {
        self.store_frozen_weights(DType::F16)
    }

    /// Stores the frozen linear weights of every layer as `format` (see [`weight_storage`];
    /// the matmuls widen or dequantize them as they load them). Loading with
    /// [`Llama::load_as`] does this without ever holding the f32 weights on the device;
    /// this converts a model already loaded. Not for weights being trained.
    pub fn store_frozen_weights(&mut self, format: DType) -> Result<()> {
        for (_, m, linear) in self.linears() {
            if linear.weight.requires_grad() {
                return Err(ModelError::Input(format!(
                    "{m} is being trained: only frozen weights can be stored as {}",
                    format.name()
                )));
            }
        }
        self.store_weights_as(format, |name| name.starts_with("model.layers."))
    }

    /// Re-stores every layer linear weight whose name `which` accepts in the format
    /// [`weight_storage`] gives it (converted on the host; f32 to f16 on the device).
    fn store_weights_as(&mut self, format: DType, which: impl Fn(&str) -> bool) -> Result<()> {
        for (l, m, linear) in self.linears_mut() {
            let name = format!("{}.weight", Layer::module_path(l, m));
            let shape = linear.weight.shape().to_vec();
            let want = weight_storage(&name, &shape, format);
            if !which(&name) || linear.weight.dtype() == want {
                continue;
            }
            linear.weight = match (linear.weight.dtype(), want) {
                (DType::F32, DType::F16) => linear.weight.to_f16()?,
                _ => {
                    let values = linear.weight.to_vec_dequantized()?;
                    Tensor::from_f32_as(linear.weight.device(), &values, &shape, want)?
                }
            };
        }
        Ok(())
    }

    /// Logits under `no_grad`, for inference.
    pub fn logits(&self, ids: &[u32], batch: usize) -> Result<Tensor> {
        no_grad(|| self.forward(ids, batch, None))
    }
}

/// Sequences and tokens per sequence of a forward.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
}

/// x + attention(rms_norm(x)): the first half of a decoder layer, x [B T, H].
fn attention_block(
    c: &LlamaConfig,
    layer: &Layer,
    x: &Tensor,
    dims: Dims,
    tables: &RopeTables,
    cache: Option<(&mut KvCache, usize)>,
) -> Result<Tensor> {
    let h = x.rms_norm(&layer.input_norm, c.rms_norm_eps as f32)?;
    let attn = attention(c, layer, &h, dims, tables, cache)?;
    Ok(x.add(&attn)?)
}

/// x + mlp(rms_norm(x)), the SwiGLU MLP: the second half of a decoder layer, x [B T, H].
fn mlp_block(c: &LlamaConfig, layer: &Layer, x: &Tensor) -> Result<Tensor> {
    let h = x.rms_norm(&layer.post_norm, c.rms_norm_eps as f32)?;
    let gated = swiglu(&layer.gate_proj.forward(&h)?, &layer.up_proj.forward(&h)?)?; // [B T, I]
    let mlp = layer.down_proj.forward(&gated)?;
    Ok(x.add(&mlp)?)
}

/// A whole decoder layer, x [B T, H], as a checkpoint: only x is kept, and the layer is run
/// again in backward with the same kernels in the same order. The dropout seed is read now
/// and set again for the re-run, so that the re-run draws the forward's masks.
fn checkpointed_layer(
    c: &LlamaConfig,
    layer: &Layer,
    x: &Tensor,
    dims: Dims,
    tables: &RopeTables,
) -> Result<Tensor> {
    let (c, layer, tables) = (c.clone(), layer.clone(), tables.clone());
    let seed = layer
        .linears()
        .find_map(|(_, linear)| linear.adapter.as_ref())
        .map(|adapter| adapter.dropout.seed.clone());
    let forward_seed = seed.as_ref().map(|s| s.load(Ordering::Relaxed));
    Ok(checkpoint(&[x], move |xs| {
        let before = seed
            .as_ref()
            .zip(forward_seed)
            .map(|(s, v)| s.swap(v, Ordering::Relaxed));
        let out = attention_block(&c, &layer, &xs[0], dims, &tables, None)
            .and_then(|x| mlp_block(&c, &layer, &x));
        if let (Some(s), Some(v)) = (&seed, before) {
            s.store(v, Ordering::Relaxed);
        }
        out.map_err(|e| match e {
            ModelError::Engine(e) => e,
            other => hydralora_engine::Error::InvalidArgument {
                op: "decoder layer",
                shape: xs[0].shape().to_vec(),
                why: other.to_string(),
            },
        })
    })?)
}

/// Self-attention of one layer: h [B T, H] -> [B T, H].
fn attention(
    c: &LlamaConfig,
    layer: &Layer,
    h: &Tensor,
    Dims { b, t }: Dims,
    tables: &RopeTables,
    cache: Option<(&mut KvCache, usize)>,
) -> Result<Tensor> {
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
    // Project and rotate in [B, T, heads, hd] (table row = token).
    let q = rope(
        &layer.q_proj.forward(h)?.reshape(&[b, t, nh, hd])?,
        tables,
        nh,
    )?; // [B, T, nh, hd]
    let k = rope(
        &layer.k_proj.forward(h)?.reshape(&[b, t, nkv, hd])?,
        tables,
        nkv,
    )?; // [B, T, nkv, hd]
    let v = layer.v_proj.forward(h)?.reshape(&[b, t, nkv, hd])?; // [B, T, nkv, hd]
    let out = match cache {
        // The cache keeps heads first [B, nkv, S, hd], extended along S.
        Some((cache, l)) => {
            let (k, v) = cache.extend(l, k.transpose(1, 2)?, v.transpose(1, 2)?)?;
            causal_attention(&q.transpose(1, 2)?, &k, &v)?.transpose(1, 2)?
        }
        // Tokens first: the flash kernels read this layout, no transposes.
        None => causal_attention_tokens_first(&q, &k, &v)?,
    }; // [B, T, nh, hd]
    let out = out.reshape(&[b * t, nh * hd])?;
    Ok(layer.o_proj.forward(&out)?)
}

/// Refuses, before anything is uploaded, a model whose weights (in the formats
/// [`weight_storage`] gives them for `frozen`) would take the device's pool past its
/// memory budget.
fn check_weights_fit(device: &Device, c: &LlamaConfig, frozen: DType) -> Result<()> {
    let Some(budget) = device.memory_budget() else {
        return Ok(());
    };
    let need: u64 = llama_tensor_shapes(c)
        .iter()
        .map(|(name, shape)| {
            let numel = shape.iter().product::<usize>();
            pool_bytes(weight_storage(name, shape, frozen).storage_bytes(numel))
        })
        .sum();
    let held = device.pool_stats().in_use;
    if held + need <= budget {
        return Ok(());
    }
    Err(ModelError::Input(format!(
        "the model's weights need {} of device memory as loaded ({}), over the memory budget \
         of {}{} (--memory-budget, Device::set_memory_budget): use a device with more memory, \
         raise the budget or store the frozen weights smaller (--weights q4_k)",
        human_bytes(need),
        frozen.name(),
        human_bytes(budget),
        match held {
            0 => String::new(),
            _ => format!(" with {} already held", human_bytes(held)),
        }
    )))
}

/// The format a weight named `name` of `shape` is kept in when the frozen weights are
/// `frozen`:
/// - the norms: f32 (rms_norm computes with them in f32);
/// - the layers' linear weights and the token embedding: `frozen` (the lookup reads every
///   format, through the matmul's weight pieces);
/// - an untied lm_head: `frozen`, except that 4-bit layers get a q6_k lm_head, as
///   llama.cpp's Q4_K_M and Q4_0 files do (the logits are the most sensitive product);
/// - a block format whose block does not divide the rows falls back to q8_0 (blocks of
///   32), or to f32 when even that does not divide them.
pub fn weight_storage(name: &str, shape: &[usize], frozen: DType) -> DType {
    let wanted = if name.contains("norm") {
        DType::F32
    } else if name == "lm_head.weight" && matches!(frozen, DType::Q4_0 | DType::Q4K) {
        DType::Q6K
    } else {
        frozen
    };
    let cols = shape.last().copied().unwrap_or(1);
    [wanted, DType::Q8_0, DType::F32]
        .into_iter()
        .find(|d| cols % d.block_elements() == 0 && (*d == wanted || wanted.block_elements() > 1))
        .unwrap_or(DType::F32)
}

/// Uploads a stored tensor as `format`: its own bytes when it is stored so, else widened
/// (and quantized) on the host.
fn upload(device: &Device, stored: StoredTensor, shape: &[usize], format: DType) -> Result<Tensor> {
    if stored.dtype == format {
        return Ok(match format {
            DType::F32 => Tensor::from_slice(device, &stored.to_f32(numel(shape))?, shape)?,
            _ => Tensor::from_blocks(device, format, &stored.bytes, shape)?,
        });
    }
    let values = stored.to_f32(numel(shape))?;
    Ok(Tensor::from_f32_as(device, &values, shape, format)?)
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A [rows, cols] matrix uploaded as `format` in row blocks that each fit one kernel
/// binding (the embedding and lm_head of a large vocabulary): one block when it fits.
fn upload_rows(
    device: &Device,
    stored: StoredTensor,
    [rows, cols]: [usize; 2],
    format: DType,
) -> Result<Vec<Tensor>> {
    let limit = device.info().max_binding_bytes();
    if format.storage_bytes(rows * cols) <= limit {
        return Ok(vec![upload(device, stored, &[rows, cols], format)?]);
    }
    let rows_per_part =
        ((limit / format.storage_bytes(cols).max(1)) as usize).clamp(1, rows.max(1));
    let values = stored.to_f32(rows * cols)?;
    drop(stored);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = rows_per_part.min(rows - start);
        let part = &values[start * cols..(start + n) * cols];
        parts.push(Tensor::from_f32_as(device, part, &[n, cols], format)?);
        start += n;
    }
    Ok(parts)
}

/// labels[:, 1:] followed by -100: what logits[:, t] is scored against.
pub fn shift_labels(labels: &[i32], batch: usize, t: usize) -> Vec<i32> {
    let mut out = vec![IGNORE_INDEX; batch * t];
    for b in 0..batch {
        out[b * t..b * t + t - 1].copy_from_slice(&labels[b * t + 1..b * t + t]);
    }
    out
}
