//! Causal scaled-dot-product attention with grouped-query heads, built from the matmul and
//! masked-softmax kernels (so its backward is theirs).

use crate::error::{Error, Result};
use crate::ops::matmul::matmul_t;
use crate::ops::softmax::{softmax_scaled, CausalMask};
use crate::tensor::Tensor;

/// q: [B, Hq, T, D]; k, v: [B, Hkv, S, D] with Hq a multiple of Hkv and S >= T (the last T
/// keys are the queries' own positions; the first S - T are cached). Query t sees keys
/// 0..=t + S - T. Scores are scaled by 1/sqrt(D). Result: [B, Hq, T, D].
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    q.expect_same_device("attention", k)?;
    q.expect_same_device("attention", v)?;
    let bad = |why: &str| Error::ShapeMismatch {
        op: "attention",
        lhs: q.shape().to_vec(),
        rhs: k.shape().to_vec(),
        why: why.into(),
    };
    if q.rank() != 4 || k.rank() != 4 || v.shape() != k.shape() {
        return Err(bad(
            "q must be [B, Hq, T, D], k and v the same [B, Hkv, S, D]",
        ));
    }
    let [b, hq, t, d] = [q.dim(0), q.dim(1), q.dim(2), q.dim(3)];
    let [bk, hkv, s, dk] = [k.dim(0), k.dim(1), k.dim(2), k.dim(3)];
    if b != bk || d != dk || hkv == 0 || hq % hkv != 0 || s < t {
        return Err(bad(
            "batch and head dims must agree, Hq % Hkv == 0 and S >= T",
        ));
    }
    let group = hq / hkv;
    // The query heads sharing one kv head are adjacent: fold them into the query rows.
    let q_rows = q.reshape(&[b * hkv, group * t, d])?; // [B Hkv, g T, D]
    let k_rows = k.reshape(&[b * hkv, s, d])?; // [B Hkv, S, D]
    let v_rows = v.reshape(&[b * hkv, s, d])?; // [B Hkv, S, D]
    let scores = matmul_t(&q_rows, &k_rows, false, true)?; // [B Hkv, g T, S]
    let probs = softmax_scaled(
        &scores,
        1.0 / (d as f32).sqrt(),
        Some(CausalMask {
            q_len: t,
            offset: s - t,
        }),
    )?;
    let out = probs.matmul(&v_rows)?; // [B Hkv, g T, D]
    out.reshape(&[b, hq, t, d])
}
