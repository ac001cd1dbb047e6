//! The adapted layer's forward: LoRA and HydraLoRA on a frozen linear layer.
//!
//! HydraLoRA with E = `experts`, per token x (rows of `x`):
//! ```text
//! g = softmax(x Wg^T)              [T, E]    the router, dense, on the layer input
//! h = x A^T                        [T, r]    shared by every expert
//!                                            (h and x Wg^T: one matmul, x [A; Wg]^T)
//! z[t, i r + j] = g[t, i] h[t, j]  [T, E r]  the gate expansion (softmax fused in, when dense)
//! y = x W0^T + scale * z Bs^T      [T, d_out], Bs = [B_0 | ... | B_{E-1}]
//! ```
//! LoRA is E = 1 with no router (z = h).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hydralora_engine::{
    add_matmul_scaled, gate_expand, is_recomputing, is_training, matmul_scaled, rng::Rng,
    routed_expand, top_k_mask, Result, Tensor,
};

/// The trainable part of an adapted linear layer.
#[derive(Clone, Debug)]
pub struct Adapter {
    /// The down-projection `[r + E, d_in]`: A (shared by every expert) in rows `0..r`, then,
    /// for HydraLoRA, the router Wg in rows `r..r + E`, so that `x down^T` gives h and the
    /// router logits in one matmul. LoRA: just A, `[r, d_in]`.
    pub down: Tensor, // [r + E, d_in]: A, then the router (none for LoRA)
    /// The E experts' B side by side, `[d_out, E r]`: columns `i r..(i + 1) r` are B_i.
    pub b: Tensor, // [d_out, E r]: the E experts' B_i side by side
    /// The rank r.
    pub rank: usize,
    /// Whether rows `r..` of `down` are a router (HydraLoRA; LoRA has none).
    pub routed: bool,
    /// alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub scale: f32, // alpha / r, or alpha / sqrt(r) with rsLoRA
    /// Route each token to its k best experts only (softmax renormalised over them).
    pub top_k: Option<usize>,
    /// The gates of the last forward ([T, E], graph included), kept when `record_gates` is
    /// set: router statistics and the load-balancing loss read them.
    pub last_gates: Arc<Mutex<Option<Tensor>>>,
    /// Keep each forward's gates in `last_gates` (see [`crate::adapter::record_gates`]).
    pub record_gates: bool,
    /// Dropout on the input of A while training (recording a graph, or in a checkpoint's
    /// forward: [`hydralora_engine::is_training`]), as PEFT applies it.
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
        if self.p <= 0.0 || !is_training() {
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
        self.rank
    }

    /// Number of experts, the B matrices (1 for LoRA).
    pub fn experts(&self) -> usize {
        self.b.dim(1) / self.rank
    }

    /// The trainable tensors: the down-projection (A and the router) and the stacked B.
    pub fn params(&self) -> Vec<&Tensor> {
        vec![&self.down, &self.b]
    }

    /// Routing weights g = softmax(x Wg^T), [T, E] (renormalised over the top k experts when
    /// set); None for LoRA.
    pub fn gates(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if !self.routed {
            return Ok(None);
        }
        let g = self.gates_from(&x.matmul_nt(&self.down)?)?;
        self.record(&g);
        Ok(Some(g))
    }

    /// The top k of the router, where it keeps fewer experts than it has.
    fn sparse_k(&self) -> Option<usize> {
        self.top_k.filter(|&k| k < self.experts())
    }

    /// The gates from hl = x down^T [T, r + E]: softmax of its logit columns, renormalised
    /// over the top k experts when set: [T, E].
    fn gates_from(&self, hl: &Tensor) -> Result<Tensor> {
        let g = hl.narrow(1, self.rank, self.experts())?.softmax()?; // [T, E]
        match self.sparse_k() {
            Some(k) => {
                let kept = g.mul(&top_k_mask(&g, k)?)?; // [T, E], zeros outside the top k
                kept.div(&kept.sum_keepdim(1)?)
            }
            None => Ok(g),
        }
    }

    /// Keeps the gates of this forward for router statistics and the balance loss (not
    /// again when a checkpoint re-runs the forward in backward: they would hold its graph).
    fn record(&self, g: &Tensor) {
        if self.record_gates && !is_recomputing() {
            *self.last_gates.lock().unwrap_or_else(|e| e.into_inner()) = Some(g.clone());
        }
    }

    /// scale * z Bs^T for x [T, d_in]: the adapter's addition to the layer output.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        matmul_scaled(&self.expansion(x)?, &self.b, false, true, self.scale)
    }

    /// y + scale * z Bs^T: the adapter's addition summed into the frozen layer's output `y`
    /// [T, d_out] (in y's buffer when the caller hands over its only handle).
    pub fn add_to(&self, y: Tensor, x: &Tensor) -> Result<Tensor> {
        add_matmul_scaled(y, &self.expansion(x)?, &self.b, (false, true, self.scale))
    }

    /// z [T, E r], the input of the experts' stacked B (LoRA: h [T, r]).
    fn expansion(&self, x: &Tensor) -> Result<Tensor> {
        // A sees the dropped-out input, the router the layer input: one product while
        // dropout is off (always outside training), two (each with a few unused columns)
        // while it is on.
        let dropped = self.dropout.apply(x)?;
        let h_src = dropped.matmul_nt(&self.down)?; // [T, r + E] (LoRA: h, [T, r])
        if !self.routed {
            return Ok(h_src);
        }
        let hl = match dropped.id() == x.id() {
            true => h_src.clone(),
            false => x.matmul_nt(&self.down)?, // [T, r + E]
        };
        match self.sparse_k() {
            // Dense routing: the softmax runs inside the expansion kernel (both ways); the
            // gates are computed apart only when someone reads them.
            None => {
                if self.record_gates && !is_recomputing() {
                    self.record(&self.gates_from(&hl)?);
                }
                routed_expand(&hl, &h_src, self.rank) // [T, E r]
            }
            Some(_) => {
                let g = self.gates_from(&hl)?; // [T, E]
                self.record(&g);
                gate_expand(&g, &h_src.narrow(1, 0, self.rank)?) // [T, E r]
            }
        }
    }
}
