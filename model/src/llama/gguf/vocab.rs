//! The tokenizer of a GGUF file's own vocabulary, when it is byte-level BPE
//! (`tokenizer.ggml.model` = `gpt2`: GPT-2, Llama 3 and their kin).
//!
//! The vocabulary (`tokenizer.ggml.tokens`, `token_type`, `merges`) becomes the
//! `tokenizer.json` a Hugging Face tokenizer of that kind has: a BPE model over byte-level
//! symbols, the pre-tokenizer that `tokenizer.ggml.pre` names, the byte-level decoder, and the
//! control tokens as special added tokens. The `tokenizers` crate then loads it as any other.

use serde_json::{json, Map, Value};

use crate::error::Result;
use crate::llama::gguf::file::{shown, GgufFile, MetaValue};
use crate::llama::tokenizer::Tokenizer;

/// llama.cpp's token types: control tokens and user-defined ones become added tokens.
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's pre-tokenizer split (`tokenizer.ggml.pre` = `llama-bpe`), as in its
/// `tokenizer.json`.
pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer of `file`'s vocabulary with `bos_token_id`. `Ok(Err(why))` when the
/// vocabulary is not one built here (another model, another pre-tokenizer, none at all):
/// the caller looks for a `tokenizer.json` then. `Err` when the vocabulary is damaged.
pub fn tokenizer_from_vocab(
    file: &GgufFile,
    bos_token_id: Option<u32>,
) -> Result<std::result::Result<Tokenizer, String>> {
    let model = match file.get("tokenizer.ggml.model") {
        None => {
            return Ok(Err(
                "the file has no vocabulary (`tokenizer.ggml.model`)".into()
            ))
        }
        Some(value) => value.as_str().unwrap_or(""),
    };
    if model != "gpt2" {
        return Ok(Err(format!(
            "its vocabulary is `{}` (`tokenizer.ggml.model`), not byte-level BPE (`gpt2`)",
            shown(model)
        )));
    }
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let (pre_tokenizer, ignore_merges) = match pre {
        "default" | "gpt-2" => (byte_level(true), false),
        "llama-bpe" | "llama3" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT},
                 "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
            true,
        ),
        other => {
            return Ok(Err(format!(
                "its byte-level BPE vocabulary uses the pre-tokenizer `{}` \
                 (`tokenizer.ggml.pre`), which is not built here (`gpt-2`, `llama-bpe` are)",
                shown(other)
            )))
        }
    };

    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types = match file.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(MetaValue::Array(items)) if items.len() == tokens.len() => {
            items.iter().map(|t| t.as_i64().unwrap_or(0)).collect()
        }
        Some(_) => {
            return Err(file.error(format!(
            "metadata `tokenizer.ggml.token_type` is not an array of {} integers, one per token",
            tokens.len()
        )))
        }
    };

    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, &token) in tokens.iter().enumerate() {
        if vocab.insert(token.to_string(), json!(id)).is_some() {
            return Err(file.error(format!(
                "metadata `tokenizer.ggml.tokens`: token {id} \"{}\" is given twice",
                shown(token)
            )));
        }
        let kind = types.get(id).copied().unwrap_or(1);
        if matches!(
            kind,
            TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
        ) {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": kind != TOKEN_TYPE_USER_DEFINED,
            }));
        }
    }
    let pairs = merges
        .iter()
        .enumerate()
        .map(|(i, merge)| match merge.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok(json!([a, b])),
            _ => Err(file.error(format!(
                "metadata `tokenizer.ggml.merges`: merge {i} \"{}\" is not two symbols \
                 separated by one space",
                shown(merge)
            ))),
        })
        .collect::<Result<Vec<Value>>>()?;

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": pairs,
        },
    });
    let bytes = serde_json::to_vec(&tokenizer_json)
        .map_err(|e| file.error(format!("its vocabulary does not make a tokenizer: {e}")))?;
    Tokenizer::from_json(&bytes, file.path().to_path_buf(), bos_token_id).map(Ok)
}

/// The byte-level pre-tokenizer, with GPT-2's regex split or without.
fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
           "use_regex": use_regex})
}

/// Metadata `key`, an array of strings.
fn strings<'f>(file: &'f GgufFile, key: &str) -> Result<Vec<&'f str>> {
    let not_strings = || {
        file.error(format!(
            "metadata `{key}` is missing or not an array of strings"
        ))
    };
    match file.get(key) {
        Some(MetaValue::Array(items)) => items
            .iter()
            .map(|item| item.as_str().ok_or_else(not_strings))
            .collect(),
        _ => Err(not_strings()),
    }
}
