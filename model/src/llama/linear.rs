//! A frozen linear layer, `y = x W^T`, that may carry an adapter.

use hydralora_engine::{matmul_half_inputs, Result, Tensor};

use crate::adapter::Adapter;

/// y = x W^T (+ the adapter), with W frozen.
#[derive(Clone, Debug)]
pub struct Linear {
    /// W, `[d_out, d_in]` (f32, or f16 once stored so by [`crate::Llama::store_frozen_weights_f16`]).
    pub weight: Tensor, // [d_out, d_in]
    /// The attached adapter, if any.
    pub adapter: Option<Adapter>,
    /// `--precision mixed`: the input of the frozen product is rounded to f16 first, as a
    /// half-precision matmul takes it (the adapter still sees the f32 input).
    pub half_inputs: bool,
}

impl Linear {
    /// A layer with weight `[d_out, d_in]` and no adapter.
    pub fn new(weight: Tensor) -> Self {
        Linear {
            weight,
            adapter: None,
            half_inputs: false,
        }
    }

    /// Input features (columns of W).
    pub fn d_in(&self) -> usize {
        self.weight.dim(1)
    }

    /// Output features (rows of W).
    pub fn d_out(&self) -> usize {
        self.weight.dim(0)
    }

    /// x: [T, d_in] -> [T, d_out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match self.half_inputs {
            true => matmul_half_inputs(x, &self.weight, false, true)?,
            false => x.matmul_nt(&self.weight)?,
        }; // [T, d_out]
        match &self.adapter {
            Some(adapter) => adapter.add_to(y, x),
            None => Ok(y),
        }
    }
}
