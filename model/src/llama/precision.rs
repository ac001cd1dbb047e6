//! The compute precision of the frozen base's products.
//!
//! `F32` (the default) computes every product in f32. `Mixed` is half-precision training as
//! tensor cores do it: the frozen weights are stored as f16 (unless a quantized format is
//! asked for), and the activations that feed their matmuls (each frozen linear layer's input
//! and the final hidden state that feeds lm_head) are rounded to f16, products accumulating in
//! f32. Adapters, router, norms' statistics, softmax, the loss, gradients and the optimizer
//! stay f32, so no loss scaling is needed: no gradient is ever rounded to f16.
//!
//! A frozen layer's product runs on the f16 cooperative-matrix kernel (tensor cores) where
//! the device has one and the product is large enough, and elsewhere as rounding
//! (`Tensor::round_half`) in front of the f32 kernels: the same numbers either way
//! (`hydralora_engine::matmul_half_inputs`). Its speed has not been measured on a GPU yet,
//! so `F32` stays the default everywhere.

use std::fmt;

use crate::error::{ModelError, Result};

/// How the frozen base's matmuls take their inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// f16 frozen weights and f16-rounded activations into their matmuls; f32 accumulation
    /// and f32 everywhere else.
    Mixed,
}

impl Precision {
    /// `f32` or `mixed`.
    pub fn parse(name: &str) -> Result<Precision> {
        match name {
            "f32" => Ok(Precision::F32),
            "mixed" => Ok(Precision::Mixed),
            other => Err(ModelError::Input(format!(
                "unknown precision {other:?}: f32 or mixed"
            ))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Mixed => "mixed",
        })
    }
}
