//! Text <-> token ids behind one trait, for the data pipeline and the trainer.
//!
//! Two codecs implement [`TextCodec`]:
//! - [`HfCodec`]: a Hugging Face `tokenizer.json` ([`Tokenizer`]) with the BOS / EOS / pad ids
//!   of the model's config;
//! - [`CharCodec`]: one token per character over a fixed alphabet, plus `<pad>` = 0,
//!   `<bos>` = 1, `<eos>` = 2. The built-in demo uses it; it needs no download and is saved as
//!   a small `char_codec.json`.
//!
//! [`TextCodec::encode`] never adds special tokens: [`crate::data::tokenize`] adds BOS and EOS.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::llama::config::LlamaConfig;
use crate::llama::gguf::file::GgufFile;
use crate::llama::gguf::gguf_path;
use crate::llama::gguf::vocab::tokenizer_from_vocab;
use crate::llama::tokenizer::{Tokenizer, TOKENIZER_FILE};
use crate::llama::weights::write_atomically;

/// The name of a model folder's character codec file.
pub const CHAR_CODEC_FILE: &str = "char_codec.json";

/// Turns text into token ids and back.
pub trait TextCodec: Send + Sync {
    /// The ids of `text`, without BOS or EOS.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// The text of `ids`; special tokens (pad, BOS, EOS) are left out.
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// The beginning-of-sequence token, if the model uses one.
    fn bos_id(&self) -> Option<u32>;
    /// The end-of-sequence token, if the model has one.
    fn eos_id(&self) -> Option<u32>;
    /// The id that fills padded positions. Its value never matters to the loss (padded
    /// positions have label -100) but it must be a valid id (`< vocab_size`).
    fn pad_id(&self) -> u32;
    /// Number of ids, special tokens included: every id is `< vocab_size()`.
    fn vocab_size(&self) -> usize;
}

// ---------------------------------------------------------------------------------------------
// Hugging Face tokenizer
// ---------------------------------------------------------------------------------------------

/// A `tokenizer.json` tokenizer with the special ids of the model's config.
#[derive(Debug)]
pub struct HfCodec {
    tokenizer: Tokenizer,
    eos: Option<u32>,
    pad: u32,
}

impl HfCodec {
    /// Wraps `tokenizer` (its BOS id is the one it was loaded with) with the model's EOS id
    /// and a pad id. `pad` defaults to the EOS id, else 0: any valid id works, since padded
    /// positions carry label -100.
    pub fn new(tokenizer: Tokenizer, eos: Option<u32>, pad: Option<u32>) -> Result<Self> {
        let pad = pad.or(eos).unwrap_or(0);
        let vocab = tokenizer.vocab_size();
        for (name, id) in [("eos", eos), ("pad", Some(pad))] {
            if let Some(id) = id.filter(|&id| id as usize >= vocab) {
                return Err(ModelError::Tokenizer {
                    file: tokenizer.path().to_path_buf(),
                    why: format!("the {name} id {id} is outside the vocabulary of {vocab} ids"),
                });
            }
        }
        Ok(HfCodec {
            tokenizer,
            eos,
            pad,
        })
    }

    /// Loads `tokenizer.json` from `dir` with the config's BOS id and its first EOS id (for a
    /// config listing several EOS ids, e.g. Llama 3 instruct, the first is the one appended to
    /// training examples; use [`HfCodec::new`] to choose another).
    pub fn from_dir(dir: impl AsRef<Path>, config: &LlamaConfig) -> Result<Self> {
        let tokenizer =
            Tokenizer::from_file(dir.as_ref().join(TOKENIZER_FILE), config.bos_token_id)?;
        HfCodec::new(tokenizer, config.eos_token_ids.first().copied(), None)
    }

    /// The wrapped tokenizer (e.g. for [`Tokenizer::decode_stream`]).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

impl TextCodec for HfCodec {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, false)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }

    fn bos_id(&self) -> Option<u32> {
        self.tokenizer.bos_token_id()
    }

    fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    fn pad_id(&self) -> u32 {
        self.pad
    }

    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }
}

// ---------------------------------------------------------------------------------------------
// Character codec
// ---------------------------------------------------------------------------------------------

/// A character-level codec: `<pad>` = 0, `<bos>` = 1, `<eos>` = 2, then the alphabet's
/// characters in order from id 3.
///
/// A character outside the alphabet is an error naming it (there is no `<unk>` id: the demo's
/// alphabet is closed, and a silent `<unk>` would hide a data bug).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharCodec {
    /// The characters, `alphabet[i]` has id `FIRST_CHAR_ID + i`.
    alphabet: Vec<char>,
    /// Character -> id.
    ids: HashMap<char, u32>,
}

/// The JSON layout of `char_codec.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CharCodecFile {
    /// Always "char".
    #[serde(rename = "type")]
    kind: String,
    /// The special tokens' names, in id order: `["<pad>", "<bos>", "<eos>"]`.
    special_tokens: Vec<String>,
    /// The characters in id order, from id 3.
    alphabet: String,
}

impl CharCodec {
    /// The padding id.
    pub const PAD: u32 = 0;
    /// The beginning-of-sequence id.
    pub const BOS: u32 = 1;
    /// The end-of-sequence id.
    pub const EOS: u32 = 2;
    /// The id of the alphabet's first character.
    pub const FIRST_CHAR_ID: u32 = 3;
    /// The special tokens' names, in id order.
    pub const SPECIAL_TOKENS: [&'static str; 3] = ["<pad>", "<bos>", "<eos>"];

    /// A codec over `alphabet`, in the given order. An empty alphabet or a repeated character
    /// is an error.
    pub fn new(alphabet: impl IntoIterator<Item = char>) -> Result<Self> {
        let alphabet: Vec<char> = alphabet.into_iter().collect();
        if alphabet.is_empty() {
            return Err(ModelError::Input(
                "a char codec needs a non-empty alphabet".into(),
            ));
        }
        let mut ids = HashMap::with_capacity(alphabet.len());
        for (i, &c) in alphabet.iter().enumerate() {
            if ids.insert(c, Self::FIRST_CHAR_ID + i as u32).is_some() {
                return Err(ModelError::Input(format!(
                    "the char codec's alphabet has {} twice",
                    describe_char(c)
                )));
            }
        }
        Ok(CharCodec { alphabet, ids })
    }

    /// A codec over every character that occurs in `texts`, sorted by code point.
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut chars: Vec<char> = texts.into_iter().flat_map(str::chars).collect();
        chars.sort_unstable();
        chars.dedup();
        CharCodec::new(chars)
    }

    /// The alphabet, in id order.
    pub fn alphabet(&self) -> &[char] {
        &self.alphabet
    }

    /// Loads a codec written by [`CharCodec::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|e| ModelError::io("read", path, e))?;
        Self::from_json(&bytes, path)
    }

    /// A codec from the JSON [`CharCodec::save`] writes, already in memory (`path` names it in
    /// errors).
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        let file: CharCodecFile =
            serde_json::from_slice(bytes).map_err(|e| ModelError::json(path, &e))?;
        if file.kind != "char" {
            let why = format!("expected \"char\", found {:?}", file.kind);
            return Err(ModelError::config(Some(path), "type", why));
        }
        if file.special_tokens != Self::SPECIAL_TOKENS {
            let why = format!(
                "expected {:?}, found {:?}",
                Self::SPECIAL_TOKENS,
                file.special_tokens
            );
            return Err(ModelError::config(Some(path), "special_tokens", why));
        }
        CharCodec::new(file.alphabet.chars()).map_err(|e| {
            let why = match e {
                ModelError::Input(why) => why,
                other => other.to_string(),
            };
            ModelError::config(Some(path), "alphabet", why)
        })
    }

    /// Writes the codec as JSON to `path` (atomically: a crash leaves the old file).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let file = CharCodecFile {
            kind: "char".into(),
            special_tokens: Self::SPECIAL_TOKENS.map(String::from).to_vec(),
            alphabet: self.alphabet.iter().collect(),
        };
        let json = serde_json::to_string_pretty(&file).expect("a char codec serializes");
        write_atomically(path, |w| w.write_all(json.as_bytes()))
    }
}

impl TextCodec for CharCodec {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(position, c)| {
                self.ids.get(&c).copied().ok_or_else(|| {
                    ModelError::Input(format!(
                        "{} at character {} of {:?} is not in the char codec's alphabet",
                        describe_char(c),
                        position + 1,
                        excerpt(text, 60)
                    ))
                })
            })
            .collect()
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut text = String::with_capacity(ids.len());
        for &id in ids {
            if id < Self::FIRST_CHAR_ID {
                continue; // special token
            }
            match self.alphabet.get((id - Self::FIRST_CHAR_ID) as usize) {
                Some(&c) => text.push(c),
                None => {
                    return Err(ModelError::Input(format!(
                        "token id {id} is outside the char codec's {} ids",
                        self.vocab_size()
                    )))
                }
            }
        }
        Ok(text)
    }

    fn bos_id(&self) -> Option<u32> {
        Some(Self::BOS)
    }

    fn eos_id(&self) -> Option<u32> {
        Some(Self::EOS)
    }

    fn pad_id(&self) -> u32 {
        Self::PAD
    }

    fn vocab_size(&self) -> usize {
        Self::FIRST_CHAR_ID as usize + self.alphabet.len()
    }
}

/// `'é' (U+00E9)`: a character as it appears in error messages.
fn describe_char(c: char) -> String {
    format!("{c:?} (U+{:04X})", c as u32)
}

/// The first `max_chars` characters of `text`, with "..." when cut.
fn excerpt(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// A model folder's codec
// ---------------------------------------------------------------------------------------------

/// The codec of the model folder `dir`: its `tokenizer.json` (with the config's BOS and EOS,
/// see [`HfCodec::from_dir`]), else its `char_codec.json`. Neither is an error naming both.
///
/// For a GGUF model (a `.gguf` file, or a folder with `model.gguf` and no `config.json`): the
/// tokenizer of the file's own vocabulary when it is byte-level BPE, else the `tokenizer.json`
/// beside the file.
pub fn load_codec(dir: impl AsRef<Path>, config: &LlamaConfig) -> Result<Box<dyn TextCodec>> {
    let dir = dir.as_ref();
    if let Some(file) = gguf_path(dir) {
        return gguf_codec(&file, config);
    }
    if dir.join(TOKENIZER_FILE).is_file() {
        return Ok(Box::new(HfCodec::from_dir(dir, config)?));
    }
    let char_path = dir.join(CHAR_CODEC_FILE);
    if char_path.is_file() {
        return Ok(Box::new(CharCodec::load(char_path)?));
    }
    Err(ModelError::Input(format!(
        "`{}` has neither a `{TOKENIZER_FILE}` nor a `{CHAR_CODEC_FILE}`",
        dir.display()
    )))
}

/// The codec of the GGUF model `path`; see [`load_codec`].
fn gguf_codec(path: &Path, config: &LlamaConfig) -> Result<Box<dyn TextCodec>> {
    let eos = config.eos_token_ids.first().copied();
    let file = GgufFile::open(path)?;
    let why = match tokenizer_from_vocab(&file, config.bos_token_id)? {
        Ok(tokenizer) => return Ok(Box::new(HfCodec::new(tokenizer, eos, None)?)),
        Err(why) => why,
    };
    let beside = path.parent().unwrap_or(Path::new(".")).join(TOKENIZER_FILE);
    if beside.is_file() {
        let tokenizer = Tokenizer::from_file(beside, config.bos_token_id)?;
        return Ok(Box::new(HfCodec::new(tokenizer, eos, None)?));
    }
    Err(ModelError::Gguf {
        file: path.to_path_buf(),
        why: format!("{why}, and there is no `{TOKENIZER_FILE}` beside it"),
    })
}
