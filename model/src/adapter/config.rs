//! An adapter's settings ([`AdapterConfig`]) and their `adapter_config.json` form (PEFT's,
//! plus HydraLoRA's `lora_nums`).

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::llama::layer::TARGET_MODULES;

/// LoRA (one B, no router) or HydraLoRA (a shared A, several experts B_i and a router).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// LoRA: `y = x W0^T + scale * (x A^T) B^T`.
    Lora,
    /// HydraLoRA: one A shared by `experts` matrices B_i, mixed per token by a softmax router.
    Hydra,
}

/// An adapter's settings, as in `adapter_config.json`.
///
/// ```
/// use hydralora_model::{AdapterConfig, Method};
/// let mut cfg = AdapterConfig::hydra(8, 16.0, 4, &["q_proj", "v_proj"]);
/// assert_eq!(cfg.scale(), 2.0); // alpha / r
/// assert!(cfg.validate().is_ok());
/// let json = cfg.to_json(); // what adapter_config.json holds
/// assert_eq!(json["lora_nums"], 4);
/// cfg.targets.push("mlp".into());
/// assert!(cfg.validate().is_err()); // not a LLaMA linear layer
/// assert_eq!(AdapterConfig::lora(8, 16.0, &["q_proj"]).method, Method::Lora);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    /// LoRA or HydraLoRA (in the file: HydraLoRA when `lora_nums` is present).
    pub method: Method,
    /// The rank r of A `[r, d_in]` and of each expert's B `[d_out, r]`.
    pub r: usize,
    /// `lora_alpha`: the adapter's output is scaled by [`AdapterConfig::scale`].
    pub alpha: f32,
    /// Dropout on the input of A while training (PEFT's `lora_dropout`).
    pub dropout: f32,
    /// The adapted linear layers, by Hugging Face module name (a subset of [`TARGET_MODULES`]),
    /// in every decoder layer.
    pub targets: Vec<String>,
    /// The number of experts, the B matrices (1 for LoRA; `lora_nums` in the file).
    pub experts: usize,
    /// Scale by alpha / sqrt(r) instead of alpha / r.
    pub rslora: bool,
    /// Route each token to its k best experts only (off: dense routing, as the paper).
    pub top_k: Option<usize>,
    /// Coefficient of the load-balancing loss (0: off, as the paper).
    pub balance_coef: f32,
}

impl AdapterConfig {
    /// LoRA of rank `r` on `targets`; no dropout, no rsLoRA (validated by [`attach`](super::attach)).
    pub fn lora(r: usize, alpha: f32, targets: &[&str]) -> Self {
        AdapterConfig {
            method: Method::Lora,
            r,
            alpha,
            dropout: 0.0,
            targets: targets.iter().map(|s| s.to_string()).collect(),
            experts: 1,
            rslora: false,
            top_k: None,
            balance_coef: 0.0,
        }
    }

    /// HydraLoRA of rank `r` with `experts` B matrices on `targets`, dense routing, no balance loss.
    pub fn hydra(r: usize, alpha: f32, experts: usize, targets: &[&str]) -> Self {
        AdapterConfig {
            method: Method::Hydra,
            experts,
            ..Self::lora(r, alpha, targets)
        }
    }

    /// alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }

    /// Checks the settings: r in 1..=65536, 1..=4096 experts (exactly 1 for LoRA), targets
    /// non-empty and all in [`TARGET_MODULES`], dropout in [0, 1), top_k in 1..=experts. The
    /// [`ModelError::Config`] names the field as `adapter_config.json` spells it.
    pub fn validate(&self) -> Result<()> {
        let field = |field: &str, why: String| ModelError::Config {
            file: None,
            field: field.into(),
            why,
        };
        if self.r == 0 {
            return Err(field("r", "the rank must be at least 1".into()));
        }
        // Bounds far above any useful adapter, so a lying file cannot make us allocate terabytes.
        if self.r > 1 << 16 {
            return Err(field(
                "r",
                format!("a rank of {} is beyond any model (at most 65536)", self.r),
            ));
        }
        if self.experts > 1 << 12 {
            return Err(field(
                "lora_nums",
                format!(
                    "{} experts is beyond any model (at most 4096)",
                    self.experts
                ),
            ));
        }
        if self.experts == 0 {
            return Err(field(
                "lora_nums",
                "a HydraLoRA adapter needs at least one expert".into(),
            ));
        }
        if self.method == Method::Lora && self.experts != 1 {
            return Err(field(
                "lora_nums",
                format!("LoRA has one expert (one B), got {}", self.experts),
            ));
        }
        if self.targets.is_empty() {
            return Err(field("target_modules", "no target modules".into()));
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| !TARGET_MODULES.contains(&t.as_str()))
        {
            return Err(field(
                "target_modules",
                format!("`{t}` is not a LLaMA linear layer (one of {TARGET_MODULES:?})"),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(field(
                "lora_dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        if let Some(k) = self.top_k {
            if k == 0 || k > self.experts {
                return Err(field(
                    "top_k",
                    format!(
                        "must be in 1..={} (the number of experts), got {k}",
                        self.experts
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads `adapter_config.json` (PEFT's, with `lora_nums` for HydraLoRA).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io("read", path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::json(path, &e))?;
        let field = |name: &str, why: &str| ModelError::Config {
            file: Some(path.to_path_buf()),
            field: name.into(),
            why: why.into(),
        };
        if let Some(t) = v.get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                return Err(field(
                    "peft_type",
                    &format!("`{t}` adapters are not supported (LORA only)"),
                ));
            }
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| field("r", "missing or not a non-negative integer"))?
            as usize;
        let alpha = v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0) as f32;
        let targets: Vec<String> = match v.get("target_modules") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| field("target_modules", "must be a list of module names"))
                })
                .collect::<Result<_>>()?,
            Some(Value::String(s)) => {
                return Err(field(
                    "target_modules",
                    &format!(
                        "a regular expression (`{s}`) is not supported; list the module names"
                    ),
                ))
            }
            _ => return Err(field("target_modules", "missing")),
        };
        let experts = v
            .get("lora_nums")
            .map(|n| {
                n.as_u64()
                    .ok_or_else(|| field("lora_nums", "must be a non-negative integer"))
            })
            .transpose()?;
        let cfg = AdapterConfig {
            method: if experts.is_some() {
                Method::Hydra
            } else {
                Method::Lora
            },
            r,
            alpha,
            dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
            targets,
            experts: experts.unwrap_or(1) as usize,
            rslora: v
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            top_k: v
                .get("hydralora_top_k")
                .and_then(Value::as_u64)
                .map(|k| k as usize),
            balance_coef: v
                .get("hydralora_balance_coef")
                .and_then(Value::as_f64)
                .unwrap_or(0.0) as f32,
        };
        cfg.validate().map_err(|e| match e {
            ModelError::Config { field, why, .. } => ModelError::Config {
                file: Some(path.to_path_buf()),
                field,
                why,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// The `adapter_config.json` PEFT reads (plus `lora_nums` for HydraLoRA), without a base
    /// model name ([`AdapterConfig::to_json_for`] names it).
    pub fn to_json(&self) -> Value {
        self.to_json_for(None)
    }

    /// [`AdapterConfig::to_json`] with `base_model_name_or_path` set to `base` (a hub id or a
    /// local path), which PEFT's `AutoPeftModelForCausalLM` loads the base from.
    pub fn to_json_for(&self, base: Option<&str>) -> Value {
        let mut v = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.targets,
            "use_rslora": self.rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": false,
            "init_lora_weights": true,
            "base_model_name_or_path": base,
            "modules_to_save": null,
        });
        if self.method == Method::Hydra {
            v["lora_nums"] = json!(self.experts);
            if let Some(k) = self.top_k {
                v["hydralora_top_k"] = json!(k);
            }
            if self.balance_coef != 0.0 {
                v["hydralora_balance_coef"] = json!(self.balance_coef);
            }
        }
        v
    }
}
