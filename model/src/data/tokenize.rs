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
/// whole's), the response is encoded alone instead. A multi-turn chat's pieces
/// ([`Example::pieces`]) are encoded so, one after the other: the earlier assistant turns get
/// labels, the rest of the prompt does not.
///
/// An example whose text carries the model's special tokens ([`Example::specials_in_text`]:
/// a chat template rendered it) gets neither the codec's BOS nor its EOS id.
///
/// Examples left without a trained token are dropped and counted; none left, `max_len == 0`,
/// no examples, or an id outside the codec's vocabulary are errors.
///
/// ```
/// use hydralora_model::data::{tokenize, Example, IGNORE_INDEX};
/// use hydralora_model::CharCodec;
/// # fn main() -> hydralora_model::Result<()> {
/// let codec = CharCodec::new("abc".chars())?; // <pad> 0, <bos> 1, <eos> 2, a 3, b 4, c 5
/// let example = Example { prompt: "ab".into(), response: "c".into(), ..Example::default() };
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
        let Encoded { ids, labels, .. } = encode_example(example, codec)
            .map_err(|e| ModelError::Input(format!("example {}: {e}", index + 1)))?;
        Ok(TokenizedExample {
            ids,
            labels,
            category: None,
        })
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
/// start from, matching training). A prompt a chat template rendered carries its own BOS:
/// encode it with [`TextCodec::encode`] alone.
pub fn encode_prompt<C: TextCodec + ?Sized>(codec: &C, prompt: &str) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = codec.bos_id().into_iter().collect();
    ids.extend(codec.encode(prompt)?);
    Ok(ids)
}

/// An example's ids before its response (what generation starts from: BOS, the prompt, the
/// earlier turns of a chat) and its response's ids (EOS included when the codec adds one),
/// tokenized as [`tokenize`] does.
pub fn prompt_and_response_ids<C: TextCodec + ?Sized>(
    example: &Example,
    codec: &C,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut tokenized = encode_example(example, codec)?;
    let response = tokenized.response_len;
    let split = tokenized.ids.len() - response;
    let response_ids = tokenized.ids.split_off(split);
    Ok((tokenized.ids, response_ids))
}

/// An example's ids and labels, untruncated, and how many ids its response has.
struct Encoded {
    ids: Vec<u32>,
    labels: Vec<i32>,
    response_len: usize,
}

/// One example, untruncated, without its category.
fn encode_example<C: TextCodec + ?Sized>(example: &Example, codec: &C) -> Result<Encoded> {
    // BOS and EOS ids only where the text does not carry the model's own special tokens.
    let codec_specials = !example.specials_in_text;
    let mut ids: Vec<u32> = codec
        .bos_id()
        .filter(|_| codec_specials)
        .into_iter()
        .collect();
    let mut labels = vec![IGNORE_INDEX; ids.len()];
    let mut text = String::new();
    let mut text_ids: Vec<u32> = Vec::new(); // the ids of `text`
    let mut response_len = 0;
    for (piece, trained) in example.pieces() {
        let new = continuation_ids(codec, &text, &text_ids, piece)?;
        labels.extend(new.iter().map(|&id| match trained {
            true => id as i32,
            false => IGNORE_INDEX,
        }));
        response_len = new.len();
        text.push_str(piece);
        text_ids.extend(new);
    }
    ids.extend(text_ids);
    if let Some(eos) = codec.eos_id().filter(|_| codec_specials) {
        ids.push(eos);
        labels.push(eos as i32);
        response_len += 1;
    }
    let vocab = codec.vocab_size();
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ModelError::Input(format!(
            "token id {id} is outside the codec's vocabulary of {vocab} ids"
        )));
    }
    Ok(Encoded {
        ids,
        labels,
        response_len,
    })
}

/// The ids `piece` adds after `text` (whose ids are `text_ids`): what `text + piece` encodes
/// to after `text_ids`, so that a prompt is tokenized as it will be at generation time. Where
/// the tokenizer merges across the boundary (`text_ids` is not a prefix of the whole's), the
/// piece is encoded alone instead.
fn continuation_ids<C: TextCodec + ?Sized>(
    codec: &C,
    text: &str,
    text_ids: &[u32],
    piece: &str,
) -> Result<Vec<u32>> {
    if piece.is_empty() {
        return Ok(Vec::new());
    }
    if text.is_empty() {
        return codec.encode(piece);
    }
    let whole = codec.encode(&format!("{text}{piece}"))?;
    match whole.strip_prefix(text_ids) {
        Some(rest) => Ok(rest.to_vec()),
        None => codec.encode(piece),
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
    if threads == 1 {
        // Also the browser's case, which has no threads to spawn.
        return (items.iter().enumerate())
            .map(|(i, item)| f(i, item))
            .collect();
    }
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
