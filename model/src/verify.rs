//! Checks against reference fixtures made by Hugging Face `transformers` (+ `peft`): the
//! logic behind `hydralora verify` and the parity tests. A fixtures folder holds case
//! folders, each a model folder with an `expected.safetensors` (see `../shared/fixtures`).

use std::path::{Path, PathBuf};

use hydralora_engine::Device;

use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::weights::WeightFile;

/// The environment variable naming another fixtures folder of the same layout.
pub const FIXTURES_ENV: &str = "HYDRALORA_FIXTURES";

/// One comparison with the reference: the error measured and the tolerance it must meet.
#[derive(Clone, Debug)]
pub struct Check {
    pub case: String,
    pub name: String,
    pub error: f64,
    pub tolerance: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance // false for NaN
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed() { "pass" } else { "FAIL" };
        write!(f, "{:<14} {:<44} {:>11.3e} {:>11.3e}  {verdict}", self.case, self.name, self.error, self.tolerance)
    }
}

/// `$HYDRALORA_FIXTURES` if set, else `default`.
pub fn fixtures_root(default: impl AsRef<Path>) -> PathBuf {
    std::env::var_os(FIXTURES_ENV).map(PathBuf::from).unwrap_or_else(|| default.as_ref().to_path_buf())
}

/// Every case folder under `root` (a folder with `config.json` and `expected.safetensors`),
/// sorted by name. An empty or missing folder is an error: a check that checks nothing
/// must not pass.
pub fn find_cases(root: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(root).map_err(|e| ModelError::io("read the fixtures folder", root, e))?;
    let mut cases: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file() && p.join("expected.safetensors").is_file())
        .collect();
    cases.sort();
    if cases.is_empty() {
        return Err(ModelError::Input(format!("no fixture cases (folders with config.json and expected.safetensors) in `{}`", root.display())));
    }
    Ok(cases)
}

/// The fixtures' tolerance for logits and loss: max |a - b| <= 1e-4 max(1, max |b|).
pub fn value_tolerance(reference: &[f32]) -> f64 {
    1e-4 * reference.iter().fold(1.0f64, |m, &x| m.max((x as f64).abs()))
}

/// max |a - b| (infinite when a NaN appears or the lengths differ).
pub fn max_abs_error(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).map(|(&x, &y)| ((x as f64) - (y as f64)).abs()).fold(0.0, |m, d| if d.is_nan() || m.is_nan() { f64::NAN } else { m.max(d) })
}

/// ||a - b|| / ||b|| (the fixtures' gradient measure).
pub fn relative_l2_error(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let diff: f64 = a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// The inputs of a case: token ids [B, T] and labels [B, T].
pub struct CaseInputs {
    pub ids: Vec<u32>,
    pub labels: Vec<i32>,
    pub batch: usize,
    pub seq: usize,
}

pub fn case_name(case: &Path) -> String {
    case.file_name().map_or_else(|| case.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Reads `input_ids` and `labels` from a case's `expected.safetensors`.
pub fn case_inputs(case: &Path) -> Result<CaseInputs> {
    let expected = WeightFile::open(case.join("expected.safetensors"))?;
    let (shape, ids) = expected.read_i32("input_ids")?;
    let (_, labels) = expected.read_i32("labels")?;
    if shape.len() != 2 || labels.len() != ids.len() {
        return Err(ModelError::Input(format!("`{}`: input_ids must be [B, T] and labels the same shape", case.display())));
    }
    let ids = ids.iter().map(|&i| u32::try_from(i).map_err(|_| ModelError::Input(format!("negative token id {i}")))).collect::<Result<_>>()?;
    Ok(CaseInputs { ids, labels, batch: shape[0], seq: shape[1] })
}

/// The base model's logits and loss against the case's `expected.safetensors`.
pub fn check_base_model(device: &Device, case: &Path) -> Result<Vec<Check>> {
    let name = case_name(case);
    let model = Llama::load(device, case)?;
    let inputs = case_inputs(case)?;
    let expected = WeightFile::open(case.join("expected.safetensors"))?;
    let (logits, loss) = hydralora_engine::no_grad(|| -> Result<_> {
        let logits = model.forward(&inputs.ids, inputs.batch, None)?;
        let loss = model.causal_lm_loss(&logits, &inputs.labels)?;
        Ok((logits.to_vec_f32()?, loss.to_vec_f32()?))
    })?;
    Ok(vec![value_check(&name, "base logits", &logits, &expected.read_f32("logits")?.1), value_check(&name, "base loss", &loss, &expected.read_f32("loss")?.1)])
}

/// A logits- or loss-style check (max abs error within the value tolerance).
pub fn value_check(case: &str, name: &str, got: &[f32], reference: &[f32]) -> Check {
    Check { case: case.into(), name: name.into(), error: max_abs_error(got, reference), tolerance: value_tolerance(reference) }
}
