//! Fine-tuning data, host side: JSONL files -> [`Example`]s -> token ids with loss masks ->
//! padded [`Batch`]es from a seeded, resumable [`Loader`].
//!
//! ```text
//! read_jsonl(files, options)        -> Vec<Example>           prompt text, response text, category
//! split_eval(examples, 0.1, seed)   -> (train, eval)
//! tokenize(&train, &codec, max_len) -> Vec<TokenizedExample>  ids, labels (-100 on BOS + prompt)
//! Loader::new(tokenized, batch, pad, seed).next_batch() -> Batch  [batch, seq], right padded
//! ```
//!
//! Loss is taken only on response tokens (and EOS); a `text` line is all response, and a
//! multi-turn chat line trains every assistant turn (rendered with the model's chat template,
//! [`ChatTemplate`], end-of-turn tokens included). The category is carried along for
//! per-category metrics and never used by training.

mod chat;
mod loader;
mod read;
mod template;
mod tokenize;

use std::ops::Range;

use serde::{Deserialize, Serialize};

pub use chat::{
    render_builtin_conversation, ChatTemplate, RenderedChat, CHAT_TEMPLATE_FILE,
    GGUF_CHAT_TEMPLATE_KEY, TOKENIZER_CONFIG_FILE,
};
pub use loader::{eval_batches, split_eval, Batch, Loader, LoaderState};
pub use read::{
    parse_line, read_jsonl, Format, FormatCounts, ReadOptions, ReadReport, SkippedLine,
    MAX_STORED_SKIPPED,
};
pub use template::{
    render_chat_prompt, ChatMessage, PromptTemplate, ALPACA_WITHOUT_INPUT, ALPACA_WITH_INPUT,
};
pub use tokenize::{
    encode_prompt, prompt_and_response_ids, tokenize, TokenizeReport, TokenizedExample,
    IGNORE_INDEX,
};

/// One training example as text: the model reads `prompt` and learns to answer `response`.
///
/// A multi-turn chat line is one example: `prompt` is the conversation up to its last
/// assistant turn (the earlier turns included, marked in `trained_in_prompt`), `response` that
/// last turn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The rendered prompt (template applied); empty for a plain `text` line.
    pub prompt: String,
    /// The text trained on, and that generation is scored against.
    pub response: String,
    /// A task label for per-category metrics only.
    pub category: Option<String>,
    /// Byte ranges of `prompt` trained on too, in order, not overlapping: the earlier
    /// assistant turns of a multi-turn chat line. Empty for every other line.
    #[serde(default)]
    pub trained_in_prompt: Vec<Range<usize>>,
    /// Whether the text carries the model's own special tokens: a chat template wrote its
    /// BOS and end-of-turn tokens as text, so tokenizing adds neither the codec's BOS id nor
    /// its EOS id (as `apply_chat_template` tokenizes).
    #[serde(default)]
    pub specials_in_text: bool,
}

impl Example {
    /// The example's text in order, each piece with whether it is trained on: the prompt
    /// split at `trained_in_prompt`, then the response (trained). Pieces may be empty.
    pub fn pieces(&self) -> Vec<(&str, bool)> {
        let mut pieces = Vec::with_capacity(2 * self.trained_in_prompt.len() + 2);
        let mut at = 0;
        for range in &self.trained_in_prompt {
            pieces.push((&self.prompt[at..range.start], false));
            pieces.push((&self.prompt[range.clone()], true));
            at = range.end;
        }
        pieces.push((&self.prompt[at..], false));
        pieces.push((self.response.as_str(), true));
        pieces
    }
}

/// Anything with an optional category, for [`split_eval`].
pub trait Categorized {
    /// The item's category, `None` when it has none.
    fn category(&self) -> Option<&str>;
}

impl Categorized for Example {
    fn category(&self) -> Option<&str> {
        self.category.as_deref()
    }
}

impl Categorized for TokenizedExample {
    fn category(&self) -> Option<&str> {
        self.category.as_deref()
    }
}
