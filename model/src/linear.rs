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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hydralora_engine::{gate_expand, is_recording, rng::Rng, top_k_mask, Result, Tensor};

/// The trainable part of an adapted linear layer.
#[derive(Clone, Debug)]
pub struct Adapter {
    /// A, `[r, d_in]`, shared by every head.
    pub a: Tensor, // [r, d_in]
    /// The N heads side by side, `[d_out, N r]`: columns `i r..(i + 1) r` are B_i.
    pub b: Tensor, // [d_out, N r]: the N heads B_i side by side
    /// The router Wg, `[N, d_in]`; `None` for LoRA.
    pub router: Option<Tensor>, // [N, d_in], None for LoRA
    /// alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub scale: f32, // alpha / r, or alpha / sqrt(r) with rsLoRA
    /// Route each token to its k best heads only (softmax renormalised over them).
    pub top_k: Option<usize>,
    /// The gates of the last forward ([T, N], graph included), kept when `record_gates` is
    /// set: router statistics and the load-balancing loss read them.
    pub last_gates: Arc<Mutex<Option<Tensor>>>,
    /// Keep each forward's gates in `last_gates` (see [`crate::adapter::record_gates`]).
    pub record_gates: bool,
    /// Dropout on the input of A while training (recording a graph), as PEFT applies it.
    pub dropout: Dropout,
}

/// Inverted dropout with masks drawn on the host from (seed, salt): the trainer sets the
/// seed for each micro-batch from its step, so a resumed run draws the same masks.
#[derive(Clone, Debug, Default)]
pub struct Dropout {
    /// Probability of zeroing an element, in `[0, 1)` (0: off).
    pub p: f32,
    /// Shared by every adapter of a model; set by the trainer before each forward.
    pub seed: Arc<AtomicU64>,
    /// Tells this adapter's masks from the others' (its layer and module).
    pub salt: u64,
}

impl Dropout {
    /// x with each element zeroed with probability p and the rest scaled by 1 / (1 - p).
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.p <= 0.0 || !is_recording() {
            return Ok(x.clone());
        }
        let mask = dropout_mask(
            x.numel(),
            self.p,
            self.seed.load(Ordering::Relaxed) ^ self.salt.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        x.mul(&Tensor::from_slice(x.device(), &mask, x.shape())?)
    }
}

/// n values, each 0 with probability p and 1 / (1 - p) otherwise, from a seeded generator.
pub fn dropout_mask(n: usize, p: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let keep = 1.0 / (1.0 - p);
    (0..n)
        .map(|_| if rng.next_f32() < p { 0.0 } else { keep })
        .collect()
}

impl Adapter {
    /// The rank r (rows of A).
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
        let h = self.dropout.apply(x)?.matmul_nt(&self.a)?; // [T, r]
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
    /// W, `[d_out, d_in]` (f32, or f16 once stored so by [`crate::Llama::store_frozen_weights_f16`]).
    pub weight: Tensor, // [d_out, d_in]
    /// The attached adapter, if any.
    pub adapter: Option<Adapter>,
}

impl Linear {
    /// A layer with weight `[d_out, d_in]` and no adapter.
    pub fn new(weight: Tensor) -> Self {
        Linear {
            weight,
            adapter: None,
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
        let y = x.matmul_nt(&self.weight)?;
        match &self.adapter {
            Some(adapter) => y.add(&adapter.forward(x)?),
            None => Ok(y),
        }
    }
}
