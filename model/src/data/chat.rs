//! Chat lines rendered with the model's own chat template: the Jinja template a model was
//! trained with (`chat_template` in `tokenizer_config.json`, or `tokenizer.chat_template` in a
//! GGUF), rendered as `transformers`' `apply_chat_template` renders it, and the byte ranges
//! of the assistant's turns in the rendered text (what training is on).
//!
//! A model without a template gets the built-in `<|role|>` format ([`render_chat_prompt`]).
//!
//! The template runs in `minijinja` set up as `transformers` sets up Jinja2:
//! `trim_blocks` and `lstrip_blocks`, loop controls, the `raise_exception` and
//! `strftime_now` globals, a `tojson` that writes as Python's `json.dumps` (no HTML escaping),
//! the variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `tools`
//! (none), and Python's string and dict methods (`.strip()`, `.items()`, ...).

use std::fmt;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde};
use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::Serialize;
use serde_json::Value as Json;

#[cfg(doc)]
use super::template::render_chat_prompt;
use super::template::{ChatMessage, CHAT_ROLE_CLOSE, CHAT_ROLE_OPEN};
use crate::error::{ModelError, Result};
use crate::llama::gguf::{gguf_path, GgufFile, MetaValue};

/// The Hugging Face tokenizer config that holds a model's chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Newer `transformers` write the template to its own file beside the tokenizer config;
/// it wins over the config's `chat_template`, as in `transformers`.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// The GGUF metadata key of the chat template.
pub const GGUF_CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// The template's name in its environment.
const NAME: &str = "chat_template";

/// A model's Jinja chat template, compiled, with the special tokens it may print.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    bos_token: String,
    eos_token: String,
    origin: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` (a Jinja chat template); `bos_token` and `eos_token` are the texts
    /// of the model's special tokens (`""` when it has none). A syntax error is an error.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        Self::with_origin(source, bos_token, eos_token, "a chat template".into())
    }

    fn with_origin(source: &str, bos_token: &str, eos_token: &str, origin: String) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        set_clock(&mut env, None);
        env.add_template_owned(NAME, without_generation_tags(source))
            .map_err(|e| ModelError::Input(format!("{origin}: {}", describe(&e))))?;
        Ok(ChatTemplate {
            env: Arc::new(env),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            origin,
        })
    }

    /// The same template with `strftime_now` reading the fixed date `year-month-day` instead
    /// of today's (reproducible renderings, tests).
    pub fn with_date(mut self, year: i64, month: u32, day: u32) -> Self {
        set_clock(Arc::make_mut(&mut self.env), Some((year, month, day)));
        self
    }

    /// Where the template came from, e.g. "the chat template of `m/tokenizer_config.json`".
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The chat template of the model at `path` (a Hugging Face folder, a GGUF file or a
    /// folder holding `model.gguf`), or `None` when it has none:
    ///
    /// - a GGUF model: its `tokenizer.chat_template` metadata, with the texts of its BOS and
    ///   EOS tokens; else the folder's files below;
    /// - a folder: `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template` (a
    ///   string, or a list of `{"name", "template"}` of which `default` is used), with that
    ///   file's `bos_token` and `eos_token`.
    ///
    /// An unreadable file, invalid JSON or a template that does not compile is an error.
    pub fn from_model(path: impl AsRef<Path>) -> Result<Option<Self>> {
        let path = path.as_ref();
        if let Some(file) = gguf_path(path) {
            if let Some(template) = Self::from_gguf(&file)? {
                return Ok(Some(template));
            }
        }
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        Self::from_dir(dir)
    }

    /// The template of a GGUF file's metadata, if it has one.
    fn from_gguf(path: &Path) -> Result<Option<Self>> {
        let file = GgufFile::open(path)?;
        let Some(value) = file.get(GGUF_CHAT_TEMPLATE_KEY) else {
            return Ok(None);
        };
        let source = value.as_str().ok_or_else(|| {
            file.error(format!(
                "metadata `{GGUF_CHAT_TEMPLATE_KEY}` is {}, not a string",
                value.type_name()
            ))
        })?;
        let token = |key: &str| gguf_token_text(&file, key);
        let origin = format!("the chat template of `{}`", path.display());
        Self::with_origin(
            source,
            &token("tokenizer.ggml.bos_token_id"),
            &token("tokenizer.ggml.eos_token_id"),
            origin,
        )
        .map(Some)
    }

    /// The template of a Hugging Face folder, if it has one.
    fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = match fs::read(&config_path) {
            Ok(bytes) => serde_json::from_slice::<Json>(&bytes)
                .map_err(|e| ModelError::json(&config_path, &e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Json::Null,
            Err(e) => return Err(ModelError::io("read", &config_path, e)),
        };
        let token = |key: &str| special_token_text(&config, key);
        let (bos, eos) = (token("bos_token"), token("eos_token"));
        let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
        match fs::read_to_string(&jinja_path) {
            Ok(source) => {
                let origin = format!("the chat template `{}`", jinja_path.display());
                return Self::with_origin(&source, &bos, &eos, origin).map(Some);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ModelError::io("read", &jinja_path, e)),
        }
        let Some(source) = config_template(&config, &config_path)? else {
            return Ok(None);
        };
        let origin = format!("the chat template of `{}`", config_path.display());
        Self::with_origin(&source, &bos, &eos, origin).map(Some)
    }

    /// The text of `messages`, with the prompt of the assistant's next turn after them when
    /// `add_generation_prompt` is set; the error is the template's (e.g. its
    /// `raise_exception("Conversation roles must alternate ...")`).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> std::result::Result<String, String> {
        let template = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        let context = context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => Value::from(()),
            documents => Value::from(()),
        };
        template
            .render(context)
            .map_err(|e| format!("{}: {}", self.origin, describe(&e)))
    }

    /// The text of `messages` and the byte ranges of each assistant message's turn in it
    /// (see [`RenderedChat`]).
    ///
    /// A turn is found the way `transformers`-based trainers find it, by rendering prefixes
    /// of the conversation: what the messages through the assistant's (without a generation
    /// prompt) add to the messages before it (with one) is its turn, end-of-turn tokens
    /// included. A template that renders a conversation differently by where it ends
    /// (Mistral's puts the system message into the last user message) has no such prefix:
    /// then the turn is the message's content as rendered last in the messages through it,
    /// with the whitespace before it and everything after it. Either way the turn is then
    /// looked for in the whole conversation's text: at the same place when that text starts
    /// alike, else after the previous turn.
    pub fn render_conversation(
        &self,
        messages: &[ChatMessage],
    ) -> std::result::Result<RenderedChat, String> {
        let text = self.render(messages, false)?;
        let mut assistant_turns: Vec<Range<usize>> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            let searched_from = assistant_turns.last().map_or(0, |r| r.end);
            let turn = match through.strip_prefix(before.as_str()) {
                Some(_) if text.starts_with(&through) && before.len() >= searched_from => {
                    assistant_turns.push(before.len()..through.len());
                    continue;
                }
                Some(turn) => turn,
                None => last_turn(&through, &message.content).ok_or_else(|| {
                    format!(
                        "{}: the assistant's message `messages[{i}]` is not in the text the \
                         template renders for the messages through it, so its turn cannot be \
                         found",
                        self.origin
                    )
                })?,
            };
            let start = text[searched_from..]
                .find(turn)
                .map(|found| searched_from + found)
                .ok_or_else(|| {
                    format!(
                        "{}: the assistant's turn `messages[{i}]` renders as {turn:?} but the \
                         whole conversation does not hold it after the turn before",
                        self.origin
                    )
                })?;
            assistant_turns.push(start..start + turn.len());
        }
        Ok(RenderedChat {
            text,
            assistant_turns,
        })
    }
}

/// The last message's turn in `through` (a rendering that ends with it): from the spaces
/// before the last place its `content` (or, trimmed by the template, its trimmed content)
/// appears, to the end. `None` when the content is not there.
fn last_turn<'t>(through: &'t str, content: &str) -> Option<&'t str> {
    let start = through
        .rfind(content)
        .or_else(|| through.rfind(content.trim()))?;
    let start = through[..start].trim_end_matches(' ').len();
    Some(&through[start..])
}

/// A conversation as text, with the byte ranges of its assistant turns (what is trained on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// The whole conversation as the model reads it.
    pub text: String,
    /// `text[range]` is an assistant message's turn, in order, not overlapping: with a chat
    /// template, the message and the end-of-turn text the template writes after it; with the
    /// built-in format, the message's content alone.
    pub assistant_turns: Vec<Range<usize>>,
}

/// `messages` in the built-in format: each as `<|role|>\ncontent\n`. Each assistant turn is
/// its content.
pub fn render_builtin_conversation(messages: &[ChatMessage]) -> RenderedChat {
    let mut text = String::new();
    let mut assistant_turns = Vec::new();
    for message in messages {
        text.push_str(CHAT_ROLE_OPEN);
        text.push_str(&message.role);
        text.push_str(CHAT_ROLE_CLOSE);
        let start = text.len();
        text.push_str(&message.content);
        if message.role == "assistant" {
            assistant_turns.push(start..text.len());
        }
        text.push('\n');
    }
    RenderedChat {
        text,
        assistant_turns,
    }
}

/// `tokenizer_config.json`'s `chat_template`: a string, or a list of named templates of
/// which `default` is the one `apply_chat_template` uses without a name.
fn config_template(config: &Json, path: &Path) -> Result<Option<String>> {
    let bad = |why: String| ModelError::config(Some(path), "chat_template", why);
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(source)) => Ok(Some(source.clone())),
        Some(Json::Array(named)) => {
            let mut names = Vec::new();
            for item in named {
                let name = item.get("name").and_then(Json::as_str);
                let source = item.get("template").and_then(Json::as_str);
                let (Some(name), Some(source)) = (name, source) else {
                    return Err(bad(
                        "a list entry is not a {\"name\", \"template\"} object".into()
                    ));
                };
                if name == "default" {
                    return Ok(Some(source.to_string()));
                }
                names.push(name.to_string());
            }
            Err(bad(format!(
                "a list of named templates without a `default` one (it has {names:?})"
            )))
        }
        Some(other) => Err(bad(format!(
            "expected a string or a list of named templates, found {other}"
        ))),
    }
}

/// The text of a special token in `tokenizer_config.json`: a string or an added-token object
/// `{"content": ...}`; `""` when missing or null.
fn special_token_text(config: &Json, key: &str) -> String {
    match config.get(key) {
        Some(Json::String(text)) => text.clone(),
        Some(Json::Object(token)) => token
            .get("content")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// The text of the token whose id the GGUF metadata `key` holds; `""` when there is none.
fn gguf_token_text(file: &GgufFile, key: &str) -> String {
    let id = file.get(key).and_then(MetaValue::as_u64);
    match (id, file.get("tokenizer.ggml.tokens")) {
        (Some(id), Some(MetaValue::Array(tokens))) => usize::try_from(id)
            .ok()
            .and_then(|id| tokens.get(id))
            .and_then(MetaValue::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// `{% generation %}` ... `{% endgeneration %}` (the tags `transformers` uses to mark the
/// assistant's text for its own masks) as `{% if true %}` ... `{% endif %}`: the same text,
/// the same whitespace control, in a Jinja without that extension.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        let Some(close) = rest[open..].find("%}").map(|c| open + c + 2) else {
            break;
        };
        let tag = &rest[open..close];
        let inner = tag[2..tag.len() - 2].trim_matches(['-', '+']).trim();
        out.push_str(&rest[..open]);
        let keyword = match inner {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match keyword {
            Some(keyword) => out.push_str(&tag.replacen(inner, keyword, 1)),
            None => out.push_str(tag),
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// A minijinja error with its cause and place, on one line.
fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The template's `raise_exception(message)`: fails the rendering with the message.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `value|tojson(indent=None)` as `transformers` defines it: Python's `json.dumps` with
/// `ensure_ascii=False` (`", "` and `": "` between items, or one item per line under
/// `indent`), no HTML escaping.
fn tojson(
    value: &Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get("indent")?,
    };
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let value = match sort_keys {
        // serde_json's own maps keep their keys sorted.
        Some(true) => Value::from(Serde(
            serde_json::to_value(value).map_err(|e| json_error(&e))?,
        )),
        _ => value.clone(),
    };
    let mut out = Vec::new();
    let written = match indent {
        Some(width) => {
            let spaces = vec![b' '; width];
            let pretty = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            value.serialize(&mut serde_json::Serializer::with_formatter(
                &mut out, pretty,
            ))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, PythonJson,
        )),
    };
    written.map_err(|e| json_error(&e))?;
    Ok(Value::from_safe_string(
        String::from_utf8(out).expect("serde_json writes UTF-8"),
    ))
}

fn json_error(error: &serde_json::Error) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("tojson: {error}"))
}

/// serde_json's compact JSON with the separators of Python's `json.dumps`: `", "` and `": "`.
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: io::Write + ?Sized>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: io::Write + ?Sized>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: io::Write + ?Sized>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// Registers `strftime_now(format)`: today's date (UTC), or the fixed `date`.
fn set_clock(env: &mut Environment<'static>, date: Option<(i64, u32, u32)>) {
    env.add_function("strftime_now", move |format: String| {
        let (year, month, day, seconds) = match date {
            Some((year, month, day)) => (year, month, day, 0),
            None => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let (year, month, day) = civil_from_days(now.div_euclid(86_400));
                (year, month, day, now.rem_euclid(86_400))
            }
        };
        strftime(&format, year, month, day, seconds)
            .map_err(|why| Error::new(ErrorKind::InvalidOperation, why))
    });
}

/// The (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days_from_civil inverse: eras of 400 years from 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Python's `strftime` for the codes chat templates use: `%Y %y %m %d %B %b %A %a %H %M %S
/// %j %%`, and glibc's `%-d`, `%-m` (no leading zero).
fn strftime(
    format: &str,
    year: i64,
    month: u32,
    day: u32,
    seconds: i64,
) -> std::result::Result<String, String> {
    let days = days_from_civil(year, month, day);
    let weekday = WEEKDAYS[(days + 3).rem_euclid(7) as usize]; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[month as usize - 1];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut code = chars.next();
        let unpadded = code == Some('-');
        if unpadded {
            code = chars.next();
        }
        let number = |n: i64, width: usize| match unpadded {
            true => n.to_string(),
            false => format!("{n:0width$}"),
        };
        match code {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&number(year.rem_euclid(100), 2)),
            Some('m') => out.push_str(&number(month.into(), 2)),
            Some('d') => out.push_str(&number(day.into(), 2)),
            Some('j') => out.push_str(&number(day_of_year, 3)),
            Some('H') => out.push_str(&number(seconds / 3600, 2)),
            Some('M') => out.push_str(&number(seconds / 60 % 60, 2)),
            Some('S') => out.push_str(&number(seconds % 60, 2)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('%') => out.push('%'),
            other => {
                return Err(format!(
                    "strftime_now: the format code %{} is not supported",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    Ok(out)
}

/// Days since 1970-01-01 of a (proleptic Gregorian) date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_day_counts() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2024, 7, 26), 19_930);
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn strftime_writes_python_codes() {
        // 2024-07-26 was a Friday, the 208th day of a leap year.
        let text = strftime(
            "%d %b %Y|%-d %B %y|%A %a|%j|%m|%H:%M:%S|%%",
            2024,
            7,
            26,
            3723,
        );
        assert_eq!(
            text.unwrap(),
            "26 Jul 2024|26 July 24|Friday Fri|208|07|01:02:03|%"
        );
        assert!(strftime("%Q", 2024, 1, 1, 0).is_err());
    }

    #[test]
    fn generation_tags_become_no_op_blocks() {
        let source = "a{%- generation -%}b{% endgeneration %}c{% if x %}{% endif %}";
        assert_eq!(
            without_generation_tags(source),
            "a{%- if true -%}b{% endif %}c{% if x %}{% endif %}"
        );
    }
}
