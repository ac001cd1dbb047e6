//! A Hugging Face `tokenizer.json`, through the `tokenizers` crate.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use tokenizers::{
    DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
};

use crate::error::{ModelError, Result};

/// The name of a model folder's tokenizer file.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A tokenizer loaded from a `tokenizer.json`, with the model's BOS token.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The file it was loaded from, named in errors.
    path: PathBuf,
    /// The model config's `bos_token_id`, prepended by [`Tokenizer::encode`] on request.
    bos_token_id: Option<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token_id", &self.bos_token_id)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `path` (a `tokenizer.json`). `bos_token_id` comes from the model's config; the
    /// tokenizer's own post-processor is not used to add special tokens.
    pub fn from_file(path: impl AsRef<Path>, bos_token_id: Option<u32>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = fs::read(&path).map_err(|e| ModelError::io("read", &path, e))?;
        Self::from_json(&bytes, path, bos_token_id)
    }

    /// A tokenizer from the bytes of a `tokenizer.json`; `path` names where they came from
    /// in errors (e.g. a GGUF file whose vocabulary they were built from).
    pub fn from_json(bytes: &[u8], path: PathBuf, bos_token_id: Option<u32>) -> Result<Self> {
        // Check the JSON syntax first: `tokenizers` 0.23 panics (`expect("Helper")`) on a
        // syntax error inside the `decoder` object instead of returning its error.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| {
            ModelError::Tokenizer {
                file: path.clone(),
                why: format!("cannot load it: invalid JSON: {e}"),
            }
        })?;
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| ModelError::Tokenizer {
                file: path.clone(),
                why: format!("cannot load it: {e}"),
            })?;
        Ok(Tokenizer {
            inner,
            path,
            bos_token_id,
        })
    }

    /// The file this tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The BOS token given at load time.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, e.g. `"</s>"`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The `tokenizers` crate's tokenizer, for anything not wrapped here.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, with the BOS token first when `add_bos` is set (an error if the
    /// tokenizer was loaded without one).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let bos = match (add_bos, self.bos_token_id) {
            (false, _) => None,
            (true, Some(bos)) => Some(bos),
            (true, None) => {
                return Err(self.error("a BOS token was requested but the model config has none"))
            }
        };
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| self.error(format!("cannot encode {text:?}: {e}")))?;
        Ok(bos
            .into_iter()
            .chain(encoding.get_ids().iter().copied())
            .collect())
    }

    /// The text of `ids`, special tokens (BOS, EOS, ...) left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| self.error(format!("cannot decode {ids:?}: {e}")))
    }

    /// An incremental decoder for generation: feed it one token at a time and it returns the
    /// text each token adds (special tokens left out).
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream {
            tokenizer: self,
            inner: self.inner.decode_stream(true),
        }
    }

    fn error(&self, why: impl Into<String>) -> ModelError {
        ModelError::Tokenizer {
            file: self.path.clone(),
            why: why.into(),
        }
    }
}

/// The `tokenizers` crate's streaming decoder for a `tokenizer.json` tokenizer.
type InnerDecodeStream<'a> = tokenizers::DecodeStream<
    'a,
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Turns generated tokens into text as they come; see [`Tokenizer::decode_stream`].
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    inner: InnerDecodeStream<'a>,
}

impl DecodeStream<'_> {
    /// Adds one token and returns the text it completes, if any. A token that holds only part
    /// of a multi-byte character gives `None`; the token that completes the character gives the
    /// whole character. Leading spaces that a one-token decode would drop are kept.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.inner.step(id).map_err(|e| {
            self.tokenizer
                .error(format!("cannot decode token {id}: {e}"))
        })
    }
}
