//! A LLaMA model's `config.json` and `generation_config.json`, as Hugging Face `transformers`
//! writes them (both the 4.x layout with `rope_theta` / `rope_scaling` and the 5.x layout with
//! `rope_parameters`).
//!
//! Parsing goes through [`serde_json::Value`] rather than a derived `Deserialize`, so that every
//! error names the field it is about (serde's own messages only give a line and column).

use std::f64::consts::PI;
use std::fs;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{ModelError, Result};

/// The name of a model folder's architecture config.
pub const CONFIG_FILE: &str = "config.json";
/// The name of a model folder's (optional) generation defaults.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// `rope_theta` when a config gives none (the `transformers` default for LLaMA).
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// `max_position_embeddings` when a config gives none (the `transformers` default for LLaMA).
pub const DEFAULT_MAX_POSITION_EMBEDDINGS: usize = 2048;
/// `rms_norm_eps` when a config gives none (the `transformers` default for LLaMA).
pub const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;

/// The architecture of a LLaMA-family decoder (`LlamaForCausalLM`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Width of the residual stream, `H`.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer, `I`.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Width of one attention head as written in the config; `None` means
    /// `hidden_size / num_attention_heads`. Use [`LlamaConfig::head_dim`] for the resolved value.
    pub head_dim: Option<usize>,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f64,
    /// Base of the rotary position embedding.
    pub rope_theta: f64,
    /// Llama 3 style rotary frequency scaling; `None` is plain ("default") RoPE.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Vocabulary size, `V`.
    pub vocab_size: usize,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` reuses `model.embed_tokens.weight`.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (a config may give one id or a list); empty if none.
    pub eos_token_ids: Vec<u32>,
}

/// The `llama3` rope type's parameters (Llama 3.1 and later).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    /// How much the low frequencies are slowed down (8 for Llama 3.1).
    pub factor: f64,
    /// Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are scaled.
    pub low_freq_factor: f64,
    /// Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// The context length of the model before its context was extended (8192 for Llama 3.1).
    pub original_max_position_embeddings: usize,
}

impl Llama3RopeScaling {
    /// Scales one RoPE inverse frequency as `transformers`' `_compute_llama3_parameters` does:
    /// high frequencies (short wavelengths) are kept, low frequencies are divided by `factor`,
    /// and the band between is a smooth interpolation of the two.
    pub fn scale(&self, inv_freq: f64) -> f64 {
        let old_context_len = self.original_max_position_embeddings as f64;
        let low_freq_wavelen = old_context_len / self.low_freq_factor;
        let high_freq_wavelen = old_context_len / self.high_freq_factor;
        let wavelen = 2.0 * PI / inv_freq;
        if wavelen < high_freq_wavelen {
            inv_freq
        } else if wavelen > low_freq_wavelen {
            inv_freq / self.factor
        } else {
            let smooth = (old_context_len / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - smooth) * inv_freq / self.factor + smooth * inv_freq
        }
    }
}

impl LlamaConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join(CONFIG_FILE))
    }

    /// Reads and validates a `config.json` file; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let value = read_json_object(path)?;
        let config = Self::from_json_value(&value, Some(path))?;
        config.validate_in(Some(path))?;
        Ok(config)
    }

    /// Builds a config from already-parsed JSON (not validated; call [`LlamaConfig::validate`]).
    /// `file` is only used in error messages.
    ///
    /// ```
    /// use hydralora_model::LlamaConfig;
    /// # fn main() -> hydralora_model::Result<()> {
    /// let json = serde_json::json!({
    ///     "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
    ///     "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96,
    ///     "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    /// });
    /// let config = LlamaConfig::from_json_value(&json, None)?;
    /// config.validate()?;
    /// assert_eq!(config.head_dim(), 16); // hidden_size / num_attention_heads
    /// assert_eq!(config.kv_dim(), 32); // num_key_value_heads * head_dim
    /// # Ok(()) }
    /// ```
    pub fn from_json_value(value: &Value, file: Option<&Path>) -> Result<Self> {
        let fields = Fields::top(value, file)?;
        fields.expect_absent_or("hidden_act", "silu")?;
        fields.expect_false_or_absent("attention_bias")?;
        fields.expect_false_or_absent("mlp_bias")?;

        let num_attention_heads = fields.required_usize("num_attention_heads")?;
        let (rope_theta, rope_scaling) = parse_rope(&fields)?;
        Ok(LlamaConfig {
            hidden_size: fields.required_usize("hidden_size")?,
            intermediate_size: fields.required_usize("intermediate_size")?,
            num_hidden_layers: fields.required_usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: fields
                .usize("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            head_dim: fields.usize("head_dim")?,
            rms_norm_eps: fields.f64("rms_norm_eps")?.unwrap_or(DEFAULT_RMS_NORM_EPS),
            rope_theta,
            rope_scaling,
            vocab_size: fields.required_usize("vocab_size")?,
            max_position_embeddings: fields
                .usize("max_position_embeddings")?
                .unwrap_or(DEFAULT_MAX_POSITION_EMBEDDINGS),
            tie_word_embeddings: fields.bool("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id: fields.token_id("bos_token_id")?,
            eos_token_ids: fields.token_ids("eos_token_id")?,
        })
    }

    /// The width of one attention head: `head_dim` if given, else `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or_else(|| {
            self.hidden_size
                .checked_div(self.num_attention_heads)
                .unwrap_or(0)
        })
    }

    /// Width of all query heads together, `num_attention_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim()
    }

    /// Width of all key (or value) heads together, `num_key_value_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim()
    }

    /// Checks that the sizes fit together; each error names the offending field.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(None)
    }

    fn validate_in(&self, file: Option<&Path>) -> Result<()> {
        let err = |field: &str, why: String| Err(ModelError::config(file, field, why));
        for (field, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return err(field, "must be greater than 0".into());
            }
        }
        match self.head_dim {
            None if self.hidden_size % self.num_attention_heads != 0 => {
                return err(
                    "num_attention_heads",
                    format!(
                        "{} heads do not divide hidden_size {} (and no head_dim is given)",
                        self.num_attention_heads, self.hidden_size
                    ),
                );
            }
            Some(0) => return err("head_dim", "must be greater than 0".into()),
            _ => {}
        }
        // The largest tensors' byte sizes (f32) must be numbers: a config claiming more is
        // refused here rather than overflowing in `q_dim` or later.
        let q_dim = self.head_dim().checked_mul(self.num_attention_heads);
        let bytes = |rows: Option<usize>| rows?.checked_mul(self.hidden_size)?.checked_mul(4);
        for (field, rows) in [
            ("num_attention_heads", q_dim),
            ("vocab_size", Some(self.vocab_size)),
            ("intermediate_size", Some(self.intermediate_size)),
        ] {
            if bytes(rows).is_none() {
                return err(field, "the tensor sizes it implies overflow".into());
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return err(
                "num_key_value_heads",
                format!(
                    "{} key/value heads do not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if self.head_dim() % 2 != 0 {
            let field = if self.head_dim.is_some() {
                "head_dim"
            } else {
                "num_attention_heads"
            };
            return err(
                field,
                format!(
                    "head_dim {} must be even for rotary embeddings",
                    self.head_dim()
                ),
            );
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return err(
                "rms_norm_eps",
                format!("must be > 0, found {}", self.rms_norm_eps),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return err(
                "rope_theta",
                format!("must be > 0, found {}", self.rope_theta),
            );
        }
        if let Some(scaling) = &self.rope_scaling {
            validate_llama3(scaling, file)?;
        }
        Ok(())
    }

    /// RoPE inverse frequencies, `head_dim / 2` of them: `1 / rope_theta^(2i / head_dim)`, then
    /// scaled by [`Llama3RopeScaling::scale`] when the config has `llama3` scaling.
    /// Computed in f64; `transformers` computes them in f32.
    pub fn inv_freq(&self) -> Vec<f64> {
        let dim = self.head_dim();
        (0..dim / 2)
            .map(|i| {
                let inv_freq = 1.0 / self.rope_theta.powf((2 * i) as f64 / dim as f64);
                match &self.rope_scaling {
                    Some(scaling) => scaling.scale(inv_freq),
                    None => inv_freq,
                }
            })
            .collect()
    }

    /// A `config.json` that `transformers` (4.x and 5.x) loads as a `LlamaForCausalLM`.
    ///
    /// RoPE settings are written in both layouts (`rope_theta` + `rope_scaling` for 4.x,
    /// `rope_parameters` for 5.x); they agree, so [`LlamaConfig::from_json_value`] accepts them.
    pub fn to_json(&self) -> Value {
        let mut rope_parameters = json!({ "rope_theta": self.rope_theta, "rope_type": "default" });
        let mut rope_scaling = Value::Null;
        if let Some(s) = &self.rope_scaling {
            rope_scaling = json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
            rope_parameters = rope_scaling.clone();
            rope_parameters["rope_theta"] = json!(self.rope_theta);
        }
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "rope_parameters": rope_parameters,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "pretraining_tp": 1,
            "use_cache": true,
            "dtype": "float32",
        })
    }

    /// [`LlamaConfig::to_json`] as pretty-printed text with a final newline.
    pub fn to_json_string(&self) -> String {
        // Serializing a `Value` cannot fail.
        let mut text = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Checks a `llama3` scaling's parameters; fields are named as in `rope_parameters`.
fn validate_llama3(s: &Llama3RopeScaling, file: Option<&Path>) -> Result<()> {
    let err = |field: &str, why: String| {
        Err(ModelError::config(
            file,
            format!("rope_parameters.{field}"),
            why,
        ))
    };
    if !(s.factor.is_finite() && s.factor > 0.0) {
        return err("factor", format!("must be > 0, found {}", s.factor));
    }
    if !(s.low_freq_factor.is_finite() && s.low_freq_factor > 0.0) {
        return err(
            "low_freq_factor",
            format!("must be > 0, found {}", s.low_freq_factor),
        );
    }
    if !(s.high_freq_factor.is_finite() && s.high_freq_factor > s.low_freq_factor) {
        return err(
            "high_freq_factor",
            format!(
                "must be greater than low_freq_factor {}, found {}",
                s.low_freq_factor, s.high_freq_factor
            ),
        );
    }
    if s.original_max_position_embeddings == 0 {
        return err(
            "original_max_position_embeddings",
            "must be greater than 0".into(),
        );
    }
    Ok(())
}

/// Reads RoPE settings from either layout:
/// - transformers 5: `rope_parameters: {rope_theta, rope_type, ...}`;
/// - transformers 4: top-level `rope_theta` and `rope_scaling: {rope_type | type, ...}` (or null).
///
/// When both layouts are present they must agree.
fn parse_rope(fields: &Fields) -> Result<(f64, Option<Llama3RopeScaling>)> {
    let parameters = fields.object("rope_parameters")?;
    let legacy_scaling = fields.object("rope_scaling")?;

    let new_theta = match &parameters {
        Some(p) => p.f64("rope_theta")?,
        None => None,
    };
    let old_theta = fields.f64("rope_theta")?;
    if let (Some(new), Some(old)) = (new_theta, old_theta) {
        if new != old {
            return Err(fields.error(
                "rope_theta",
                format!("{old} disagrees with rope_parameters.rope_theta {new}"),
            ));
        }
    }
    let theta = new_theta.or(old_theta).unwrap_or(DEFAULT_ROPE_THETA);

    let new_scaling = parameters
        .as_ref()
        .map(|p| parse_rope_type(p, false))
        .transpose()?;
    let old_scaling = legacy_scaling
        .as_ref()
        .map(|s| parse_rope_type(s, true))
        .transpose()?;
    if let (Some(new), Some(old)) = (&new_scaling, &old_scaling) {
        if new != old {
            return Err(fields.error(
                "rope_scaling",
                format!("{old:?} disagrees with rope_parameters {new:?}"),
            ));
        }
    }
    Ok((theta, new_scaling.or(old_scaling).flatten()))
}

/// Reads one rope dictionary: `default` gives `None`, `llama3` its parameters, anything else
/// is an error naming the type field. `type_required` is set for the legacy `rope_scaling`,
/// which has no meaning without a type.
fn parse_rope_type(rope: &Fields, type_required: bool) -> Result<Option<Llama3RopeScaling>> {
    let (type_field, rope_type) = match (rope.str("rope_type")?, rope.str("type")?) {
        (Some(t), _) => ("rope_type", t),
        (None, Some(t)) => ("type", t),
        (None, None) if type_required => {
            return Err(rope.error("rope_type", "is missing (expected \"llama3\")".into()));
        }
        (None, None) => ("rope_type", "default"),
    };
    match rope_type {
        "default" => Ok(None),
        "llama3" => Ok(Some(Llama3RopeScaling {
            factor: rope.required_f64("factor")?,
            low_freq_factor: rope.required_f64("low_freq_factor")?,
            high_freq_factor: rope.required_f64("high_freq_factor")?,
            original_max_position_embeddings: rope
                .required_usize("original_max_position_embeddings")?,
        })),
        other => Err(rope.error(
            type_field,
            format!("rope type `{other}` is not supported (supported: \"default\", \"llama3\")"),
        )),
    }
}

/// Generation defaults from `generation_config.json`; every field is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// `bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// One id or a list in the file; empty if absent.
    pub eos_token_ids: Vec<u32>,
    /// `max_new_tokens`: the default token budget of generation.
    pub max_new_tokens: Option<usize>,
    /// `temperature` (the CLI applies it only when `do_sample` is true, as `transformers` does).
    pub temperature: Option<f64>,
    /// `top_p`: nucleus sampling's probability mass.
    pub top_p: Option<f64>,
    /// `top_k`: sample from the k most likely tokens only.
    pub top_k: Option<usize>,
    /// `do_sample`: false (or absent) means greedy decoding.
    pub do_sample: Option<bool>,
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json`, or gives the empty config if the file does not exist.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join(GENERATION_CONFIG_FILE);
        if !path.exists() {
            return Ok(Self::default());
        }
        Self::from_file(&path)
    }

    /// Reads a `generation_config.json` file; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let value = read_json_object(path)?;
        Self::from_json_value(&value, Some(path))
    }

    /// Builds a generation config from parsed JSON; `file` is only used in error messages.
    pub fn from_json_value(value: &Value, file: Option<&Path>) -> Result<Self> {
        let fields = Fields::top(value, file)?;
        Ok(GenerationConfig {
            bos_token_id: fields.token_id("bos_token_id")?,
            eos_token_ids: fields.token_ids("eos_token_id")?,
            max_new_tokens: fields.usize("max_new_tokens")?,
            temperature: fields.f64("temperature")?,
            top_p: fields.f64("top_p")?,
            top_k: fields.usize("top_k")?,
            do_sample: fields.bool("do_sample")?,
        })
    }
}

/// Reads a JSON file; errors name the file (and line/column for syntax errors).
pub(crate) fn read_json_object(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(|e| ModelError::io("read", path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::json(path, &e))
}

/// Typed access to the fields of one JSON object, with errors that name the field.
/// A field whose value is `null` counts as absent, as in `transformers`.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    file: Option<&'a Path>,
    /// Dotted path of this object inside the file ("" at the top level, "rope_parameters." inside it).
    prefix: String,
}

impl<'a> Fields<'a> {
    /// The top-level object of a config file.
    fn top(value: &'a Value, file: Option<&'a Path>) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Fields {
                map,
                file,
                prefix: String::new(),
            }),
            other => Err(ModelError::config(
                file,
                "(top level)",
                format!("expected a JSON object, found {}", kind(other)),
            )),
        }
    }

    fn error(&self, name: &str, why: String) -> ModelError {
        ModelError::config(self.file, format!("{}{name}", self.prefix), why)
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn usize(&self, name: &str) -> Result<Option<usize>> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        value
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| {
                self.error(
                    name,
                    format!("expected a non-negative integer, found {value}"),
                )
            })
    }

    fn required_usize(&self, name: &str) -> Result<usize> {
        self.usize(name)?
            .ok_or_else(|| self.error(name, "is missing".into()))
    }

    fn f64(&self, name: &str) -> Result<Option<f64>> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        value
            .as_f64()
            .map(Some)
            .ok_or_else(|| self.error(name, format!("expected a number, found {value}")))
    }

    fn required_f64(&self, name: &str) -> Result<f64> {
        self.f64(name)?
            .ok_or_else(|| self.error(name, "is missing".into()))
    }

    fn bool(&self, name: &str) -> Result<Option<bool>> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        value
            .as_bool()
            .map(Some)
            .ok_or_else(|| self.error(name, format!("expected true or false, found {value}")))
    }

    fn str(&self, name: &str) -> Result<Option<&'a str>> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        value
            .as_str()
            .map(Some)
            .ok_or_else(|| self.error(name, format!("expected a string, found {value}")))
    }

    /// A nested object, or `None` if absent or null.
    fn object(&self, name: &str) -> Result<Option<Fields<'a>>> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        match value {
            Value::Object(map) => Ok(Some(Fields {
                map,
                file: self.file,
                prefix: format!("{}{name}.", self.prefix),
            })),
            other => Err(self.error(name, format!("expected an object, found {}", kind(other)))),
        }
    }

    fn token_id(&self, name: &str) -> Result<Option<u32>> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        self.parse_token_id(name, value).map(Some)
    }

    /// One token id or a list of them.
    fn token_ids(&self, name: &str) -> Result<Vec<u32>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| self.parse_token_id(name, item))
                .collect(),
            Some(value) => Ok(vec![self.parse_token_id(name, value)?]),
        }
    }

    fn parse_token_id(&self, name: &str, value: &Value) -> Result<u32> {
        value
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                self.error(
                    name,
                    format!("expected a token id (0..2^32), found {value}"),
                )
            })
    }

    /// Fails unless the field is absent or equals `expected` (a string).
    fn expect_absent_or(&self, name: &str, expected: &str) -> Result<()> {
        match self.str(name)? {
            Some(found) if found != expected => Err(self.error(
                name,
                format!("`{found}` is not supported (only `{expected}`)"),
            )),
            _ => Ok(()),
        }
    }

    /// Fails if the (boolean) field is present and true.
    fn expect_false_or_absent(&self, name: &str) -> Result<()> {
        match self.bool(name)? {
            Some(true) => Err(self.error(name, "must be false: biases are not supported".into())),
            _ => Ok(()),
        }
    }
}

/// A JSON value's kind, for messages.
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
