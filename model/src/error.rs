//! The model crate's error type.
//!
//! Every message names what a user needs to find the problem: the file, the config field, the
//! tensor, and for shape problems both the expected and the found shape.

use std::fmt;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading or writing a model's files.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file or folder could not be read, written, created or renamed.
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        /// What was being done, e.g. "read", "create", "rename to its final name".
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file is not valid JSON (or not the JSON shape expected at its top level).
    #[error("`{}`: invalid JSON at line {line}, column {column}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error (0 when it is not about one place).
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's message.
        message: String,
    },

    /// A field of a config file is missing, has the wrong type, or has a value this crate
    /// does not support.
    #[error("{}field `{field}`: {why}", FileLabel(file.as_deref()))]
    Config {
        /// The config file, when the config came from one.
        file: Option<PathBuf>,
        /// The field's JSON name; nested fields are dotted, e.g. `rope_parameters.rope_type`.
        field: String,
        /// What is wrong with it.
        why: String,
    },

    /// A tensor the model needs is not in the weight files.
    #[error(
        "tensor `{tensor}` is missing from `{}`{}",
        file.display(),
        ExpectedShape(expected.as_deref())
    )]
    MissingTensor {
        /// The tensor's name.
        tensor: String,
        /// The file (or model folder) searched.
        file: PathBuf,
        /// The shape the model wanted, when known.
        expected: Option<Vec<usize>>,
    },

    /// The weight files hold a tensor the model does not know.
    #[error("unexpected tensor `{tensor}` of shape {shape:?} in `{}`", file.display())]
    UnexpectedTensor {
        /// The tensor's name.
        tensor: String,
        /// The file holding it.
        file: PathBuf,
        /// Its shape in the file.
        shape: Vec<usize>,
    },

    /// A tensor has the wrong shape.
    #[error(
        "tensor `{tensor}` in `{}` has shape {found:?}, expected {expected:?}",
        file.display()
    )]
    TensorShape {
        /// The tensor's name.
        tensor: String,
        /// The file holding it.
        file: PathBuf,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A tensor is stored in a dtype this reader does not convert.
    #[error(
        "tensor `{tensor}` in `{}` has dtype {dtype}, which is not supported here (supported: {supported})",
        file.display()
    )]
    UnsupportedDType {
        /// The tensor's name.
        tensor: String,
        /// The file holding it.
        file: PathBuf,
        /// Its dtype in the file, e.g. `I64`.
        dtype: String,
        /// The dtypes this reader takes, in words.
        supported: &'static str,
    },

    /// A safetensors file's header is damaged (truncated file, bad JSON, bad offsets).
    #[error("`{}` is not a valid safetensors file: {why}", file.display())]
    Safetensors {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        why: String,
    },

    /// A GGUF file is damaged, lies about its sizes, or holds something this reader does not
    /// take (an architecture, a tensor type, a metadata value of the wrong type).
    #[error("GGUF file `{}`: {why}", file.display())]
    Gguf {
        /// The file.
        file: PathBuf,
        /// What is wrong, naming the key or the tensor.
        why: String,
    },

    /// The index of sharded weights (`model.safetensors.index.json`) is inconsistent.
    #[error("`{}`: {why}", file.display())]
    Index {
        /// The index file.
        file: PathBuf,
        /// What is inconsistent.
        why: String,
    },

    /// Tensors handed to a writer are inconsistent (data length vs shape, duplicate names).
    #[error("cannot write tensor `{tensor}` to `{}`: {why}", file.display())]
    InvalidTensor {
        /// The tensor's name.
        tensor: String,
        /// The file being written.
        file: PathBuf,
        /// What is inconsistent.
        why: String,
    },

    /// The tokenizer file could not be loaded, or encoding / decoding failed.
    #[error("tokenizer `{}`: {why}", file.display())]
    Tokenizer {
        /// The `tokenizer.json` file.
        file: PathBuf,
        /// The tokenizers library's message, or what failed.
        why: String,
    },

    /// An error from the GPU engine (device, shapes of an op, readback).
    #[error(transparent)]
    Engine(#[from] hydralora_engine::Error),

    /// Input a caller passed in (token ids, labels, batch sizes) that the model cannot take.
    #[error("{0}")]
    Input(String),

    /// A training step was cancelled before it changed anything: the run is still after
    /// optimizer step `step`, as if the cancelled step had never started.
    #[error("cancelled; the run stands after step {step}, unchanged by the cancelled step")]
    Cancelled {
        /// Optimizer steps done (the cancelled one not counted).
        step: usize,
    },

    /// The background training thread ended (or panicked) before it answered.
    #[error("{0}")]
    Background(String),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    /// An I/O error while doing `action` on `path`.
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// A JSON error in `path`, with serde_json's line and column.
    pub(crate) fn json(path: &Path, source: &serde_json::Error) -> Self {
        let (line, column) = (source.line(), source.column());
        // serde_json's message ends with " at line L column C"; the position is shown separately.
        let message = source.to_string();
        let suffix = format!(" at line {line} column {column}");
        let message = message
            .strip_suffix(&suffix)
            .unwrap_or(&message)
            .to_string();
        ModelError::Json {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    /// A config error on `field`, optionally in `file`.
    pub(crate) fn config(
        file: Option<&Path>,
        field: impl Into<String>,
        why: impl Into<String>,
    ) -> Self {
        ModelError::Config {
            file: file.map(Path::to_path_buf),
            field: field.into(),
            why: why.into(),
        }
    }
}

/// Displays "`path`: " before a config error, or nothing when the config has no file.
struct FileLabel<'a>(Option<&'a Path>);

impl fmt::Display for FileLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "`{}`: ", path.display()),
            None => Ok(()),
        }
    }
}

/// Displays " (expected shape [..])" when the expected shape is known.
struct ExpectedShape<'a>(Option<&'a [usize]>);

impl fmt::Display for ExpectedShape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(shape) => write!(f, " (expected shape {shape:?})"),
            None => Ok(()),
        }
    }
}
