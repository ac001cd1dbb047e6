//! AdamW with PyTorch semantics, one fused kernel per parameter tensor, in place.

use std::collections::HashMap;

use crate::backward::{no_grad, Gradients};
use crate::error::{Error, Result};
use crate::ops::grid;
use crate::ops::kernel_params::kernel_params;
use crate::shaders;
use crate::tensor::{Tensor, TensorId};

kernel_params! {
    /// The AdamW kernel's params: one step's settings and bias corrections.
    pub(crate) struct AdamParams for [shaders::ADAMW] {
        numel: u32,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        bias_correction1: f32,      // 1 - beta1^t
        bias_correction2_sqrt: f32, // sqrt(1 - beta2^t)
    }
}

/// AdamW settings (PyTorch's defaults except the learning rate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate used by [`AdamW::step`] ([`AdamW::step_with_lr`] takes its own).
    pub lr: f32,
    /// Decay of the first moment (mean of gradients).
    pub beta1: f32,
    /// Decay of the second moment (mean of squared gradients).
    pub beta2: f32,
    /// Added to the square root of the bias-corrected second moment.
    pub eps: f32,
    /// Decoupled weight decay: each step multiplies a parameter by `1 - lr * weight_decay`.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The optimizer and its per-parameter moments (keyed by parameter id, so keep updating the
/// same parameter tensors).
///
/// ```no_run
/// use hydralora_engine::{AdamW, AdamWConfig, Device, Tensor};
/// # fn main() -> hydralora_engine::Result<()> {
/// let dev = Device::new()?;
/// let w = Tensor::from_slice(&dev, &[1.0, -1.0], &[2])?.into_param();
/// let mut opt = AdamW::new(AdamWConfig { lr: 0.1, ..AdamWConfig::default() });
/// for _ in 0..10 {
///     let loss = w.mul(&w)?.sum_all()?; // |w|^2, smallest at w = 0
///     let grads = loss.backward()?;
///     opt.step(&[w.clone()], &grads)?; // updates w in place
/// }
/// assert!(w.to_vec_f32()?.iter().all(|x| x.abs() < 1.0));
/// # Ok(()) }
/// ```
pub struct AdamW {
    /// The settings; changes apply from the next step.
    pub config: AdamWConfig,
    step: u64,
    moments: HashMap<TensorId, (Tensor, Tensor)>, // param id -> (m, v), each the param's shape
}

impl AdamW {
    /// An optimizer at step 0; moments are created (zeros) at a parameter's first update.
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            moments: HashMap::new(),
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update of every parameter that has a gradient, with learning rate `lr`
    /// (a schedule's value for this step), in place and unrecorded. Parameters without a
    /// gradient are left alone; the step count advances either way. Errors:
    /// [`Error::ShapeMismatch`] when a gradient's shape is not its parameter's.
    pub fn step_with_lr(&mut self, params: &[Tensor], grads: &Gradients, lr: f32) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - (c.beta1 as f64).powi(t);
        let bias_correction2_sqrt = (1.0 - (c.beta2 as f64).powi(t)).sqrt();
        no_grad(|| {
            for p in params {
                let Some(g) = grads.get(p) else { continue };
                p.expect_same_device("adamw", g)?;
                p.expect_bindable("adamw")?;
                if g.shape() != p.shape() {
                    return Err(Error::ShapeMismatch {
                        op: "adamw",
                        lhs: p.shape().to_vec(),
                        rhs: g.shape().to_vec(),
                        why: "gradient and parameter differ".into(),
                    });
                }
                let (m, v) = match self.moments.get(&p.id()) {
                    Some(mv) => mv.clone(),
                    None => {
                        let mv = (
                            Tensor::zeros(p.device(), p.shape())?,
                            Tensor::zeros(p.device(), p.shape())?,
                        );
                        self.moments.insert(p.id(), mv.clone());
                        mv
                    }
                };
                let params = AdamParams {
                    numel: p.numel() as u32,
                    lr,
                    beta1: c.beta1,
                    beta2: c.beta2,
                    eps: c.eps,
                    weight_decay: c.weight_decay,
                    bias_correction1: bias_correction1 as f32,
                    bias_correction2_sqrt: bias_correction2_sqrt as f32,
                };
                p.device().dispatch(
                    &shaders::ADAMW,
                    "adamw",
                    &params,
                    &[g.binding()],
                    &[p.binding(), m.binding(), v.binding()],
                    grid(p.device(), p.numel(), 256),
                );
            }
            Ok(())
        })
    }

    /// [`AdamW::step_with_lr`] at the configured learning rate.
    pub fn step(&mut self, params: &[Tensor], grads: &Gradients) -> Result<()> {
        self.step_with_lr(params, grads, self.config.lr)
    }

    /// The moments (m, v) of a parameter, for checkpoints.
    pub fn moments(&self, param: &Tensor) -> Option<&(Tensor, Tensor)> {
        self.moments.get(&param.id())
    }

    /// Restores the step count and moments (from a checkpoint).
    pub fn restore(&mut self, step: u64, moments: Vec<(&Tensor, Tensor, Tensor)>) {
        self.step = step;
        for (p, m, v) in moments {
            self.moments.insert(p.id(), (m, v));
        }
    }
}
