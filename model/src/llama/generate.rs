//! Text generation: a KV cache, greedy or sampled decoding (temperature, top-k, top-p) with a
//! seed, stopping at EOS or a token budget, each token handed to the caller as it comes.

use hydralora_engine::{no_grad, rng::Rng, Tensor};

use crate::error::{ModelError, Result};
use crate::llama::{KvCache, Llama};

/// How to pick each next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Keep only the k most likely tokens (None or 0: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p (None or 1: all).
    pub top_p: Option<f32>,
    /// Seeds the sampling (unused when greedy): the same seed gives the same tokens.
    pub seed: u64,
    /// Tokens that end generation (EOS); the stop token is not returned.
    pub stop_tokens: Vec<u32>,
    /// Reuse keys and values of earlier tokens (false recomputes the whole prefix each step).
    pub use_cache: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            stop_tokens: vec![],
            use_cache: true,
        }
    }
}

impl SamplingConfig {
    fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(ModelError::Input(format!(
                "temperature must be finite and >= 0, got {}",
                self.temperature
            )));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ModelError::Input(format!(
                    "top_p must be in (0, 1], got {p}"
                )));
            }
        }
        Ok(())
    }
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` with each new token
/// as soon as it is chosen (return false from it to stop early). Returns the new tokens
/// (without the prompt or the stop token). Also stops at the model's
/// `max_position_embeddings`. Errors: an empty prompt, an invalid `cfg` (temperature < 0,
/// top_p outside (0, 1]), an id outside the vocabulary.
///
/// ```no_run
/// use hydralora_model::{engine::Device, generate, HfCodec, Llama, SamplingConfig, TextCodec};
/// # fn main() -> hydralora_model::Result<()> {
/// let device = Device::new()?;
/// let model = Llama::load(&device, "models/TinyLlama-1.1B")?;
/// let codec = HfCodec::from_dir("models/TinyLlama-1.1B", &model.config)?;
/// let prompt = hydralora_model::data::encode_prompt(&codec, "The capital of France is")?;
/// let cfg = SamplingConfig {
///     max_new_tokens: 16,
///     temperature: 0.7,
///     top_p: Some(0.9),
///     seed: 1,
///     stop_tokens: model.config.eos_token_ids.clone(),
///     ..SamplingConfig::default()
/// };
/// let new = generate(&model, &prompt, &cfg, |_| true)?;
/// println!("{}", codec.decode(&new)?);
/// # Ok(()) }
/// ```
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    cfg: &SamplingConfig,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let mut decoding = Decoding::new(prompt, cfg)?;
    while let Some(logits) = decoding.record_next(model)? {
        match decoding.accept(&logits.to_vec_f32()?) {
            Some(token) if on_token(token) => {}
            _ => break,
        }
    }
    Ok(decoding.out)
}

/// [`generate`] for async callers, and the one a browser can run (each token's logits are
/// awaited, not waited for).
pub async fn generate_async(
    model: &Llama,
    prompt: &[u32],
    cfg: &SamplingConfig,
) -> Result<Vec<u32>> {
    let mut decoding = Decoding::new(prompt, cfg)?;
    while let Some(logits) = decoding.record_next(model)? {
        if decoding.accept(&logits.to_vec_f32_async().await?).is_none() {
            break;
        }
    }
    Ok(decoding.out)
}

/// One sequence being decoded: [`Decoding::record_next`] records the forward of the next
/// position, [`Decoding::accept`] picks from its logits once they are on the host.
struct Decoding<'c> {
    cfg: &'c SamplingConfig,
    rng: Rng,
    cache: KvCache,
    tokens: Vec<u32>,
    out: Vec<u32>,
    /// What the next forward feeds: the prompt first, then (with a cache) the newest token.
    feed: Vec<u32>,
    done: bool,
}

impl<'c> Decoding<'c> {
    fn new(prompt: &[u32], cfg: &'c SamplingConfig) -> Result<Self> {
        cfg.validate()?;
        if prompt.is_empty() {
            return Err(ModelError::Input("the prompt has no tokens".into()));
        }
        Ok(Decoding {
            cfg,
            rng: Rng::new(cfg.seed),
            cache: KvCache::new(),
            tokens: prompt.to_vec(),
            out: Vec::new(),
            feed: prompt.to_vec(),
            done: false,
        })
    }

    /// The next position's logits `[1, V]`, recorded (not read); None when decoding is over.
    fn record_next(&mut self, model: &Llama) -> Result<Option<Tensor>> {
        let max_len = model.config.max_position_embeddings;
        if self.done || self.out.len() >= self.cfg.max_new_tokens || self.tokens.len() >= max_len {
            return Ok(None);
        }
        let logits = if self.cfg.use_cache {
            last_logits_tensor(model, &self.feed, 1, Some(&mut self.cache))?
        } else {
            last_logits_tensor(model, &self.tokens, 1, None)?
        };
        Ok(Some(logits))
    }

    /// Picks the next token from `logits` `[V]`: Some(token), or None at a stop token.
    fn accept(&mut self, logits: &[f32]) -> Option<u32> {
        let next = pick(logits, self.cfg, &mut self.rng);
        if self.cfg.stop_tokens.contains(&next) {
            self.done = true;
            return None;
        }
        self.tokens.push(next);
        self.out.push(next);
        self.feed = vec![next];
        Some(next)
    }
}

/// Greedy decoding of many prompts, several per forward: prompts of the same length run
/// together, up to `batch` at a time, through one KV cache (the attention kernels have no
/// padding mask, so only prompts of equal length can share a forward). Each sequence stops at
/// a token of `stop_tokens` (not returned), after `max_new_tokens[i]` tokens, or at the
/// model's `max_position_embeddings`; a batch runs until its last sequence stops.
///
/// Returns each prompt's new tokens, in the prompts' order: the tokens [`generate`] gives
/// one prompt at a time, greedy. (Row by row, a batched product sums in the same order as a
/// product of one row where the kernels do not split K differently by row count: always on
/// models up to K = 1024; in the rest, a float rounding can differ and flip a near tie.)
/// Errors: an empty prompt, `max_new_tokens` not one per prompt, `batch` 0, an id outside the
/// vocabulary.
pub fn generate_greedy_batch(
    model: &Llama,
    prompts: &[Vec<u32>],
    max_new_tokens: &[usize],
    stop_tokens: &[u32],
    batch: usize,
) -> Result<Vec<Vec<u32>>> {
    if max_new_tokens.len() != prompts.len() || batch == 0 {
        return Err(ModelError::Input(format!(
            "batched generation needs one token budget per prompt ({} for {} prompts) and a \
             batch of at least 1 (got {batch})",
            max_new_tokens.len(),
            prompts.len()
        )));
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(ModelError::Input("a prompt has no tokens".into()));
    }
    // Prompt indices by prompt length: each group can share a forward.
    let mut by_length: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, prompt) in prompts.iter().enumerate() {
        by_length.entry(prompt.len()).or_default().push(i);
    }
    let mut out = vec![Vec::new(); prompts.len()];
    for group in by_length.values() {
        for chunk in group.chunks(batch) {
            let chunk_prompts: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i].as_slice()).collect();
            let budgets: Vec<usize> = chunk.iter().map(|&i| max_new_tokens[i]).collect();
            let new = greedy_same_length(model, &chunk_prompts, &budgets, stop_tokens)?;
            for (&i, tokens) in chunk.iter().zip(new) {
                out[i] = tokens;
            }
        }
    }
    Ok(out)
}

/// Greedy decoding of prompts of one length as one batch `[B, T]`, then `[B, 1]` per step.
fn greedy_same_length(
    model: &Llama,
    prompts: &[&[u32]],
    max_new_tokens: &[usize],
    stop_tokens: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let b = prompts.len();
    let max_len = model.config.max_position_embeddings;
    let steps = max_new_tokens.iter().copied().max().unwrap_or(0);
    let mut cache = KvCache::new();
    let mut out = vec![Vec::new(); b];
    let mut running: Vec<bool> = max_new_tokens.iter().map(|&n| n > 0).collect();
    let mut feed: Vec<u32> = prompts.concat(); // [B, T] row-major, then [B, 1]
    let mut length = prompts[0].len();
    for _ in 0..steps {
        if !running.contains(&true) || length >= max_len {
            break;
        }
        let logits = last_logits_tensor(model, &feed, b, Some(&mut cache))?.to_vec_f32()?; // [B * V]
        let vocab = logits.len() / b;
        feed = logits.chunks(vocab).map(argmax).collect();
        for (row, &token) in feed.iter().enumerate() {
            // A finished row still feeds a token (the batch moves together); it is not kept.
            if !running[row] {
                continue;
            }
            if stop_tokens.contains(&token) {
                running[row] = false;
                continue;
            }
            out[row].push(token);
            running[row] = out[row].len() < max_new_tokens[row];
        }
        length += 1;
    }
    Ok(out)
}

/// Logits `[B, V]` of the last position of each of `batch` sequences, ids `[B, T]`
/// row-major; recorded, not read back.
fn last_logits_tensor(
    model: &Llama,
    ids: &[u32],
    batch: usize,
    cache: Option<&mut KvCache>,
) -> Result<Tensor> {
    let t = ids.len() / batch;
    no_grad(|| {
        let hidden = model.hidden_states(ids, batch, cache)?; // [B T, H]
        let h = hidden.dim(1);
        let last = hidden.reshape(&[batch, t, h])?.narrow(1, t - 1, 1)?; // [B, 1, H]
        let last = last.reshape(&[batch, h])?;
        model.project_vocab(&last)
    })
}

/// The next token from logits, greedy or sampled per `cfg`.
pub fn pick(logits: &[f32], cfg: &SamplingConfig, rng: &mut Rng) -> u32 {
    if cfg.temperature == 0.0 {
        return argmax(logits);
    }
    // Candidates by descending logit; ties keep the lower id first.
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if let Some(k) = cfg.top_k.filter(|&k| k > 0) {
        order.truncate(k);
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / cfg.temperature as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = cfg.top_p.filter(|&p| p < 1.0) {
        let mut cumulative = 0.0;
        let keep = probs.iter().position(|&q| {
            cumulative += q;
            cumulative >= p as f64
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.next_f64() * total;
    for (&i, &p) in order.iter().zip(&probs) {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    order[order.len() - 1] as u32
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}
