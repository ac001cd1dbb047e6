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
//! Loss is taken only on response tokens (and EOS); a `text` line is all response. The
//! category is carried along for per-category metrics and never used by training.

mod loader;
mod read;
mod template;
mod tokenize;

use serde::{Deserialize, Serialize};

pub use loader::{eval_batches, split_eval, Batch, Loader, LoaderState};
pub use read::{
    parse_line, read_jsonl, Format, FormatCounts, ReadOptions, ReadReport, SkippedLine,
    MAX_STORED_SKIPPED,
};
pub use template::{
    render_chat_prompt, ChatMessage, PromptTemplate, ALPACA_WITHOUT_INPUT, ALPACA_WITH_INPUT,
};
pub use tokenize::{encode_prompt, tokenize, TokenizeReport, TokenizedExample, IGNORE_INDEX};

/// One training example as text: the model reads `prompt` and learns to answer `response`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The rendered prompt (template applied); empty for a plain `text` line.
    pub prompt: String,
    /// The text trained on.
    pub response: String,
    /// A task label for per-category metrics only.
    pub category: Option<String>,
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
