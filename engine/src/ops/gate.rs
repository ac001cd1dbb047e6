//! The HydraLoRA gate expansion z[t, i r + j] = g[t, i] h[t, j]: routing weights times the
//! shared low-rank activations, laid out so that every B head runs in one matmul. The dense
//! router's variant takes the router logits and applies the softmax in the same kernel.

use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::grid;
use crate::ops::kernel_params::kernel_params;
use crate::shaders;
use crate::tensor::{DType, Tensor};

kernel_params! {
    /// The expansions' params: T tokens, N heads, rank r.
    pub(crate) struct GateParams for [shaders::GATE] {
        tokens: u32,
        heads: u32, // N
        rank: u32,  // r
    }
}

kernel_params! {
    /// The expansions' backward params.
    pub(crate) struct GateBackwardParams as "GateParams" for [shaders::GATE_BACKWARD] {
        tokens: u32,
        heads: u32,
        rank: u32,
        packed: u32, // routed_expand_backward: 1 when dg and dh are one buffer
    }
}

kernel_params! {
    /// Top-k's params: g [rows, n], k kept per row.
    pub(crate) struct TopKParams for [shaders::TOP_K] {
        rows: u32,
        n: u32,
        k: u32,
    }
}

/// g: [T, N] gate weights, h: [T, r] shared activations -> z: [T, N r].
pub fn gate_expand(g: &Tensor, h: &Tensor) -> Result<Tensor> {
    let z = expand("gate_expand", g, h)?;
    Ok(z.with_op(
        || Op::GateExpand {
            g: g.clone(),
            h: h.clone(),
        },
        &[g, h],
    ))
}

/// The dense router's expansion, softmax included, on packed down-projections:
/// `z[t, i r + j] = softmax(logits[t])[i] h[t, j]` with logits = `logits_src[:, r..r + N]`
/// and h = `h_src[:, 0..r]`, both sources [T, r + N] -> z [T, N r]. HydraLoRA computes
/// `hl = x [A; Wg]^T` (the shared A and the router in one matmul) and passes it as both
/// sources; with dropout on A's input, h comes from its own product. One kernel each way:
/// the softmax costs no dispatch and no [T, N] gate tensor.
pub fn routed_expand(logits_src: &Tensor, h_src: &Tensor, rank: usize) -> Result<Tensor> {
    let op = "routed_expand";
    for t in [logits_src, h_src] {
        t.expect_dtype(op, DType::F32, "f32")?;
        t.expect_bindable(op)?;
    }
    logits_src.expect_same_device(op, h_src)?;
    if logits_src.rank() != 2 || logits_src.shape() != h_src.shape() || logits_src.dim(1) <= rank {
        return Err(Error::ShapeMismatch {
            op,
            lhs: logits_src.shape().to_vec(),
            rhs: h_src.shape().to_vec(),
            why: format!("both sources must be [T, r + N] with r = {rank} and N >= 1"),
        });
    }
    let (t, n) = (logits_src.dim(0), logits_src.dim(1) - rank);
    let z = Tensor::empty_bindable(op, logits_src.device(), &[t, n * rank], DType::F32)?;
    logits_src.device().dispatch(
        &shaders::GATE,
        op,
        &GateParams {
            tokens: t as u32,
            heads: n as u32,
            rank: rank as u32,
        },
        &[logits_src.binding(), h_src.binding()],
        &[z.binding()],
        grid(logits_src.device(), t, 64),
    );
    Ok(z.with_op(
        || Op::RoutedExpand {
            logits_src: logits_src.clone(),
            h_src: h_src.clone(),
            rank,
        },
        &[logits_src, h_src],
    ))
}

/// g: [T, N] gates (or logits), h: [T, r] -> z [T, N r] by the expansion kernel.
fn expand(entry: &'static str, g: &Tensor, h: &Tensor) -> Result<Tensor> {
    g.expect_dtype(entry, DType::F32, "f32")?;
    h.expect_dtype(entry, DType::F32, "f32")?;
    g.expect_same_device(entry, h)?;
    g.expect_bindable(entry)?;
    h.expect_bindable(entry)?;
    if g.rank() != 2 || h.rank() != 2 || g.dim(0) != h.dim(0) {
        return Err(Error::ShapeMismatch {
            op: entry,
            lhs: g.shape().to_vec(),
            rhs: h.shape().to_vec(),
            why: "g must be [T, N] and h [T, r]".into(),
        });
    }
    let (t, n, r) = (g.dim(0), g.dim(1), h.dim(1));
    let z = Tensor::empty_bindable(entry, g.device(), &[t, n * r], DType::F32)?;
    g.device().dispatch(
        &shaders::GATE,
        entry,
        &GateParams {
            tokens: t as u32,
            heads: n as u32,
            rank: r as u32,
        },
        &[g.binding(), h.binding()],
        &[z.binding()],
        grid(g.device(), t * n * r, 256),
    );
    Ok(z)
}

/// (dg, dh) of the gate expansion.
pub(crate) fn gate_expand_backward(
    g: &Tensor,
    h: &Tensor,
    dz: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (t, n, r) = (g.dim(0), g.dim(1), h.dim(1));
    let dev = g.device();
    let dg = Tensor::empty(dev, g.shape(), DType::F32)?; // [T, N]
    let dh = Tensor::empty(dev, h.shape(), DType::F32)?; // [T, r]
    dev.dispatch(
        &shaders::GATE_BACKWARD,
        "gate_expand_backward",
        &GateBackwardParams {
            tokens: t as u32,
            heads: n as u32,
            rank: r as u32,
            packed: 0,
        },
        &[dz.binding(), g.binding(), h.binding()],
        &[dg.binding(), dh.binding()],
        grid(dev, t, 64),
    );
    Ok((dg, dh))
}

/// The gradients of routed_expand's sources, each [T, r + N]: one tensor (dh and dlogits
/// side by side) when the sources are one tensor, else (d logits_src, d h_src), each zero in
/// the columns the op does not read.
pub(crate) fn routed_expand_backward(
    logits_src: &Tensor,
    h_src: &Tensor,
    rank: usize,
    dz: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let (t, width) = (logits_src.dim(0), logits_src.dim(1));
    let dev = logits_src.device();
    let packed = logits_src.id() == h_src.id();
    let d_logits_src = Tensor::empty(dev, &[t, width], DType::F32)?; // [T, r + N]
    let d_h_src = match packed {
        true => None,
        false => Some(Tensor::empty(dev, &[t, width], DType::F32)?), // [T, r + N]
    };
    // Packed, the kernel writes both parts into d_logits_src; its dh slot gets a placeholder,
    // since WebGPU refuses one buffer in two writable slots.
    let placeholder = match packed {
        true => Some(Tensor::empty(dev, &[1], DType::F32)?), // [1], never written
        false => None,
    };
    dev.dispatch(
        &shaders::GATE_BACKWARD,
        "routed_expand_backward",
        &GateBackwardParams {
            tokens: t as u32,
            heads: (width - rank) as u32,
            rank: rank as u32,
            packed: u32::from(packed),
        },
        &[dz.binding(), logits_src.binding(), h_src.binding()],
        &[
            d_logits_src.binding(),
            d_h_src
                .as_ref()
                .or(placeholder.as_ref())
                .expect("one of the two")
                .binding(),
        ],
        grid(dev, t, 64),
    );
    Ok((d_logits_src, d_h_src))
}

/// 1 where g [T, N] holds one of its row's k largest values (ties: lower index), else 0.
/// A constant mask (no gradient): multiply by it and renormalise for top-k routing.
pub fn top_k_mask(g: &Tensor, k: usize) -> Result<Tensor> {
    g.expect_dtype("top_k_mask", DType::F32, "f32")?;
    g.expect_bindable("top_k_mask")?;
    if g.rank() != 2 || k == 0 {
        return Err(Error::InvalidArgument {
            op: "top_k_mask",
            shape: g.shape().to_vec(),
            why: format!("needs [T, N] and k >= 1 (k = {k})"),
        });
    }
    let mask = Tensor::empty(g.device(), g.shape(), DType::F32)?;
    g.device().dispatch(
        &shaders::TOP_K,
        "top_k_mask",
        &TopKParams {
            rows: g.dim(0) as u32,
            n: g.dim(1) as u32,
            k: k as u32,
        },
        &[g.binding()],
        &[mask.binding()],
        grid(g.device(), g.numel(), 256),
    );
    Ok(mask)
}
