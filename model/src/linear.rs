//! A frozen linear layer with an optional LoRA / HydraLoRA adapter.
//!
//! HydraLoRA, per token x (rows of `x`):
//! ```text
//! g = softmax(x Wg^T)              [T, N]    the router, dense, on the layer input
//! h = x A^T                        [T, r]    shared by every head
//! z[t, i r + j] = g[t, i] h[t, j]  [T, N r]  the gate expansion
//! y = x W0^T + scale * z Bs^T      [T, d_out], Bs = [B_0 | ... | B_{N-1}]
//! ```
//! LoRA is N = 1 with no router (z = h).

use hydralora_engine::{gate_expand, Result, Tensor};

/// The trainable part of an adapted linear layer.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub a: Tensor,              // [r, d_in]
    pub b: Tensor,              // [d_out, N r]: the N heads B_i side by side
    pub router: Option<Tensor>, // [N, d_in], None for LoRA
    pub scale: f32,             // alpha / r, or alpha / sqrt(r) with rsLoRA
}

impl Adapter {
    pub fn rank(&self) -> usize {
        self.a.dim(0)
    }

    /// Number of B heads (1 for LoRA).
    pub fn heads(&self) -> usize {
        self.router.as_ref().map_or(1, |r| r.dim(0))
    }

    /// The trainable tensors: A, the stacked B, and the router if any.
    pub fn params(&self) -> Vec<&Tensor> {
        let mut p = vec![&self.a, &self.b];
        p.extend(self.router.as_ref());
        p
    }

    /// Routing weights g = softmax(x Wg^T), [T, N]; None for LoRA.
    pub fn gates(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.router.as_ref().map(|wg| x.matmul_nt(wg)?.softmax()).transpose()
    }

    /// scale * z Bs^T for x [T, d_in]: the adapter's addition to the layer output.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.matmul_nt(&self.a)?; // [T, r]
        let z = match self.gates(x)? {
            Some(g) => gate_expand(&g, &h)?, // [T, N r]
            None => h,
        };
        z.matmul_nt(&self.b)?.scale(self.scale)
    }
}

/// y = x W^T (+ the adapter), with W frozen.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor, // [d_out, d_in]
    pub adapter: Option<Adapter>,
}

impl Linear {
    pub fn new(weight: Tensor) -> Self {
        Linear { weight, adapter: None }
    }

    pub fn d_in(&self) -> usize {
        self.weight.dim(1)
    }

    pub fn d_out(&self) -> usize {
        self.weight.dim(0)
    }

    /// x: [T, d_in] -> [T, d_out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul_nt(&self.weight)?;
        match &self.adapter {
            Some(adapter) => y.add(&adapter.forward(x)?),
            None => Ok(y),
        }
    }
}
