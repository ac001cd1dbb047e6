//! JSONL readers: one example per line, in the shapes data sets come in.
//!
//! The format is detected per line, from the line's fields (so a file may mix formats):
//!
//! - **chat**, a `messages` field: `[{"role", "content"}, ...]`. The last message must be from
//!   `assistant`. The conversation is rendered with the model's chat template
//!   ([`ReadOptions::chat_template`]), else in the built-in `<|role|>` format
//!   ([`render_chat_prompt`]); every assistant turn is trained on, the last one is the
//!   response.
//! - **Alpaca**, `instruction` and `output` (and an optional `input`): the prompt is
//!   [`PromptTemplate::render`] of instruction and input, the response is `output`.
//! - **Dolly**, `instruction` and `response` (and an optional `context`): as Alpaca, with
//!   `context` as the input.
//! - **text**, a `text` field: no prompt, the loss is on every token.
//!
//! The formats are tried in this order, so an Alpaca dump that also carries a pre-rendered
//! `text` field is read as Alpaca. Other fields are ignored, except `category` (or, when it is
//! absent, `task`): a string or null, kept in [`Example::category`] to break metrics down.
//! `input` / `context` may be missing or null. Blank lines are ignored; a leading UTF-8 BOM
//! and CRLF line ends are accepted.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::chat::{render_builtin_conversation, ChatTemplate};
#[cfg(doc)]
use super::template::render_chat_prompt;
use super::template::{ChatMessage, PromptTemplate};
use super::Example;
use crate::error::{ModelError, Result};

/// How many skipped lines a [`ReadReport`] keeps (all are counted).
pub const MAX_STORED_SKIPPED: usize = 100;

/// How to read data files.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Skip malformed lines (counted in [`ReadReport::skipped_count`]) instead of failing on
    /// the first one.
    pub skip_bad_lines: bool,
    /// The prompt template of Alpaca and Dolly lines.
    pub template: PromptTemplate,
    /// The model's chat template for chat lines ([`ChatTemplate::from_model`]); `None`: the
    /// built-in `<|role|>` format.
    pub chat_template: Option<ChatTemplate>,
}

/// The shape of a data line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"text": ...}`: no prompt, every token trained on.
    Text,
    /// `{"instruction", "input"?, "output"}`.
    Alpaca,
    /// `{"instruction", "context"?, "response"}`.
    Dolly,
    /// `{"messages": [{"role", "content"}, ...]}`, the last from `assistant`.
    Chat,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Text => "text",
            Format::Alpaca => "alpaca",
            Format::Dolly => "dolly",
            Format::Chat => "chat",
        })
    }
}

/// How many examples of each format were read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FormatCounts {
    /// Lines read as [`Format::Text`].
    pub text: usize,
    /// Lines read as [`Format::Alpaca`].
    pub alpaca: usize,
    /// Lines read as [`Format::Dolly`].
    pub dolly: usize,
    /// Lines read as [`Format::Chat`].
    pub chat: usize,
}

impl FormatCounts {
    fn add(&mut self, format: Format) {
        *match format {
            Format::Text => &mut self.text,
            Format::Alpaca => &mut self.alpaca,
            Format::Dolly => &mut self.dolly,
            Format::Chat => &mut self.chat,
        } += 1;
    }
}

/// A malformed line that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// The file it is in.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for SkippedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` line {}: {}",
            self.file.display(),
            self.line,
            self.reason
        )
    }
}

/// What [`read_jsonl`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// The files, in the order read.
    pub files: Vec<PathBuf>,
    /// Non-blank lines, over all files.
    pub lines: usize,
    /// Blank (empty or whitespace-only) lines, ignored.
    pub blank_lines: usize,
    /// Examples read (= `lines - skipped_count`).
    pub examples: usize,
    /// Examples per format.
    pub formats: FormatCounts,
    /// Malformed lines skipped (only with [`ReadOptions::skip_bad_lines`]).
    pub skipped_count: usize,
    /// The first [`MAX_STORED_SKIPPED`] skipped lines.
    pub skipped: Vec<SkippedLine>,
}

impl ReadReport {
    fn skip(&mut self, line: SkippedLine) {
        self.skipped_count += 1;
        if self.skipped.len() < MAX_STORED_SKIPPED {
            self.skipped.push(line);
        }
    }

    /// The files as "`a.jsonl`, `b.jsonl`".
    fn file_list(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|file| format!("`{}`", file.display()))
            .collect();
        names.join(", ")
    }
}

impl fmt::Display for ReadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = self.formats;
        let formats: Vec<String> = [
            ("text", counts.text),
            ("alpaca", counts.alpaca),
            ("dolly", counts.dolly),
            ("chat", counts.chat),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
        write!(
            f,
            "read {} examples ({}) from {}",
            self.examples,
            formats.join(", "),
            self.file_list()
        )?;
        if let Some(first) = self.skipped.first() {
            write!(
                f,
                "; skipped {} malformed lines, the first: {first}",
                self.skipped_count
            )?;
        }
        Ok(())
    }
}

/// Reads the JSONL files `paths`, in order, into one list of examples.
///
/// A malformed line (invalid UTF-8 or JSON, not an object, no known format, a field of the
/// wrong type) is an error naming the file, the 1-based line and the problem, unless
/// `options.skip_bad_lines` is set. No example at all, over all files, is an error naming them.
pub fn read_jsonl<P: AsRef<Path>>(
    paths: &[P],
    options: &ReadOptions,
) -> Result<(Vec<Example>, ReadReport)> {
    if paths.is_empty() {
        return Err(ModelError::Input("no data files were given".into()));
    }
    let mut examples = Vec::new();
    let mut report = ReadReport::default();
    for path in paths {
        let path = path.as_ref();
        report.files.push(path.to_path_buf());
        read_file(path, options, &mut examples, &mut report)?;
    }
    if examples.is_empty() {
        return Err(empty_error(&report));
    }
    Ok((examples, report))
}

/// The error for a data set without examples.
fn empty_error(report: &ReadReport) -> ModelError {
    let mut why = format!(
        "no examples in {}: {} non-blank lines",
        report.file_list(),
        report.lines
    );
    if let Some(first) = report.skipped.first() {
        why.push_str(&format!(
            ", {} skipped as malformed (the first: {first})",
            report.skipped_count
        ));
    }
    ModelError::Input(why)
}

/// Reads one file's lines into `examples`, counting into `report`.
fn read_file(
    path: &Path,
    options: &ReadOptions,
    examples: &mut Vec<Example>,
    report: &mut ReadReport,
) -> Result<()> {
    let file = File::open(path).map_err(|e| ModelError::io("open", path, e))?;
    let mut reader = BufReader::new(file);
    // One line's bytes, the '\n' included.
    let mut bytes = Vec::new();
    for line in 1.. {
        bytes.clear();
        let read = reader
            .read_until(b'\n', &mut bytes)
            .map_err(|e| ModelError::io("read", path, e))?;
        if read == 0 {
            break;
        }
        match parse_bytes(&bytes, line == 1, options) {
            Ok(None) => report.blank_lines += 1,
            Ok(Some((example, format))) => {
                report.lines += 1;
                report.examples += 1;
                report.formats.add(format);
                examples.push(example);
            }
            Err(reason) => {
                report.lines += 1;
                let bad = SkippedLine {
                    file: path.to_path_buf(),
                    line,
                    reason,
                };
                if !options.skip_bad_lines {
                    return Err(ModelError::Input(bad.to_string()));
                }
                report.skip(bad);
            }
        }
    }
    Ok(())
}

/// A raw line: `None` when blank, else the example or what is wrong with it.
fn parse_bytes(
    bytes: &[u8],
    first_line: bool,
    options: &ReadOptions,
) -> std::result::Result<Option<(Example, Format)>, String> {
    let mut bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if first_line {
        bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not valid UTF-8 (bad byte at column {})",
            e.valid_up_to() + 1
        )
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_line(text, options).map(Some)
}

/// One JSONL line as an example, with its detected format; the error says what is wrong
/// (without file or line, which the caller adds).
///
/// ```
/// use hydralora_model::data::{parse_line, Format, ReadOptions};
/// let options = ReadOptions::default(); // Alpaca prompts, the built-in chat format
/// let line = r#"{"instruction": "Add.", "input": "2 + 2", "output": "4", "category": "math"}"#;
/// let (example, format) = parse_line(line, &options).unwrap();
/// assert_eq!(format, Format::Alpaca);
/// assert_eq!(example.prompt, "### Instruction:\nAdd.\n\n### Input:\n2 + 2\n\n### Response:\n");
/// assert_eq!(example.response, "4");
/// assert_eq!(example.category.as_deref(), Some("math"));
/// assert!(parse_line(r#"{"output": "4"}"#, &options).is_err());
/// ```
pub fn parse_line(
    line: &str,
    options: &ReadOptions,
) -> std::result::Result<(Example, Format), String> {
    let template = &options.template;
    let value: Value = serde_json::from_str(line).map_err(|e| json_reason(&e))?;
    let Value::Object(object) = value else {
        return Err(format!("expected a JSON object, found {}", kind(&value)));
    };
    let fields = Fields(&object);
    let format = detect(&object)?;
    let mut example = match format {
        Format::Text => plain(String::new(), fields.string("text")?),
        Format::Alpaca => instruction(&fields, template, "input", "output")?,
        Format::Dolly => instruction(&fields, template, "context", "response")?,
        Format::Chat => chat(&object["messages"], options.chat_template.as_ref())?,
    };
    example.category = fields.category()?;
    Ok((example, format))
}

/// The format of a line's object, from its fields.
fn detect(object: &Map<String, Value>) -> std::result::Result<Format, String> {
    if object.contains_key("messages") {
        return Ok(Format::Chat);
    }
    if object.contains_key("instruction") {
        return match (object.contains_key("output"), object.contains_key("response")) {
            (true, false) => Ok(Format::Alpaca),
            (false, true) => Ok(Format::Dolly),
            (true, true) => Err(
                "has both `output` (Alpaca) and `response` (Dolly): cannot tell which is the answer"
                    .into(),
            ),
            (false, false) => {
                Err("has `instruction` but neither `output` (Alpaca) nor `response` (Dolly)".into())
            }
        };
    }
    if object.contains_key("text") {
        return Ok(Format::Text);
    }
    let keys: Vec<String> = object.keys().map(|key| format!("`{key}`")).collect();
    Err(format!(
        "matches no known format (`text`; `instruction` + `output`; `instruction` + `response`; \
         `messages`); its fields are [{}]",
        keys.join(", ")
    ))
}

/// The prompt and response of an Alpaca or Dolly line, `input` being the input field's name
/// and `output` the response field's.
fn instruction(
    fields: &Fields,
    template: &PromptTemplate,
    input: &str,
    output: &str,
) -> std::result::Result<Example, String> {
    let instruction = fields.string("instruction")?;
    let input = fields.optional_string(input)?.unwrap_or_default();
    let prompt = template.render(&instruction, &input)?;
    Ok(plain(prompt, fields.string(output)?))
}

/// An example of one prompt and one response, without a category.
fn plain(prompt: String, response: String) -> Example {
    Example {
        prompt,
        response,
        ..Example::default()
    }
}

/// The example of a chat line's `messages`: the conversation rendered with `template` (else
/// in the built-in format), every assistant turn trained on, the last one (the last
/// message, which must be from `assistant`) the response.
fn chat(messages: &Value, template: Option<&ChatTemplate>) -> std::result::Result<Example, String> {
    let Value::Array(items) = messages else {
        return Err(format!(
            "field `messages` must be an array, found {}",
            kind(messages)
        ));
    };
    let messages = items
        .iter()
        .enumerate()
        .map(|(i, item)| chat_message(i, item))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let Some((last, history)) = messages.split_last() else {
        return Err("field `messages` is empty".into());
    };
    if last.role != "assistant" {
        return Err(format!(
            "the last message (`messages[{}]`) must be from `assistant` (it is the response \
             trained on); its role is {:?}",
            history.len(),
            last.role
        ));
    }
    let rendered = match template {
        Some(template) => template.render_conversation(&messages)?,
        None => render_builtin_conversation(&messages),
    };
    let mut turns = rendered.assistant_turns;
    let response = turns.pop().expect("the last message is from the assistant");
    let mut text = rendered.text;
    text.truncate(response.end);
    Ok(Example {
        response: text.split_off(response.start),
        prompt: text,
        trained_in_prompt: turns,
        specials_in_text: template.is_some(),
        category: None,
    })
}

/// `messages[index]`: an object with string `role` (not empty) and `content`.
fn chat_message(index: usize, item: &Value) -> std::result::Result<ChatMessage, String> {
    let name = format!("messages[{index}]");
    let Value::Object(object) = item else {
        return Err(format!("`{name}` must be an object, found {}", kind(item)));
    };
    let fields = Fields(object);
    let role = fields.string_named("role", &format!("{name}.role"))?;
    if role.is_empty() {
        return Err(format!("field `{name}.role` is empty"));
    }
    let content = fields.string_named("content", &format!("{name}.content"))?;
    Ok(ChatMessage { role, content })
}

/// Typed access to a line's fields, with errors that name the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// A required string field.
    fn string(&self, key: &str) -> std::result::Result<String, String> {
        self.string_named(key, key)
    }

    /// A required string field, called `name` in errors.
    fn string_named(&self, key: &str, name: &str) -> std::result::Result<String, String> {
        match self.0.get(key) {
            Some(Value::String(text)) => Ok(text.clone()),
            None => Err(format!("field `{name}` is missing")),
            Some(other) => Err(format!(
                "field `{name}` must be a string, found {}",
                kind(other)
            )),
        }
    }

    /// An optional string field: missing or null is `None`.
    fn optional_string(&self, key: &str) -> std::result::Result<Option<String>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.string(key).map(Some),
        }
    }

    /// `category`, else `task`; an empty string is `None`.
    fn category(&self) -> std::result::Result<Option<String>, String> {
        let key = if self.0.contains_key("category") {
            "category"
        } else {
            "task"
        };
        Ok(self.optional_string(key)?.filter(|c| !c.is_empty()))
    }
}

/// "a number", "an array", ...: a JSON value's kind for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde_json's error for a one-line document, as "invalid JSON at column C: message".
fn json_reason(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = message.strip_suffix(&suffix).unwrap_or(&message);
    format!("invalid JSON at column {}: {message}", error.column())
}
