//! Gradient checking: autodiff gradients against central finite differences, for any
//! function of f32 tensors (built-in ops or your own, see [`crate::custom`]).
//!
//! The function's output is reduced to the scalar `L = sum(f(x) * w)` with fixed random
//! weights `w`, so every output element matters. For each checked coordinate,
//! `(L(x + eps) - L(x - eps)) / (2 eps)` is compared with the autodiff gradient.
//!
//! ```no_run
//! use hydralora_engine::{gradcheck::{gradcheck, GradcheckOptions}, Device, Tensor};
//! # fn main() -> hydralora_engine::Result<()> {
//! let dev = Device::new()?;
//! let x = Tensor::rand_uniform(&dev, &[2, 5], -1.0, 1.0, 1)?;
//! let report = gradcheck(|xs| xs[0].silu()?.softmax(), &[x], &GradcheckOptions::default())?;
//! assert!(report.passed(), "{report}");
//! # Ok(()) }
//! ```

use crate::backward::no_grad;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// Step and tolerances; a coordinate passes when |autodiff - numeric| <= atol + rtol |numeric|.
#[derive(Clone, Debug)]
pub struct GradcheckOptions {
    /// The finite-difference step added to and taken from each checked coordinate.
    pub eps: f32,
    /// Absolute tolerance.
    pub atol: f32,
    /// Tolerance relative to |numeric|.
    pub rtol: f32,
    /// At most this many coordinates of each input are checked (chosen at random).
    pub max_checks_per_input: usize,
    /// Seeds the projection weights and the choice of coordinates.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    /// Tolerances that f32 arithmetic with a 1e-3 step meets for well-scaled functions.
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-3,
            atol: 1e-2,
            rtol: 1e-2,
            max_checks_per_input: 64,
            seed: 0,
        }
    }
}

/// One coordinate where the two gradients disagree.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// Which input (index into `inputs`).
    pub input: usize,
    /// The flat (row-major) index of the coordinate in that input.
    pub index: usize,
    /// The gradient from [`Tensor::backward`].
    pub autodiff: f32,
    /// The central finite difference.
    pub numeric: f32,
}

/// What was compared and how far apart the two gradients were.
#[derive(Clone, Debug, Default)]
pub struct GradcheckReport {
    /// Coordinates compared, over all inputs.
    pub checked: usize,
    /// The largest |autodiff - numeric| seen.
    pub max_abs_error: f32,
    /// Every coordinate outside the tolerance (NaN included).
    pub mismatches: Vec<Mismatch>,
}

impl GradcheckReport {
    /// Whether every checked coordinate was within the tolerance.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl std::fmt::Display for GradcheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} coordinates checked, max |error| {:.3e}, {} mismatches",
            self.checked,
            self.max_abs_error,
            self.mismatches.len()
        )?;
        for m in self.mismatches.iter().take(8) {
            write!(
                f,
                "\n  input {} [{}]: autodiff {:.6e}, numeric {:.6e}",
                m.input, m.index, m.autodiff, m.numeric
            )?;
        }
        Ok(())
    }
}

/// Checks the gradients of `f` at `inputs` (f32 tensors; they are copied, never changed).
/// Costs two evaluations of `f` per checked coordinate. Fails with [`Error::DType`] for a
/// non-f32 input and [`Error::InvalidArgument`] when `inputs` is empty; a gradient mismatch
/// is not an error but a [`GradcheckReport::mismatches`] entry.
///
/// ```no_run
/// use hydralora_engine::gradcheck::{gradcheck, GradcheckOptions};
/// use hydralora_engine::{Device, Tensor};
/// # fn main() -> hydralora_engine::Result<()> {
/// let dev = Device::new()?;
/// let a = Tensor::rand_uniform(&dev, &[3, 4], -1.0, 1.0, 1)?;
/// let b = Tensor::rand_uniform(&dev, &[4, 2], -1.0, 1.0, 2)?;
/// let report = gradcheck(|xs| xs[0].matmul(&xs[1]), &[a, b], &GradcheckOptions::default())?;
/// assert!(report.passed(), "{report}");
/// # Ok(()) }
/// ```
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: &GradcheckOptions,
) -> Result<GradcheckReport> {
    let host: Vec<Vec<f32>> = inputs
        .iter()
        .map(|t| {
            t.expect_dtype("gradcheck", DType::F32, "f32 inputs")?;
            t.to_vec_f32()
        })
        .collect::<Result<_>>()?;
    let device = inputs
        .first()
        .map(|t| t.device().clone())
        .ok_or(Error::InvalidArgument {
            op: "gradcheck",
            shape: vec![],
            why: "no inputs".into(),
        })?;
    let upload = |values: &[Vec<f32>]| -> Result<Vec<Tensor>> {
        values
            .iter()
            .zip(inputs)
            .map(|(v, t)| Tensor::from_slice(&device, v, t.shape()))
            .collect()
    };
    // The projection that turns f's output into a scalar.
    let probe = no_grad(|| f(&upload(&host)?))?;
    let weights = Tensor::rand_uniform(&device, probe.shape(), 0.5, 1.5, opts.seed ^ 0x5eed)?;
    let loss = |xs: &[Tensor]| -> Result<Tensor> { f(xs)?.mul(&weights)?.sum_all() };

    let params: Vec<Tensor> = upload(&host)?.into_iter().map(Tensor::into_param).collect();
    let grads = loss(&params)?.backward()?;
    let mut report = GradcheckReport::default();
    let mut rng = Rng::new(opts.seed);
    for (i, values) in host.iter().enumerate() {
        let autodiff = match grads.get(&params[i]) {
            Some(g) => g.to_vec_f32()?,
            None => vec![0.0; values.len()], // f does not depend on this input
        };
        for index in coordinates(values.len(), opts.max_checks_per_input, &mut rng) {
            let eval = |delta: f32| -> Result<f32> {
                let mut shifted = host.clone();
                shifted[i][index] += delta;
                no_grad(|| loss(&upload(&shifted)?))?.to_scalar()
            };
            let numeric = (eval(opts.eps)? - eval(-opts.eps)?) / (2.0 * opts.eps);
            let err = (autodiff[index] - numeric).abs();
            report.checked += 1;
            report.max_abs_error = report.max_abs_error.max(err);
            if err.is_nan() || err > opts.atol + opts.rtol * numeric.abs() {
                report.mismatches.push(Mismatch {
                    input: i,
                    index,
                    autodiff: autodiff[index],
                    numeric,
                });
            }
        }
    }
    Ok(report)
}

/// All indices when there are few, else `max` distinct random ones.
fn coordinates(len: usize, max: usize, rng: &mut Rng) -> Vec<usize> {
    if len <= max {
        return (0..len).collect();
    }
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < max {
        picked.insert(rng.below(len as u64) as usize);
    }
    picked.into_iter().collect()
}
