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

use std::sync::{Arc, Mutex};

use hydralora_engine::{gate_expand, top_k_mask, Result, Tensor};

/// The trainable part of an adapted linear layer.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub a: Tensor,              // [r, d_in]
    pub b: Tensor,              // [d_out, N r]: the N heads B_i side by side
    pub router: Option<Tensor>, // [N, d_in], None for LoRA
    pub scale: f32,             // alpha / r, or alpha / sqrt(r) with rsLoRA
    /// Route each token to its k best heads only (softmax renormalised over them).
    pub top_k: Option<usize>,
    /// The gates of the last forward ([T, N], graph included), kept when `record_gates` is
    /// set: router statistics and the load-balancing loss read them.
    pub last_gates: Arc<Mutex<Option<Tensor>>>,
    pub record_gates: bool,
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

    /// Routing weights g = softmax(x Wg^T), [T, N] (renormalised over the top k heads when
    /// set); None for LoRA.
    pub fn gates(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(wg) = &self.router else {
            return Ok(None);
        };
        let g = x.matmul_nt(wg)?.softmax()?; // [T, N]
        let g = match self.top_k {
            Some(k) if k < wg.dim(0) => {
                let kept = g.mul(&top_k_mask(&g, k)?)?; // [T, N], zeros outside the top k
                kept.div(&kept.sum_keepdim(1)?)?
            }
            _ => g,
        };
        if self.record_gates {
            *self.last_gates.lock().unwrap_or_else(|e| e.into_inner()) = Some(g.clone());
        }
        Ok(Some(g))
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
        Linear {
            weight,
            adapter: None,
        }
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
