//! The HydraLoRA gate expansion z[t, i r + j] = g[t, i] h[t, j]: routing weights times the
//! shared low-rank activations, laid out so that every B head runs in one matmul.

use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::grid;
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// g: [T, N] gate weights, h: [T, r] shared activations -> z: [T, N r].
pub fn gate_expand(g: &Tensor, h: &Tensor) -> Result<Tensor> {
    g.expect_dtype("gate_expand", DType::F32, "f32")?;
    h.expect_dtype("gate_expand", DType::F32, "f32")?;
    g.expect_same_device("gate_expand", h)?;
    g.expect_bindable("gate_expand")?;
    h.expect_bindable("gate_expand")?;
    if g.rank() != 2 || h.rank() != 2 || g.dim(0) != h.dim(0) {
        return Err(Error::ShapeMismatch {
            op: "gate_expand",
            lhs: g.shape().to_vec(),
            rhs: h.shape().to_vec(),
            why: "g must be [T, N] and h [T, r]".into(),
        });
    }
    let (t, n, r) = (g.dim(0), g.dim(1), h.dim(1));
    let z = Tensor::empty_bindable("gate_expand", g.device(), &[t, n * r], DType::F32)?;
    g.device().dispatch(
        &shaders::GATE,
        "gate_expand",
        &[t as u32, n as u32, r as u32],
        &[g.binding(), h.binding()],
        &[z.binding()],
        grid(g.device(), t * n * r, 256),
    );
    Ok(z.with_op(
        || Op::GateExpand {
            g: g.clone(),
            h: h.clone(),
        },
        &[g, h],
    ))
}

/// (dg, dh) of the gate expansion.
pub(crate) fn gate_expand_backward(
    g: &Tensor,
    h: &Tensor,
    dz: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (t, n, r) = (g.dim(0), g.dim(1), h.dim(1));
    let dev = g.device();
    let dg = Tensor::empty(dev, g.shape(), DType::F32)?;
    let dh = Tensor::empty(dev, h.shape(), DType::F32)?;
    dev.dispatch(
        &shaders::GATE_BACKWARD,
        "gate_expand_backward",
        &[t as u32, n as u32, r as u32],
        &[dz.binding(), g.binding(), h.binding()],
        &[dg.binding(), dh.binding()],
        grid(dev, t, 64),
    );
    Ok((dg, dh))
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
        &[g.dim(0) as u32, g.dim(1) as u32, k as u32],
        &[g.binding()],
        &[mask.binding()],
        grid(g.device(), g.numel(), 256),
    );
    Ok(mask)
}
