//! LoRA and HydraLoRA adapters on a [`Llama`]: settings, initialisation, the trainable
//! parameters, router statistics, and the adapter files the ecosystem uses (PEFT for LoRA;
//! the official HydraLoRA layout: `lora_A`, `lora_B0..lora_B{N-1}`, `lora_route`, `lora_nums`).

pub mod merge;

use std::path::Path;
use std::sync::{Arc, Mutex};

use hydralora_engine::{no_grad, rng::Rng, Tensor};
use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::llama::linear::{Adapter, Dropout};
use crate::llama::weights::{write_atomically, write_safetensors, WeightFile};
use crate::llama::{Layer, Llama, TARGET_MODULES};

/// The adapter's settings file in an adapter folder (PEFT's name).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's tensors file in an adapter folder (PEFT's name).
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// LoRA (one B, no router) or HydraLoRA (a shared A, N heads B_i and a router).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// LoRA: `y = x W0^T + scale * (x A^T) B^T`.
    Lora,
    /// HydraLoRA: one A shared by N heads B_i mixed per token by a softmax router.
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
    /// The rank r of A `[r, d_in]` and of each B head `[d_out, r]`.
    pub r: usize,
    /// `lora_alpha`: the adapter's output is scaled by [`AdapterConfig::scale`].
    pub alpha: f32,
    /// Dropout on the input of A while training (PEFT's `lora_dropout`).
    pub dropout: f32,
    /// The adapted linear layers, by Hugging Face module name (a subset of [`TARGET_MODULES`]),
    /// in every decoder layer.
    pub targets: Vec<String>,
    /// N, the number of B heads (1 for LoRA).
    pub experts: usize,
    /// Scale by alpha / sqrt(r) instead of alpha / r.
    pub rslora: bool,
    /// Route each token to its k best heads only (off: dense routing, as the paper).
    pub top_k: Option<usize>,
    /// Coefficient of the load-balancing loss (0: off, as the paper).
    pub balance_coef: f32,
}

impl AdapterConfig {
    /// LoRA of rank `r` on `targets`; no dropout, no rsLoRA (validated by [`attach`]).
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

    /// HydraLoRA of rank `r` with `experts` B heads on `targets`, dense routing, no balance loss.
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

    /// Checks the settings: r in 1..=65536, 1..=4096 heads (exactly 1 for LoRA), targets
    /// non-empty and all in [`TARGET_MODULES`], dropout in [0, 1), top_k in 1..=heads. The
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
                    "{} B heads is beyond any model (at most 4096)",
                    self.experts
                ),
            ));
        }
        if self.experts == 0 {
            return Err(field(
                "lora_nums",
                "a HydraLoRA adapter needs at least one B head (N >= 1)".into(),
            ));
        }
        if self.method == Method::Lora && self.experts != 1 {
            return Err(field(
                "lora_nums",
                format!("LoRA has one B head, got {}", self.experts),
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
                        "must be in 1..={} (the number of heads), got {k}",
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
        let lora_nums = v
            .get("lora_nums")
            .map(|n| {
                n.as_u64()
                    .ok_or_else(|| field("lora_nums", "must be a non-negative integer"))
            })
            .transpose()?;
        let cfg = AdapterConfig {
            method: if lora_nums.is_some() {
                Method::Hydra
            } else {
                Method::Lora
            },
            r,
            alpha,
            dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
            targets,
            experts: lora_nums.unwrap_or(1) as usize,
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

    /// The `adapter_config.json` PEFT reads (plus `lora_nums` for HydraLoRA).
    pub fn to_json(&self) -> Value {
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
            "base_model_name_or_path": null,
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

/// The file key prefix of an adapted module, e.g. `base_model.model.model.layers.0.mlp.up_proj`.
pub fn module_key(layer: usize, module: &str) -> String {
    format!("base_model.model.{}", Layer::module_path(layer, module))
}

/// Adds a fresh adapter to every target module: A and the router Kaiming-uniform (bound
/// 1/sqrt(d_in), as PEFT and the HydraLoRA code), every B zero, so the model is unchanged.
/// An adapter already on a targeted layer is replaced (attach to a freshly loaded model).
/// Fails with [`ModelError::Config`] when `cfg` is invalid ([`AdapterConfig::validate`]).
///
/// ```no_run
/// use hydralora_model::adapter::{attach, trainable_count};
/// use hydralora_model::{engine::Device, AdapterConfig, Llama};
/// # fn main() -> hydralora_model::Result<()> {
/// let device = Device::new()?;
/// let mut model = Llama::load(&device, "models/TinyLlama-1.1B")?;
/// attach(&mut model, &AdapterConfig::lora(8, 16.0, &["q_proj", "v_proj"]), 0)?;
/// // Per layer and module: A [r, d_in] + B [d_out, r].
/// println!("{} trainable parameters", trainable_count(&model));
/// # Ok(()) }
/// ```
pub fn attach(model: &mut Llama, cfg: &AdapterConfig, seed: u64) -> Result<()> {
    cfg.validate()?;
    let device = model.device().clone();
    let mut rng = Rng::new(seed);
    let dropout_seed = Arc::new(std::sync::atomic::AtomicU64::new(seed));
    for (l, layer) in model.layers.iter_mut().enumerate() {
        for (m, module) in cfg.targets.iter().enumerate() {
            let linear = layer.linear_mut(module).expect("targets were validated");
            let (d_in, d_out) = (linear.d_in(), linear.d_out());
            let bound = 1.0 / (d_in as f32).sqrt();
            let mut uniform = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| bound * (2.0 * rng.next_f32() - 1.0))
                    .collect()
            };
            // A's rows, then the router's (drawn in that order, so LoRA and HydraLoRA
            // start from the same A for a given seed).
            let router_rows = match cfg.method {
                Method::Hydra => cfg.experts,
                Method::Lora => 0,
            };
            let rows = cfg.r + router_rows;
            let down = Tensor::from_slice(&device, &uniform(rows * d_in), &[rows, d_in])?;
            let b = Tensor::zeros(&device, &[d_out, cfg.experts * cfg.r])?;
            let dropout = Dropout {
                p: cfg.dropout,
                seed: dropout_seed.clone(),
                salt: (l * TARGET_MODULES.len() + m) as u64,
            };
            linear.adapter = Some(new_adapter(cfg, down.into_param(), b.into_param(), dropout));
        }
    }
    model.adapter = Some(cfg.clone());
    Ok(())
}

fn new_adapter(cfg: &AdapterConfig, down: Tensor, b: Tensor, dropout: Dropout) -> Adapter {
    Adapter {
        down,
        b,
        rank: cfg.r,
        routed: cfg.method == Method::Hydra,
        scale: cfg.scale(),
        top_k: cfg.top_k,
        last_gates: Arc::new(Mutex::new(None)),
        record_gates: false,
        dropout,
    }
}

/// One adapter tensor as it is stored in the file: its key, shape and where it lives.
pub struct AdapterTensor<'a> {
    /// The key in `adapter_model.safetensors`, e.g.
    /// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
    pub key: String,
    /// The stored shape (a B head: `[d_out, r]`).
    pub shape: Vec<usize>,
    /// The parameter holding it (B heads are columns of the stacked B; A and the router
    /// are rows of the down-projection).
    pub param: &'a Tensor,
    /// Which part of `param` it is: all of it, some columns (a B head) or some rows (A, the
    /// router).
    pub part: Part,
}

/// Where a stored tensor sits in its parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The whole parameter.
    All,
    /// Columns `start..start + len` (a B head of the stacked B).
    Columns(usize, usize),
    /// Rows `start..start + len` (A or the router, of the down-projection).
    Rows(usize, usize),
}

/// Every adapter tensor of the model with its file key, in model order.
pub fn adapter_tensors(model: &Llama) -> Vec<AdapterTensor<'_>> {
    let Some(cfg) = &model.adapter else {
        return vec![];
    };
    let mut out = Vec::new();
    for (l, layer) in model.layers.iter().enumerate() {
        for module in &cfg.targets {
            let Some(ad) = layer.linear(module).and_then(|lin| lin.adapter.as_ref()) else {
                continue;
            };
            let key = module_key(l, module);
            let (r, d_in, d_out) = (ad.rank(), ad.down.dim(1), ad.b.dim(0));
            out.push(AdapterTensor {
                key: format!("{key}.lora_A.weight"),
                shape: vec![r, d_in],
                param: &ad.down,
                part: if ad.routed {
                    Part::Rows(0, r)
                } else {
                    Part::All
                },
            });
            match cfg.method {
                Method::Lora => out.push(AdapterTensor {
                    key: format!("{key}.lora_B.weight"),
                    shape: ad.b.shape().to_vec(),
                    param: &ad.b,
                    part: Part::All,
                }),
                Method::Hydra => {
                    for i in 0..cfg.experts {
                        out.push(AdapterTensor {
                            key: format!("{key}.lora_B{i}.weight"),
                            shape: vec![d_out, r],
                            param: &ad.b,
                            part: Part::Columns(i * r, r),
                        });
                    }
                    out.push(AdapterTensor {
                        key: format!("{key}.lora_route.weight"),
                        shape: vec![ad.heads(), d_in],
                        param: &ad.down,
                        part: Part::Rows(r, ad.heads()),
                    });
                }
            }
        }
    }
    out
}

/// The trainable tensors (what the optimizer updates), in model order.
pub fn trainable_params(model: &Llama) -> Vec<Tensor> {
    model
        .layers
        .iter()
        .flat_map(|layer| {
            TARGET_MODULES
                .iter()
                .filter_map(move |m| layer.linear(m)?.adapter.as_ref())
        })
        .flat_map(|ad| ad.params().into_iter().cloned())
        .collect()
}

/// Number of trainable scalars.
pub fn trainable_count(model: &Llama) -> usize {
    trainable_params(model).iter().map(Tensor::numel).sum()
}

/// The values of `t` (a stored adapter tensor) read from `source` (the parameter or its
/// gradient, the parameter's shape), on the host.
pub fn read_adapter_tensor(t: &AdapterTensor, source: &Tensor) -> Result<Vec<f32>> {
    let host = source.to_vec_f32()?;
    let width = source.dim(1);
    Ok(match t.part {
        Part::All => host,
        Part::Columns(start, len) => host
            .chunks(width)
            .flat_map(|row| row[start..start + len].to_vec())
            .collect(),
        Part::Rows(start, len) => host[start * width..(start + len) * width].to_vec(),
    })
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if
/// needed), each atomically. Fails when the model has no adapter.
///
/// ```no_run
/// use std::path::Path;
/// use hydralora_model::adapter::{attach, load_adapter, save_adapter};
/// use hydralora_model::{engine::Device, AdapterConfig, Llama};
/// # fn main() -> hydralora_model::Result<()> {
/// let device = Device::new()?;
/// let mut model = Llama::load(&device, "models/TinyLlama-1.1B")?;
/// let cfg = AdapterConfig::hydra(8, 16.0, 3, &["q_proj", "v_proj"]);
/// attach(&mut model, &cfg, 0)?;
/// save_adapter(&model, Path::new("runs/adapter"))?;
///
/// let mut fresh = Llama::load(&device, "models/TinyLlama-1.1B")?;
/// assert_eq!(load_adapter(&mut fresh, Path::new("runs/adapter"))?, cfg);
/// # Ok(()) }
/// ```
pub fn save_adapter(model: &Llama, dir: &Path) -> Result<()> {
    let cfg = model
        .adapter
        .as_ref()
        .ok_or_else(|| ModelError::Input("the model has no adapter to save".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io("create", dir, e))?;
    let tensors = adapter_tensors(model);
    let values: Vec<Vec<f32>> = tensors
        .iter()
        .map(|t| read_adapter_tensor(t, t.param))
        .collect::<Result<_>>()?;
    let entries: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .zip(&values)
        .map(|(t, v)| (t.key.clone(), t.shape.clone(), v.as_slice()))
        .collect();
    write_safetensors(
        dir.join(ADAPTER_WEIGHTS_FILE),
        &entries,
        &[("format", "pt")],
    )?;
    let json = serde_json::to_string_pretty(&cfg.to_json()).expect("a JSON value serialises");
    write_atomically(dir.join(ADAPTER_CONFIG_FILE), |out| {
        std::io::Write::write_all(out, json.as_bytes())
    })
}

/// Loads an adapter folder (PEFT LoRA or HydraLoRA) onto the model. Every tensor the config
/// implies must be in the file with the right shape, and nothing else may be; errors name
/// the module, the tensor and both shapes.
pub fn load_adapter(model: &mut Llama, dir: &Path) -> Result<AdapterConfig> {
    let cfg = AdapterConfig::from_file(&dir.join(ADAPTER_CONFIG_FILE))?;
    let file = WeightFile::open(dir.join(ADAPTER_WEIGHTS_FILE))?;
    attach(model, &cfg, 0)?;
    let mut expected = std::collections::HashSet::new();
    // Gather each parameter's full value from its stored pieces, then upload once.
    let mut staged: Vec<(Tensor, Vec<f32>)> = Vec::new();
    for t in adapter_tensors(model) {
        let values = file.expect_f32(&t.key, &t.shape).map_err(|e| match e {
            ModelError::MissingTensor { tensor, file, .. } => ModelError::MissingTensor {
                tensor,
                file,
                expected: Some(t.shape.clone()),
            },
            other => other,
        })?;
        expected.insert(t.key.clone());
        let slot = match staged.iter().position(|(p, _)| p.id() == t.param.id()) {
            Some(i) => i,
            None => {
                staged.push((t.param.clone(), vec![0.0; t.param.numel()]));
                staged.len() - 1
            }
        };
        let full = &mut staged[slot].1;
        let width = t.param.dim(1);
        match t.part {
            Part::All => full.copy_from_slice(&values),
            Part::Columns(start, len) => {
                for (row, chunk) in values.chunks(len).enumerate() {
                    full[row * width + start..row * width + start + len].copy_from_slice(chunk);
                }
            }
            Part::Rows(start, len) => {
                full[start * width..(start + len) * width].copy_from_slice(&values)
            }
        }
    }
    if let Some(extra) = file.names().into_iter().find(|n| !expected.contains(*n)) {
        return Err(ModelError::UnexpectedTensor {
            tensor: extra.to_string(),
            file: file.path().to_path_buf(),
            shape: file.shape(extra).unwrap_or_default().to_vec(),
        });
    }
    no_grad(|| {
        staged
            .iter()
            .try_for_each(|(param, values)| param.write_f32(values))
    })?;
    Ok(cfg)
}

/// Mean gate weight of each head and the mean routing entropy (nats) of one module's router,
/// over the tokens of its last forward.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterStats {
    /// The decoder layer.
    pub layer: usize,
    /// The adapted module, e.g. `q_proj`.
    pub module: String,
    /// Mean gate weight of each head over the tokens, `[N]` (sums to 1).
    pub mean_gate: Vec<f32>, // [N]
    /// Mean entropy of the per-token gate distribution, in nats (ln N when uniform).
    pub entropy: f32,
}

/// Turns on (or off) the recording of gates in every router, for [`router_stats`] and the
/// load-balancing loss.
pub fn record_gates(model: &mut Llama, on: bool) {
    for layer in &mut model.layers {
        for m in TARGET_MODULES {
            if let Some(ad) = layer.linear_mut(m).and_then(|l| l.adapter.as_mut()) {
                ad.record_gates = on;
            }
        }
    }
}

/// The gates each router recorded in the last forward, with their layer and module.
pub fn recorded_gates(model: &Llama) -> Vec<(usize, &'static str, Tensor)> {
    let mut out = Vec::new();
    for (l, layer) in model.layers.iter().enumerate() {
        for m in TARGET_MODULES {
            if let Some(g) = layer
                .linear(m)
                .and_then(|lin| lin.adapter.as_ref())
                .and_then(|ad| {
                    ad.last_gates
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                })
            {
                out.push((l, m, g));
            }
        }
    }
    out
}

/// Router statistics of the last forward (needs [`record_gates`] on), with one readback for
/// every router together.
pub fn router_stats(model: &Llama) -> Result<Vec<RouterStats>> {
    let gates = recorded_gates(model);
    if gates.is_empty() {
        return Ok(Vec::new());
    }
    let all = hydralora_engine::no_grad(|| {
        let flat: Vec<Tensor> = gates
            .iter()
            .map(|(_, _, g)| g.reshape(&[g.numel()]))
            .collect::<std::result::Result<_, _>>()?;
        Tensor::concat(&flat, 0)
    })?
    .to_vec_f32()?;
    let mut offset = 0;
    gates
        .into_iter()
        .map(|(layer, module, g)| {
            let (t, n) = (g.dim(0), g.dim(1));
            let host = &all[offset..offset + t * n];
            offset += t * n;
            let mut mean_gate = vec![0.0f64; n];
            let mut entropy = 0.0f64;
            for row in host.chunks(n) {
                for (i, &p) in row.iter().enumerate() {
                    mean_gate[i] += p as f64;
                    if p > 0.0 {
                        entropy -= p as f64 * (p as f64).ln();
                    }
                }
            }
            let t = t.max(1) as f64;
            Ok(RouterStats {
                layer,
                module: module.to_string(),
                mean_gate: mean_gate.iter().map(|m| (m / t) as f32).collect(),
                entropy: (entropy / t) as f32,
            })
        })
        .collect()
}

/// The load-balancing loss over the recorded gates: coef * sum over routers of
/// N * sum_i (mean_t g[t, i])^2, smallest (= coef per router) when every head gets an equal
/// share. A `[1]` tensor in the graph; None when no router recorded gates.
pub fn balance_loss(model: &Llama, coef: f32) -> Result<Option<Tensor>> {
    let mut total: Option<Tensor> = None;
    for (_, _, g) in recorded_gates(model) {
        let n = g.dim(1) as f32;
        let share = g.mean(0)?; // [N]
        let term = share.mul(&share)?.sum_all()?.scale(n * coef)?;
        total = Some(match total {
            Some(t) => t.add(&term)?,
            None => term,
        });
    }
    Ok(total)
}

/// Mean gate weight of each head per category, averaged over every router of the model:
/// one row per category of `groups` (name, its token ids), one column per head.
pub fn gates_by_category(
    model: &mut Llama,
    groups: &[(String, Vec<Vec<u32>>)],
) -> Result<Vec<Vec<f32>>> {
    record_gates(model, true);
    let mut rows = Vec::with_capacity(groups.len());
    for (_, sequences) in groups {
        let mut sum: Vec<f64> = Vec::new();
        let mut n = 0usize;
        for ids in sequences {
            no_grad(|| model.forward(ids, 1, None))?;
            for s in router_stats(model)? {
                sum.resize(s.mean_gate.len(), 0.0);
                for (acc, g) in sum.iter_mut().zip(&s.mean_gate) {
                    *acc += *g as f64;
                }
                n += 1;
            }
        }
        rows.push(sum.iter().map(|s| (s / n.max(1) as f64) as f32).collect());
    }
    record_gates(model, false);
    Ok(rows)
}

/// Sets the seed of every adapter's dropout masks (the trainer does, per micro-batch).
pub fn set_dropout_seed(model: &Llama, seed: u64) {
    for layer in &model.layers {
        for m in TARGET_MODULES {
            if let Some(ad) = layer.linear(m).and_then(|l| l.adapter.as_ref()) {
                ad.dropout
                    .seed
                    .store(seed, std::sync::atomic::Ordering::Relaxed);
                return; // one seed, shared by all
            }
        }
    }
}
