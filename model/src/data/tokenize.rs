//! Examples -> token ids and labels, with loss only on the response.

use std::fmt;
use std::num::NonZeroUsize;
use std::thread;

use super::Example;
use crate::error::{ModelError, Result};
use crate::llama::codec::TextCodec;

/// The label of a position that is not trained on (BOS, prompt, padding): the causal-LM loss
/// ignores it, as in `transformers`.
pub const IGNORE_INDEX: i32 = -100;

/// An example as token ids, with a label per id.
///
/// `ids = [BOS] + prompt + response + [EOS]` (BOS and EOS when the codec has them);
/// `labels[i] = IGNORE_INDEX` on BOS and prompt tokens, `ids[i]` on response tokens and EOS.
/// Labels are aligned with ids, not shifted: the loss predicts `labels[i + 1]` from position
/// `i` (`transformers` convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    /// Token ids, `[len]`, `len <= max_len`.
    pub ids: Vec<u32>,
    /// `[len]`: `IGNORE_INDEX` or the id at the same position.
    pub labels: Vec<i32>,
    /// The example's category, for metrics only.
    pub category: Option<String>,
}

/// What [`tokenize`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizeReport {
    /// Examples given.
    pub examples: usize,
    /// Examples returned.
    pub kept: usize,
    /// Examples longer than `max_len`, cut to their first `max_len` tokens (dropped ones
    /// included).
    pub truncated: usize,
    /// Truncated examples that lost every response token (and EOS): dropped.
    pub dropped_truncated: usize,
    /// Examples without any trained token even before truncation (an empty response and a
    /// codec without EOS): dropped.
    pub dropped_empty: usize,
    /// Tokens in the returned examples.
    pub tokens: usize,
    /// Of those, tokens with a label (trained on).
    pub labelled_tokens: usize,
    /// The longest example before truncation, in tokens.
    pub longest: usize,
    /// The length limit.
    pub max_len: usize,
}

impl fmt::Display for TokenizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} examples kept, {} tokens ({} trained on); {} longer than {} tokens were \
             truncated (longest {})",
            self.kept,
            self.examples,
            self.tokens,
            self.labelled_tokens,
            self.truncated,
            self.max_len,
            self.longest
        )?;
        if self.dropped_truncated > 0 {
            write!(
                f,
                ", {} of them dropped: no response token left",
                self.dropped_truncated
            )?;
        }
        if self.dropped_empty > 0 {
            write!(
                f,
                "; {} dropped with nothing to train on",
                self.dropped_empty
            )?;
        }
        Ok(())
    }
}

/// Tokenizes `examples` (in parallel, order kept) and cuts each to its first `max_len` tokens.
///
/// The prompt is encoded alone, as it will be at generation time ([`encode_prompt`]); the
/// response tokens are those that `prompt + response` encodes to after the prompt's tokens.
/// Where a tokenizer merges across the boundary (the prompt's tokens are not a prefix of the
/// whole's), the response is encoded alone instead.
///
/// Examples left without a trained token are dropped and counted; none left, `max_len == 0`,
/// no examples, or an id outside the codec's vocabulary are errors.
///
/// ```
/// use hydralora_model::data::{tokenize, Example, IGNORE_INDEX};
/// use hydralora_model::CharCodec;
/// # fn main() -> hydralora_model::Result<()> {
/// let codec = CharCodec::new("abc".chars())?; // <pad> 0, <bos> 1, <eos> 2, a 3, b 4, c 5
/// let example = Example { prompt: "ab".into(), response: "c".into(), category: None };
/// let (tokens, report) = tokenize(&[example], &codec, 16)?;
/// assert_eq!(tokens[0].ids, [1, 3, 4, 5, 2]); // <bos> a b c <eos>
/// assert_eq!(tokens[0].labels, [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 5, 2]);
/// assert_eq!(report.labelled_tokens, 2);
/// # Ok(()) }
/// ```
pub fn tokenize<C: TextCodec + ?Sized>(
    examples: &[Example],
    codec: &C,
    max_len: usize,
) -> Result<(Vec<TokenizedExample>, TokenizeReport)> {
    if max_len == 0 {
        return Err(ModelError::Input("max_len must be at least 1".into()));
    }
    if examples.is_empty() {
        return Err(ModelError::Input(
            "there are no examples to tokenize".into(),
        ));
    }
    let encoded = parallel_map(examples, |index, example| {
        encode_example(example, codec)
            .map_err(|e| ModelError::Input(format!("example {}: {e}", index + 1)))
    })?;
    let mut report = TokenizeReport {
        examples: examples.len(),
        max_len,
        ..TokenizeReport::default()
    };
    let mut out = Vec::with_capacity(examples.len());
    for (example, mut tokenized) in examples.iter().zip(encoded) {
        let len = tokenized.ids.len();
        report.longest = report.longest.max(len);
        let truncated = len > max_len;
        if truncated {
            report.truncated += 1;
            tokenized.ids.truncate(max_len);
            tokenized.labels.truncate(max_len);
        }
        let labelled = tokenized
            .labels
            .iter()
            .filter(|&&l| l != IGNORE_INDEX)
            .count();
        if labelled == 0 {
            if truncated {
                report.dropped_truncated += 1;
            } else {
                report.dropped_empty += 1;
            }
            continue;
        }
        report.tokens += tokenized.ids.len();
        report.labelled_tokens += labelled;
        tokenized.category.clone_from(&example.category);
        out.push(tokenized);
    }
    report.kept = out.len();
    if out.is_empty() {
        return Err(ModelError::Input(format!(
            "no example has a token to train on within {max_len} tokens: {report}"
        )));
    }
    Ok((out, report))
}

/// The ids a prompt is given to the model as: `[BOS] + prompt tokens` (what generation should
/// start from, matching training).
pub fn encode_prompt<C: TextCodec + ?Sized>(codec: &C, prompt: &str) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = codec.bos_id().into_iter().collect();
    ids.extend(codec.encode(prompt)?);
    Ok(ids)
}

/// One example, untruncated, without its category.
fn encode_example<C: TextCodec + ?Sized>(example: &Example, codec: &C) -> Result<TokenizedExample> {
    let prompt_ids = codec.encode(&example.prompt)?;
    let mut response = response_ids(codec, &example.prompt, &prompt_ids, &example.response)?;
    response.extend(codec.eos_id());
    let mut prompt: Vec<u32> = codec.bos_id().into_iter().collect();
    prompt.extend(prompt_ids);
    let vocab = codec.vocab_size();
    if let Some(&id) = prompt
        .iter()
        .chain(&response)
        .find(|&&id| id as usize >= vocab)
    {
        return Err(ModelError::Input(format!(
            "token id {id} is outside the codec's vocabulary of {vocab} ids"
        )));
    }
    let labels = (prompt.iter().map(|_| IGNORE_INDEX))
        .chain(response.iter().map(|&id| id as i32))
        .collect();
    let mut ids = prompt;
    ids.extend(response);
    Ok(TokenizedExample {
        ids,
        labels,
        category: None,
    })
}

/// The response's token ids as they follow the prompt's `prompt_ids` (see [`tokenize`]).
fn response_ids<C: TextCodec + ?Sized>(
    codec: &C,
    prompt: &str,
    prompt_ids: &[u32],
    response: &str,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return codec.encode(response);
    }
    let whole = codec.encode(&format!("{prompt}{response}"))?;
    match whole.strip_prefix(prompt_ids) {
        Some(rest) => Ok(rest.to_vec()),
        None => codec.encode(response),
    }
}

/// Below this many items per thread, [`parallel_map`] does not start another thread.
const MIN_ITEMS_PER_THREAD: usize = 64;

/// `f(index, item)` over `items` on scoped threads, results in order; the first error (in
/// item order within the first failing chunk) is returned.
fn parallel_map<T: Sync, U: Send>(
    items: &[T],
    f: impl Fn(usize, &T) -> Result<U> + Sync,
) -> Result<Vec<U>> {
    let threads = thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(items.len().div_ceil(MIN_ITEMS_PER_THREAD))
        .max(1);
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    (part.iter().enumerate())
                        .map(|(i, item)| f(c * chunk + i, item))
                        .collect::<Result<Vec<U>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for handle in handles {
            let part = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            out.extend(part?);
        }
        Ok(out)
    })
}
