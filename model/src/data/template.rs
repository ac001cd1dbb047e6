//! Prompt templates: how an instruction (and its input) or a chat history becomes the prompt
//! text that precedes the trained-on response.

use std::fmt::Write;

use crate::error::{ModelError, Result};

/// The default template for examples with an input (Alpaca style, without the preamble).
pub const ALPACA_WITH_INPUT: &str =
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";

/// The default template for examples without an input: the Input block is left out.
pub const ALPACA_WITHOUT_INPUT: &str = "### Instruction:\n{instruction}\n\n### Response:\n";

/// The placeholders a template may hold.
const PLACEHOLDERS: [&str; 2] = ["{instruction}", "{input}"];

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Instruction,
    Input,
}

/// A parsed template string: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    source: String,
    pieces: Vec<Piece>,
}

impl Parsed {
    /// Parses `source`. `{instruction}` must occur; a `{word}` that is neither placeholder is
    /// an error (a typo such as `{instrution}` would otherwise end up in every prompt).
    /// Other braces (`{"a": 1}`, `{}`) are literal text.
    fn new(source: &str) -> Result<Self> {
        let mut pieces = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            let name_len = rest[open + 1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len() - open - 1);
            let close = open + 1 + name_len;
            if name_len == 0 || !rest[close..].starts_with('}') {
                // Not a placeholder: keep the brace as text.
                push_literal(&mut pieces, &rest[..=open]);
                rest = &rest[open + 1..];
                continue;
            }
            push_literal(&mut pieces, &rest[..open]);
            pieces.push(match &rest[open..=close] {
                "{instruction}" => Piece::Instruction,
                "{input}" => Piece::Input,
                other => {
                    return Err(ModelError::Input(format!(
                        "prompt template {source:?}: unknown placeholder `{other}` (known: {})",
                        PLACEHOLDERS.join(", ")
                    )))
                }
            });
            rest = &rest[close + 1..];
        }
        push_literal(&mut pieces, rest);
        if !pieces.contains(&Piece::Instruction) {
            return Err(ModelError::Input(format!(
                "prompt template {source:?} has no `{{instruction}}` placeholder"
            )));
        }
        Ok(Parsed {
            source: source.to_string(),
            pieces,
        })
    }

    fn has_input(&self) -> bool {
        self.pieces.contains(&Piece::Input)
    }

    /// The template with its placeholders replaced, in one pass (an instruction that contains
    /// the text "{input}" is not substituted again).
    fn render(&self, instruction: &str, input: &str) -> String {
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Literal(text) => text.as_str(),
                Piece::Instruction => instruction,
                Piece::Input => input,
            })
            .collect()
    }
}

/// Appends `text` to the pieces, merged with a literal just before it.
fn push_literal(pieces: &mut Vec<Piece>, text: &str) {
    if text.is_empty() {
        return;
    }
    match pieces.last_mut() {
        Some(Piece::Literal(previous)) => previous.push_str(text),
        _ => pieces.push(Piece::Literal(text.to_string())),
    }
}

/// How an instruction and its optional input become a prompt.
///
/// Two template strings with `{instruction}` and `{input}` placeholders: one for examples with
/// a non-empty input, one for examples without. The default is Alpaca style:
///
/// ```text
/// ### Instruction:
/// {instruction}
///
/// ### Input:          <- this block only when the input is not empty
/// {input}
///
/// ### Response:
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    with_input: Parsed,
    without_input: Parsed,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        PromptTemplate::alpaca()
    }
}

impl PromptTemplate {
    /// The default Alpaca-style template ([`ALPACA_WITH_INPUT`], [`ALPACA_WITHOUT_INPUT`]).
    pub fn alpaca() -> Self {
        PromptTemplate::with_variants(ALPACA_WITH_INPUT, ALPACA_WITHOUT_INPUT)
            .expect("the built-in templates are valid")
    }

    /// One template for every example; `{input}` becomes the empty string when an example has
    /// no input. A template without `{input}` is allowed, but then reading an example that has
    /// a non-empty input is an error for that line (its input would be lost).
    pub fn new(template: &str) -> Result<Self> {
        let parsed = Parsed::new(template)?;
        Ok(PromptTemplate {
            with_input: parsed.clone(),
            without_input: parsed,
        })
    }

    /// `with_input` for examples with a non-empty input, `without_input` for the others.
    /// `with_input` must hold `{input}`; `without_input` must not.
    pub fn with_variants(with_input: &str, without_input: &str) -> Result<Self> {
        let with = Parsed::new(with_input)?;
        let without = Parsed::new(without_input)?;
        if !with.has_input() {
            return Err(ModelError::Input(format!(
                "prompt template for examples with an input {with_input:?} has no `{{input}}` \
                 placeholder"
            )));
        }
        if without.has_input() {
            return Err(ModelError::Input(format!(
                "prompt template for examples without an input {without_input:?} has an \
                 `{{input}}` placeholder"
            )));
        }
        Ok(PromptTemplate {
            with_input: with,
            without_input: without,
        })
    }

    /// The template string used for examples with an input.
    pub fn with_input(&self) -> &str {
        &self.with_input.source
    }

    /// The template string used for examples without an input.
    pub fn without_input(&self) -> &str {
        &self.without_input.source
    }

    /// The prompt of `instruction` and `input` (`""` for none). Errors (with a message, no
    /// file) when `input` is not empty and the template has no `{input}` to put it in.
    pub fn render(&self, instruction: &str, input: &str) -> std::result::Result<String, String> {
        if input.is_empty() {
            return Ok(self.without_input.render(instruction, input));
        }
        if !self.with_input.has_input() {
            return Err(format!(
                "the example has an input but the prompt template {:?} has no `{{input}}` \
                 placeholder",
                self.with_input.source
            ));
        }
        Ok(self.with_input.render(instruction, input))
    }
}

/// One message of a chat example.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message's text.
    pub content: String,
}

/// What opens a message's role in the built-in chat format (`<|role|>\n`).
pub(crate) const CHAT_ROLE_OPEN: &str = "<|";
/// What closes a message's role in the built-in chat format.
pub(crate) const CHAT_ROLE_CLOSE: &str = "|>\n";

/// The prompt for the next assistant reply after `history` in the built-in chat format, for
/// models without a chat template: each message as `<|role|>\ncontent\n`, then
/// `<|assistant|>\n`.
pub fn render_chat_prompt(history: &[ChatMessage]) -> String {
    let mut prompt = String::new();
    for message in history {
        let _ = writeln!(
            prompt,
            "{CHAT_ROLE_OPEN}{}{CHAT_ROLE_CLOSE}{}",
            message.role, message.content
        );
    }
    let _ = write!(prompt, "{CHAT_ROLE_OPEN}assistant{CHAT_ROLE_CLOSE}");
    prompt
}
