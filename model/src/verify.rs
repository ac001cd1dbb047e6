//! Checks against reference fixtures made by Hugging Face `transformers` (+ `peft`): the
//! logic behind `hydralora verify` and the parity tests. A fixtures folder holds case
//! folders, each a model folder with an `expected.safetensors` (see `../shared/fixtures`), or
//! a `model.gguf` with one (see `../shared/fixtures-gguf`).

use std::path::{Path, PathBuf};

use hydralora_engine::{DType, Device};

use crate::error::{ModelError, Result};
use crate::llama::gguf::{GgufFile, GGUF_FILE};
use crate::llama::precision::Precision;
use crate::llama::weights::WeightFile;
use crate::llama::Llama;

/// The environment variable naming another fixtures folder of the same layout.
pub const FIXTURES_ENV: &str = "HYDRALORA_FIXTURES";
/// The environment variable naming another folder of GGUF fixtures (the layout of
/// `../shared/fixtures-gguf`).
pub const GGUF_FIXTURES_ENV: &str = "HYDRALORA_GGUF_FIXTURES";

/// How far llama.cpp's own CPU logits (`logits_llamacpp`) may be from ours, relative to
/// max(1, max |logit|), for a GGUF of float tensors: llama.cpp keeps its KV cache in f16
/// (the fixtures README measures 4e-4).
pub const LLAMACPP_FLOAT_TOLERANCE: f64 = 1e-3;
/// The same for a quantized GGUF: llama.cpp also quantizes the activations to 8 bits in its
/// quantized dot products (the README measures up to 2.3e-2).
pub const LLAMACPP_QUANTIZED_TOLERANCE: f64 = 5e-2;

/// One comparison with the reference: the error measured and the tolerance it must meet.
#[derive(Clone, Debug)]
pub struct Check {
    /// The fixture case's name.
    pub case: String,
    /// What was compared, e.g. `base loss`.
    pub name: String,
    /// The measured error (max abs error or relative L2, per check).
    pub error: f64,
    /// The most error that passes.
    pub tolerance: f64,
}

impl Check {
    /// Whether the error is within the tolerance (false for NaN).
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance // false for NaN
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed() { "pass" } else { "FAIL" };
        write!(
            f,
            "{:<14} {:<44} {:>11.3e} {:>11.3e}  {verdict}",
            self.case, self.name, self.error, self.tolerance
        )
    }
}

/// `$HYDRALORA_FIXTURES` if set, else `default`.
pub fn fixtures_root(default: impl AsRef<Path>) -> PathBuf {
    std::env::var_os(FIXTURES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.as_ref().to_path_buf())
}

/// `$HYDRALORA_GGUF_FIXTURES` if set, else `default`.
pub fn gguf_fixtures_root(default: impl AsRef<Path>) -> PathBuf {
    std::env::var_os(GGUF_FIXTURES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.as_ref().to_path_buf())
}

/// Every case folder under `root` (a folder with `expected.safetensors` and a model: a
/// `config.json` and its weights, or a `model.gguf`), sorted by name. An empty or missing
/// folder is an error: a check that checks nothing must not pass.
pub fn find_cases(root: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(root).map_err(|e| ModelError::io("read the fixtures folder", root, e))?;
    let mut cases: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let has_model = p.join("config.json").is_file() || p.join(GGUF_FILE).is_file();
            has_model && p.join("expected.safetensors").is_file()
        })
        .collect();
    cases.sort();
    if cases.is_empty() {
        return Err(ModelError::Input(format!(
            "no fixture cases (folders with expected.safetensors and config.json or {GGUF_FILE}) in `{}`",
            root.display()
        )));
    }
    Ok(cases)
}

/// The fixtures' tolerance for logits and loss: max |a - b| <= 1e-4 max(1, max |b|).
pub fn value_tolerance(reference: &[f32]) -> f64 {
    1e-4 * reference
        .iter()
        .fold(1.0f64, |m, &x| m.max((x as f64).abs()))
}

/// max |a - b| (infinite when a NaN appears or the lengths differ).
pub fn max_abs_error(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| ((x as f64) - (y as f64)).abs())
        .fold(0.0, |m, d| {
            if d.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(d)
            }
        })
}

/// ||a - b|| / ||b|| (the fixtures' gradient measure).
pub fn relative_l2_error(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// The inputs of a case: token ids [B, T] and labels [B, T].
pub struct CaseInputs {
    /// Token ids, `[B, T]` row-major.
    pub ids: Vec<u32>,
    /// Labels, `[B, T]` row-major (-100: ignored).
    pub labels: Vec<i32>,
    /// B.
    pub batch: usize,
    /// T.
    pub seq: usize,
}

/// A case folder's name (its last path component).
pub fn case_name(case: &Path) -> String {
    case.file_name().map_or_else(
        || case.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Reads `input_ids` and `labels` from a case's `expected.safetensors`.
pub fn case_inputs(case: &Path) -> Result<CaseInputs> {
    let expected = WeightFile::open(case.join("expected.safetensors"))?;
    let (shape, ids) = expected.read_i32("input_ids")?;
    let (_, labels) = expected.read_i32("labels")?;
    if shape.len() != 2 || labels.len() != ids.len() {
        return Err(ModelError::Input(format!(
            "`{}`: input_ids must be [B, T] and labels the same shape",
            case.display()
        )));
    }
    let ids = ids
        .iter()
        .map(|&i| u32::try_from(i).map_err(|_| ModelError::Input(format!("negative token id {i}"))))
        .collect::<Result<_>>()?;
    Ok(CaseInputs {
        ids,
        labels,
        batch: shape[0],
        seq: shape[1],
    })
}

/// The base model's logits and loss against the case's `expected.safetensors`.
pub fn check_base_model(device: &Device, case: &Path) -> Result<Vec<Check>> {
    check_base_model_with(device, case, None)
}

/// How far `--precision mixed` may be from the float64 reference, relative (in place of
/// the fixtures' 1e-4 for f32). Mixed rounds both operands of every frozen product to f16
/// (unit roundoff u = 2^-11 = 4.9e-4), so each product term is off by up to 2u relative.
/// The fixtures' model has nine such products in series from embedding to logits (two
/// layers of q/k/v then o, gate/up then down, then lm_head): 9 × 2u = 8.8e-3, rounded up
/// to 1e-2. It bounds the logits and loss (of max(1, |reference|)), the gradients' relative
/// L2 error and each of the 10 AdamW losses alike; the measured errors sit well inside it.
pub const MIXED_TOLERANCE: f64 = 1e-2;

/// The model a check runs: the case's weights, stored and computed as `precision` asks
/// (mixed: f16 weights, f16-rounded inputs to their products).
fn load_for(device: &Device, case: &Path, precision: Precision) -> Result<Llama> {
    let mut model = match precision {
        Precision::F32 => Llama::load(device, case)?,
        Precision::Mixed => Llama::load_as(device, case, Some(DType::F16))?,
    };
    model.set_precision(precision);
    Ok(model)
}

/// Scales each check's tolerance from the fixtures' f32 ones to `precision`'s.
fn at_precision(mut checks: Vec<Check>, precision: Precision) -> Vec<Check> {
    if precision == Precision::Mixed {
        for check in &mut checks {
            check.tolerance *= match check.name.contains("AdamW") {
                true => MIXED_TOLERANCE / 5e-4,
                false => MIXED_TOLERANCE / 1e-4,
            };
        }
    }
    checks
}

/// [`check_base_model`] with the fused loss taking `loss_chunk_tokens` rows at a time
/// ([`Llama::loss_chunk_tokens`]; None: the default).
pub fn check_base_model_with(
    device: &Device,
    case: &Path,
    loss_chunk_tokens: Option<usize>,
) -> Result<Vec<Check>> {
    check_base_model_at(device, case, loss_chunk_tokens, Precision::F32)
}

/// [`check_base_model_with`] at `precision`, against [`MIXED_TOLERANCE`] for mixed.
pub fn check_base_model_at(
    device: &Device,
    case: &Path,
    loss_chunk_tokens: Option<usize>,
    precision: Precision,
) -> Result<Vec<Check>> {
    let name = case_name(case);
    let mut model = load_for(device, case, precision)?;
    model.loss_chunk_tokens = loss_chunk_tokens;
    let inputs = case_inputs(case)?;
    let expected = WeightFile::open(case.join("expected.safetensors"))?;
    let (logits, loss) = hydralora_engine::no_grad(|| -> Result<_> {
        let hidden = model.hidden_states(&inputs.ids, inputs.batch, None)?; // [B T, H]
        let logits = model.project_vocab(&hidden)?;
        let loss = model.causal_lm_loss_from_hidden(&hidden, inputs.batch, &inputs.labels)?;
        Ok((logits.to_vec_f32()?, loss.to_vec_f32()?))
    })?;
    let mut checks = vec![
        value_check(
            &name,
            "base logits",
            &logits,
            &expected.read_f32("logits")?.1,
        ),
        value_check(&name, "base loss", &loss, &expected.read_f32("loss")?.1),
    ];
    if expected.contains("logits_llamacpp") && precision == Precision::F32 {
        checks.push(llamacpp_check(case, &name, &logits, &expected)?);
    }
    Ok(at_precision(checks, precision))
}

/// Our logits against llama.cpp's own (`logits_llamacpp`) at the looser tolerance of its
/// arithmetic: [`LLAMACPP_FLOAT_TOLERANCE`] or [`LLAMACPP_QUANTIZED_TOLERANCE`] of
/// max(1, max |logit|), by the GGUF's tensor types.
fn llamacpp_check(case: &Path, name: &str, logits: &[f32], expected: &WeightFile) -> Result<Check> {
    let reference = expected.read_f32("logits_llamacpp")?.1;
    let quantized = GgufFile::open(case.join(GGUF_FILE))?
        .tensors()
        .iter()
        .any(|t| t.ggml_type.is_quantized());
    let relative = if quantized {
        LLAMACPP_QUANTIZED_TOLERANCE
    } else {
        LLAMACPP_FLOAT_TOLERANCE
    };
    Ok(Check {
        case: name.into(),
        name: "base logits vs llama.cpp".into(),
        error: max_abs_error(logits, &reference),
        tolerance: value_tolerance(&reference) * relative / 1e-4,
    })
}

/// A logits- or loss-style check (max abs error within the value tolerance).
pub fn value_check(case: &str, name: &str, got: &[f32], reference: &[f32]) -> Check {
    Check {
        case: case.into(),
        name: name.into(),
        error: max_abs_error(got, reference),
        tolerance: value_tolerance(reference),
    }
}

/// The adapter folders of a case: subfolders with `adapter_config.json` and `expected.safetensors`.
pub fn adapter_dirs(case: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(case).map_err(|e| ModelError::io("read the case folder", case, e))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.join(crate::adapter::ADAPTER_CONFIG_FILE).is_file()
                && p.join("expected.safetensors").is_file()
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The optimizer of a fixture's AdamW curve: `fixture.json`'s `adamw` when the adapter folder
/// has one, else the fixtures README's (lr 1e-2, betas 0.9/0.999, eps 1e-8, decay 0.01).
pub fn fixture_adamw(adapter_dir: &Path) -> Result<(hydralora_engine::AdamWConfig, usize)> {
    let mut cfg = hydralora_engine::AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut steps = 10;
    let path = adapter_dir.join("fixture.json");
    if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io("read", &path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::json(&path, &e))?;
        if let Some(a) = v.get("adamw") {
            let num = |k: &str, d: f32| {
                a.get(k)
                    .and_then(serde_json::Value::as_f64)
                    .map_or(d, |x| x as f32)
            };
            cfg.lr = num("lr", cfg.lr);
            cfg.eps = num("eps", cfg.eps);
            cfg.weight_decay = num("weight_decay", cfg.weight_decay);
            if let Some([b1, b2]) = a
                .get("betas")
                .and_then(|b| b.as_array())
                .map(|b| {
                    b.iter()
                        .filter_map(serde_json::Value::as_f64)
                        .collect::<Vec<_>>()
                })
                .as_deref()
            {
                (cfg.beta1, cfg.beta2) = (*b1 as f32, *b2 as f32);
            }
            steps = a
                .get("steps")
                .and_then(serde_json::Value::as_u64)
                .map_or(steps, |s| s as usize);
        }
    }
    Ok((cfg, steps))
}

/// Logits, loss, every adapter gradient and the AdamW loss curve of one adapter folder.
pub fn check_adapter(device: &Device, case: &Path, adapter_dir: &Path) -> Result<Vec<Check>> {
    check_adapter_with(device, case, adapter_dir, None)
}

/// [`check_adapter`] with the fused loss taking `loss_chunk_tokens` rows at a time
/// ([`Llama::loss_chunk_tokens`]; None: the default).
pub fn check_adapter_with(
    device: &Device,
    case: &Path,
    adapter_dir: &Path,
    loss_chunk_tokens: Option<usize>,
) -> Result<Vec<Check>> {
    check_adapter_at(device, case, adapter_dir, loss_chunk_tokens, Precision::F32)
}

/// [`check_adapter_with`] at `precision`, against [`MIXED_TOLERANCE`] for mixed.
pub fn check_adapter_at(
    device: &Device,
    case: &Path,
    adapter_dir: &Path,
    loss_chunk_tokens: Option<usize>,
    precision: Precision,
) -> Result<Vec<Check>> {
    use crate::adapter::{adapter_tensors, load_adapter, read_adapter_tensor, trainable_params};
    let name = format!("{}/{}", case_name(case), case_name(adapter_dir));
    let inputs = case_inputs(case)?;
    let expected = WeightFile::open(adapter_dir.join("expected.safetensors"))?;
    let load = || -> Result<Llama> {
        let mut model = load_for(device, case, precision)?;
        load_adapter(&mut model, adapter_dir)?;
        model.loss_chunk_tokens = loss_chunk_tokens;
        Ok(model)
    };
    let model = load()?;

    // The loss and its gradients through the fused loss, as training computes them.
    let hidden = model.hidden_states(&inputs.ids, inputs.batch, None)?; // [B T, H]
    let logits = hydralora_engine::no_grad(|| model.project_vocab(&hidden))?;
    let loss = model.causal_lm_loss_from_hidden(&hidden, inputs.batch, &inputs.labels)?;
    let mut checks = vec![
        value_check(
            &name,
            "adapter logits",
            &logits.to_vec_f32()?,
            &expected.read_f32("logits")?.1,
        ),
        value_check(
            &name,
            "adapter loss",
            &loss.to_vec_f32()?,
            &expected.read_f32("loss")?.1,
        ),
    ];
    let grads = loss.backward()?;
    let tensors = adapter_tensors(&model);
    let (mut worst, mut worst_key) = (0.0f64, String::new());
    for t in &tensors {
        // PEFT names live parameters `...lora_A.default.weight`; the HydraLoRA fixtures use the file key.
        let peft_key = format!("grad.{}", t.key.replace(".weight", ".default.weight"));
        let key = if expected.contains(&peft_key) {
            peft_key
        } else {
            format!("grad.{}", t.key)
        };
        let reference = expected.read_f32(&key)?.1;
        let got = match grads.get(t.param) {
            Some(g) => read_adapter_tensor(t, g)?,
            None => vec![0.0; reference.len()],
        };
        let err = relative_l2_error(&got, &reference);
        if err.is_nan() || err > worst {
            (worst, worst_key) = (err, t.key.clone());
        }
    }
    checks.push(Check {
        case: name.clone(),
        name: format!(
            "{} grads, worst rel-L2 ({})",
            tensors.len(),
            short_key(&worst_key)
        ),
        error: worst,
        tolerance: 1e-4,
    });

    // The AdamW curve from the adapter as loaded: the loss before each step, same batch.
    drop(grads);
    let model = load()?;
    let (adamw, steps) = fixture_adamw(adapter_dir)?;
    let params = trainable_params(&model);
    let mut opt = hydralora_engine::AdamW::new(adamw);
    let mut curve = Vec::with_capacity(steps);
    for _ in 0..steps {
        let loss = model.loss(&inputs.ids, inputs.batch, &inputs.labels)?;
        let grads = loss.backward()?;
        curve.push(loss.to_scalar()?);
        opt.step(&params, &grads)?;
    }
    let reference = expected.read_f32("adamw_losses")?.1;
    let rel = if curve.len() == reference.len() {
        curve
            .iter()
            .zip(&reference)
            .map(|(&a, &b)| ((a - b) as f64).abs() / (b as f64).abs().max(f64::MIN_POSITIVE))
            .fold(0.0, f64::max)
    } else {
        f64::INFINITY
    };
    checks.push(Check {
        case: name,
        name: format!("{steps}-step AdamW losses, max rel"),
        error: rel,
        tolerance: 5e-4,
    });
    Ok(at_precision(checks, precision))
}

/// `layers.0.mlp.up_proj.lora_A` from a full key, for narrow tables.
fn short_key(key: &str) -> String {
    key.trim_start_matches("base_model.model.model.")
        .trim_end_matches(".weight")
        .to_string()
}

/// Every check of every case under `root`: the base model, then each adapter folder.
pub fn check_all(device: &Device, root: &Path) -> Result<Vec<Check>> {
    check_all_at(device, root, Precision::F32)
}

/// [`check_all`] at `precision` (`verify --precision mixed`).
pub fn check_all_at(device: &Device, root: &Path, precision: Precision) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    for case in find_cases(root)? {
        checks.extend(check_base_model_at(device, &case, None, precision)?);
        for adapter in adapter_dirs(&case)? {
            checks.extend(check_adapter_at(device, &case, &adapter, None, precision)?);
        }
    }
    Ok(checks)
}
