//! The device memory a training run needs, estimated before its first step so that a run
//! that cannot fit the device's memory budget is refused with the numbers instead of
//! failing mid-step.
//!
//! Every tensor is counted in the bytes the buffer pool holds for it
//! ([`hydralora_engine::pool_bytes`]), the same bytes the budget caps. The activation terms
//! assume every op of the forward is recorded (full training, or an adapter on the first
//! module of layer 0): a frozen part of the graph records less, so the estimate is an upper
//! bound: measured 1.06 to 1.23 times the pool's peak on the tiny fixture model and 1.09 to
//! 1.22 on `bench-s`; `tests/memory.rs` asserts both sides (peak <= estimate <= 1.5 x peak).
//!
//! With activation checkpointing ([`Llama::checkpoint_activations`]) the layers keep only
//! their inputs, and one layer's activations and attention term are alive at a time, while
//! its backward re-runs it. [`check_training_fits`] estimates a run both ways and turns
//! checkpointing on when only that fits the budget.

use hydralora_engine::{
    attention_kernel_in_use, human_bytes, pool_bytes, AttentionKernel, AttnDims, DType, Tensor,
};

use crate::adapter::Adapter;
use crate::error::{ModelError, Result};
use crate::llama::config::LlamaConfig;
use crate::llama::{weight_storage, Llama};

/// Bytes of one training step at its peak (the end of backward), by what holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Model weights as stored (f32, or a storage format for frozen weights), plus adapter weights.
    pub weights: u64,
    /// Gradients of the trainable parameters (two sets while micro-batches accumulate) and
    /// AdamW's two moments.
    pub optimizer: u64,
    /// What the decoder layers' forward keeps for backward, attention scores excluded, plus
    /// backward's working set.
    pub activations: u64,
    /// The attention scores and probabilities kept for backward (see [`attention_scores`]).
    pub attention: u64,
    /// The fused loss: one chunk's logits and their gradient, its saved rows, and the
    /// gradients it computes in the forward and holds until backward.
    pub logits: u64,
}

impl MemoryEstimate {
    /// The estimated peak: every part added up.
    pub fn total(&self) -> u64 {
        self.weights + self.optimizer + self.activations + self.attention + self.logits
    }

    /// `weights 1.00 GiB, gradients and AdamW moments ..., ...`: where the bytes go.
    pub fn breakdown(&self) -> String {
        format!(
            "weights {}, gradients and AdamW moments {}, activations {}, attention {}, \
             logits and loss {}",
            human_bytes(self.weights),
            human_bytes(self.optimizer),
            human_bytes(self.activations),
            human_bytes(self.attention),
            human_bytes(self.logits)
        )
    }
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", human_bytes(self.total()), self.breakdown())
    }
}

/// What a run trains, as the estimate needs it.
#[derive(Clone, Copy, Debug)]
pub struct RunShape {
    /// Sequences per micro-batch.
    pub micro_batch: usize,
    /// The longest sequence (tokens) of a micro-batch.
    pub seq: usize,
    /// Micro-batches per optimizer step (above 1, the summed gradients are held as well).
    pub grad_accum: usize,
}

/// The peak bytes of a training step of `model` over `params` (the trainable tensors), with
/// activation checkpointing as the model is set.
pub fn estimate_training(model: &Llama, params: &[Tensor], run: RunShape) -> MemoryEstimate {
    estimate_training_as(model, params, run, model.checkpoint_activations)
}

/// [`estimate_training`] with activation checkpointing on or off, whatever the model's
/// setting.
pub fn estimate_training_as(
    model: &Llama,
    params: &[Tensor],
    run: RunShape,
    checkpoint: bool,
) -> MemoryEstimate {
    estimate_with(
        model,
        params,
        run,
        model_weights(model, params, None),
        checkpoint,
    )
}

fn estimate_with(
    model: &Llama,
    params: &[Tensor],
    run: RunShape,
    weights: u64,
    checkpoint: bool,
) -> MemoryEstimate {
    let c = &model.config;
    let (b, t) = (run.micro_batch, run.seq);
    let n = b * t;
    let f32s = |elems: usize| pool_bytes(elems as u64 * 4);
    let grads = if run.grad_accum > 1 { 2 } else { 1 };
    let optimizer = params.iter().map(|p| (grads + 2) * f32s(p.numel())).sum();
    let (layers, layers_with_scores) = match checkpoint {
        false => (
            (0..model.layers.len())
                .map(|l| layer_with_adapters(model, l, n))
                .sum(),
            c.num_hidden_layers as u64,
        ),
        true => (checkpointed_layers(model, n), 1),
    };
    // Around the layers: the final norm's input, rstd and output; ids, labels, RoPE tables.
    let ends = 2 * f32s(n * c.hidden_size) + 3 * f32s(n) + 2 * f32s(t * c.head_dim() / 2);
    MemoryEstimate {
        weights,
        optimizer,
        activations: layers + ends + backward_working_set(model, b, t),
        attention: layers_with_scores * attention_scores(model, b, t),
        logits: logits(model, n),
    }
}

/// What decoder layer `l`'s forward keeps for backward, its adapters' part included.
fn layer_with_adapters(model: &Llama, l: usize, n: usize) -> u64 {
    layer_activations(&model.config, n)
        + model
            .adapters()
            .filter(|&(layer, _, _)| layer == l)
            .map(|(_, _, adapter)| adapter_activations(adapter, n))
            .sum::<u64>()
}

/// The layers' activations with checkpointing: every layer's input [H] per token, kept by
/// its checkpoint; the largest layer's activations, alive while its backward re-runs it; the
/// gradient entering that layer (held while the re-run's graph is walked) and the one
/// leaving it ([H] each); and the router gates kept for statistics ([E] per routed adapter),
/// which no longer belong to a graph.
fn checkpointed_layers(model: &Llama, n: usize) -> u64 {
    let f32s = |elems: usize| pool_bytes(elems as u64 * 4);
    let h = model.config.hidden_size;
    let largest = (0..model.layers.len())
        .map(|l| layer_with_adapters(model, l, n))
        .max()
        .unwrap_or(0);
    let gates: u64 = model
        .adapters()
        .filter(|(_, _, ad)| ad.routed && ad.record_gates)
        .map(|(_, _, ad)| f32s(n * ad.experts()))
        .sum();
    model.layers.len() as u64 * f32s(n * h) + largest + 2 * f32s(n * h) + gates
}

/// What one decoder layer's forward keeps for backward for `n` tokens, attention scores
/// excluded: per token, the layer input, the two norm outputs, o_proj's and down_proj's
/// outputs and the residual sum ([H] each); q through projection, RoPE and the head-first
/// transpose, the attention output and its transpose ([nh hd] each); k through projection,
/// RoPE and transpose, v through projection and transpose ([nkv hd] each); the gate, up and
/// SwiGLU outputs ([I] each); the two norms' rstd.
fn layer_activations(c: &LlamaConfig, n: usize) -> u64 {
    let f32s = |elems: usize| pool_bytes(elems as u64 * 4);
    6 * f32s(n * c.hidden_size)
        + 5 * f32s(n * c.q_dim())
        + 5 * f32s(n * c.kv_dim())
        + 3 * f32s(n * c.intermediate_size)
        + 2 * f32s(n)
}

/// The attention term, in one place, for the kernel the model's attention runs on this
/// device ([`attention_kernel_in_use`], which honours `HYDRALORA_ATTENTION`): the composed
/// path (matmul + masked softmax) keeps the scores and their softmax, [B, heads, T, T] each; the flash kernels recompute them in
/// backward and keep only one log-sum-exp per row, [B, heads, T] (the output is counted
/// with the layer's activations).
pub fn attention_scores(model: &Llama, b: usize, t: usize) -> u64 {
    let c = &model.config;
    let dims = AttnDims {
        b,
        hq: c.num_attention_heads,
        hkv: c.num_key_value_heads,
        t,
        s: t,
        d: c.head_dim(),
    };
    match attention_kernel_in_use(model.device(), &dims) {
        AttentionKernel::Composed => 2 * pool_bytes(dims.scores_bytes()),
        _ => pool_bytes((b * c.num_attention_heads * t) as u64 * 4),
    }
}

/// What an adapted linear layer keeps beyond the frozen one: the packed
/// down-projection x [A; Wg]^T ([r + E] for E experts; the adapter's scaled product is summed into the
/// frozen product's own buffer, so nothing of [d_out]); with dropout the mask, the dropped
/// input ([d_in] each) and its own down-projection; for HydraLoRA the gate expansion
/// ([E r]), and with top-k the gates and their mask and renormalisation (six [E]).
fn adapter_activations(ad: &Adapter, n: usize) -> u64 {
    let f32s = |elems: usize| pool_bytes(elems as u64 * 4);
    let (d_in, down, r, experts) = (ad.down.dim(1), ad.down.dim(0), ad.rank(), ad.experts());
    let mut bytes = f32s(n * down);
    if ad.dropout.p > 0.0 {
        bytes += 2 * f32s(n * d_in) + f32s(n * down);
    }
    if ad.routed {
        bytes += f32s(n * experts * r);
        if ad.top_k.is_some() {
            bytes += 6 * f32s(n * experts);
        }
    }
    bytes
}

/// Gradients alive at once inside one layer's backward: those of the attention term (for
/// the composed path: the scores and the probabilities plus one more [B, heads, T, T]), and
/// a few per-token rows of the widest activation.
fn backward_working_set(model: &Llama, b: usize, t: usize) -> u64 {
    let c = &model.config;
    let widest = c.hidden_size.max(c.intermediate_size).max(c.q_dim());
    3 * attention_scores(model, b, t) / 2 + 6 * pool_bytes((b * t * widest) as u64 * 4)
}

/// The fused loss ([`Llama::loss`]) never holds the [N, V] logits: at its peak, one chunk's
/// logits [rows, V] (per lm_head part, and joined when split) or the joined logits and their
/// gradient, and a part's columns of that gradient; the rows' losses and counts [N]; and what
/// it keeps from forward to backward: d hidden [N, H] and each trainable lm_head part's dW.
fn logits(model: &Llama, n: usize) -> u64 {
    let (v, h) = (model.config.vocab_size, model.config.hidden_size);
    let rows = model.loss_chunk_rows().min(n);
    let f32s = |elems: usize| pool_bytes(elems as u64 * 4);
    let parts: u64 = model.lm_head.iter().map(|w| f32s(rows * w.dim(0))).sum();
    let chunk = match model.lm_head.len() {
        1 => 2 * parts,
        _ => f32s(rows * v) + parts.max(f32s(rows * v)),
    };
    let kept: u64 = model
        .lm_head
        .iter()
        .filter(|w| w.requires_grad())
        .map(|w| f32s(w.numel()))
        .sum();
    chunk + 3 * f32s(n) + f32s(n * h) + kept + 256
}

/// Bytes of the weights: the model's as stored, or (with `frozen`) with every frozen layer
/// weight stored in the format [`weight_storage`] gives it for `frozen`; plus the trainable
/// tensors that are not model weights.
fn model_weights(model: &Llama, params: &[Tensor], frozen: Option<DType>) -> u64 {
    let named = model.named_weights();
    let base: u64 = named
        .iter()
        .map(|(name, t)| {
            let frozen_linear =
                name.starts_with("model.layers.") && !name.contains("norm") && !t.requires_grad();
            let dtype = match frozen {
                Some(f) if frozen_linear => weight_storage(name, t.shape(), f),
                _ => t.dtype(),
            };
            pool_bytes(dtype.storage_bytes(t.numel()))
        })
        .sum();
    let extra: u64 = params
        .iter()
        .filter(|p| !named.iter().any(|(_, t)| t.id() == p.id()))
        .map(|p| pool_bytes(p.dtype().storage_bytes(p.numel())))
        .sum();
    base + extra
}

/// How a run will use memory: its estimate, and whether activation checkpointing is on and
/// why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The estimate of the run as it will run.
    pub estimate: MemoryEstimate,
    /// Whether the decoder layers are checkpointed ([`Llama::checkpoint_activations`]).
    pub checkpoint_activations: bool,
    /// Why, in words, with both estimates where the budget decided it.
    pub why: String,
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = if self.checkpoint_activations {
            "on"
        } else {
            "off"
        };
        write!(
            f,
            "estimated peak {}; activation checkpointing {on}: {}",
            self.estimate, self.why
        )
    }
}

/// Decides activation checkpointing for a run and refuses, before any step, a run that does
/// not fit `budget` either way. Checkpointing is on when `requested`, or when the run fits
/// the budget only with it (not with a load-balancing loss, which reads the router's gates
/// from the forward's graph). The refusal gives both numbers, the breakdown, and the largest
/// micro-batch, the longest sequence, or the frozen-weight storage that would fit.
pub fn check_training_fits(
    model: &Llama,
    params: &[Tensor],
    run: RunShape,
    budget: Option<u64>,
    requested: bool,
) -> Result<MemoryPlan> {
    let balance = model.adapter.as_ref().is_some_and(|a| a.balance_coef > 0.0);
    if requested && balance {
        return Err(ModelError::Input(
            "activation checkpointing does not keep the router's gates in a graph, which the              load-balancing loss reads: train with --balance-coef 0, or without              --checkpoint-activations"
                .into(),
        ));
    }
    let plain = estimate_training_as(model, params, run, false);
    let checkpointed = estimate_training_as(model, params, run, true);
    let fits = |est: &MemoryEstimate| budget.is_none_or(|b| est.total() <= b);
    let plan = |estimate, on, why: String| MemoryPlan {
        estimate,
        checkpoint_activations: on,
        why,
    };
    let both = format!(
        "{} with it, {} without",
        human_bytes(checkpointed.total()),
        human_bytes(plain.total())
    );
    if requested && fits(&checkpointed) {
        return Ok(plan(checkpointed, true, format!("asked for ({both})")));
    }
    if !requested && fits(&plain) {
        let why = match budget {
            Some(b) => format!("not needed, the run fits the budget of {}", human_bytes(b)),
            None => "not asked for, and no memory budget".to_string(),
        };
        return Ok(plan(plain, false, why));
    }
    if !requested && !balance && fits(&checkpointed) {
        let why = format!(
            "chosen because the run fits the memory budget of {} only with it ({both})",
            human_bytes(budget.unwrap_or(0))
        );
        return Ok(plan(checkpointed, true, why));
    }
    let checkpoint = requested || !balance;
    Err(refusal(model, params, run, budget.unwrap_or(0), checkpoint))
}

/// Why a run does not fit `budget` (with activation checkpointing when `checkpoint`), and
/// what would.
fn refusal(
    model: &Llama,
    params: &[Tensor],
    run: RunShape,
    budget: u64,
    checkpoint: bool,
) -> ModelError {
    let estimate = |shape| estimate_training_as(model, params, shape, checkpoint);
    let est = estimate(run);
    let fits = |b: usize, t: usize| {
        let shape = RunShape {
            micro_batch: b,
            seq: t,
            ..run
        };
        estimate(shape).total() <= budget
    };
    let mut advice = Vec::new();
    if let Some(b) = (1..run.micro_batch).rev().find(|&b| fits(b, run.seq)) {
        advice.push(format!(
            "a micro-batch of at most {b} (--micro-batch {b}, with --grad-accum to keep the \
             effective batch)"
        ));
    } else if let Some(t) = longest_fitting(run.seq, |t| fits(1, t)) {
        let batch = if run.micro_batch > 1 {
            "a micro-batch of 1 and "
        } else {
            ""
        };
        advice.push(format!(
            "{batch}sequences of at most {t} tokens (--max-len {t})"
        ));
    }
    // The smallest storage of the frozen layer weights that fits, if any does.
    let smaller = [DType::F16, DType::Q8_0, DType::Q4K]
        .into_iter()
        .map(|f| (f, model_weights(model, params, Some(f))))
        .filter(|&(_, bytes)| bytes < est.weights)
        .find(|&(_, bytes)| estimate_with(model, params, run, bytes, checkpoint).total() <= budget);
    if let Some((format, bytes)) = smaller {
        advice.push(format!(
            "the frozen weights stored as {0} (--weights {0}: weights {1})",
            format.name(),
            human_bytes(bytes)
        ));
    }
    let advice = match advice.is_empty() {
        true => "Even one sequence of one token does not fit: train fewer modules or a lower \
                 rank, store the frozen weights smaller (--weights q4_k), or raise the budget"
            .to_string(),
        false => format!("It would fit with {}", advice.join(", or with ")),
    };
    let how = match checkpoint {
        true => "with activation checkpointing",
        false => "without activation checkpointing (the load-balancing loss rules it out)",
    };
    ModelError::Input(format!(
        "this run needs an estimated {} of device memory {how}, over the memory budget of {} \
         (--memory-budget, Device::set_memory_budget). For micro-batches of {} sequences of {} \
         tokens: {}. {advice}",
        human_bytes(est.total()),
        human_bytes(budget),
        run.micro_batch,
        run.seq,
        est.breakdown(),
    ))
}

/// The largest t < `seq` with `fits(t)` (fits is monotone: shorter always fits better).
fn longest_fitting(seq: usize, fits: impl Fn(usize) -> bool) -> Option<usize> {
    if seq <= 1 || !fits(1) {
        return None;
    }
    let (mut lo, mut hi) = (1, seq - 1); // fits(lo) holds
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

/// A size in bytes from `6GiB`, `512MiB`, `1.5GiB`, `100KB` (powers of 1000), `4096`
/// (plain bytes); units are case-insensitive, `K`/`M`/`G`/`T` alone mean the binary ones.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => f64::NAN,
    };
    let value = number.parse::<f64>().unwrap_or(f64::NAN) * scale;
    if !value.is_finite() || value < 1.0 || value > u64::MAX as f64 {
        return Err(format!(
            "`{text}` is not a memory size: write e.g. 6GiB, 512MiB or a number of bytes"
        ));
    }
    Ok(value as u64)
}

#[cfg(test)]
mod tests {
    use super::{longest_fitting, parse_bytes};

    #[test]
    fn sizes_parse_in_binary_and_decimal_units_and_junk_is_refused() {
        assert_eq!(parse_bytes("6GiB"), Ok(6 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5 gib"), Ok(3 << 29));
        assert_eq!(parse_bytes("100KB"), Ok(100_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        for junk in ["", "lots", "6 GiBs", "-1MiB", "0", "1.2.3MiB", "MiB"] {
            let err = parse_bytes(junk).unwrap_err();
            assert!(err.contains("not a memory size"), "{junk}: {err}");
        }
    }

    #[test]
    fn the_longest_fitting_length_is_the_boundary() {
        for limit in [1usize, 2, 7, 63, 64] {
            assert_eq!(longest_fitting(65, |t| t <= limit), Some(limit));
        }
        assert_eq!(longest_fitting(65, |_| false), None);
        assert_eq!(longest_fitting(1, |_| true), None);
    }
}
