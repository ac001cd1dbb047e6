//! RMS norm with a weight, over the last axis (LLaMA's norm).

use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::kernel_params::kernel_params;
use crate::ops::{grid, row_shader, rows_grid};
use crate::shaders;
use crate::tensor::{DType, Tensor};

kernel_params! {
    /// RMS norm's params: rows of `dim`, and the epsilon under the root.
    pub(crate) struct NormParams for [shaders::RMS_NORM, shaders::RMS_NORM_SUBGROUP] {
        rows: u32,
        dim: u32,
        eps: f32,
    }
}

kernel_params! {
    /// RMS norm's backward params (both entry points).
    pub(crate) struct NormBackwardParams as "NormParams"
        for [shaders::RMS_NORM_BACKWARD, shaders::RMS_NORM_BACKWARD_SUBGROUP] {
        rows: u32,
        dim: u32,
    }
}

/// y = w * x / sqrt(mean(x^2) + eps) over the last axis; w: `[dim]`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.expect_dtype("rms_norm", DType::F32, "f32")?;
    w.expect_dtype("rms_norm", DType::F32, "f32")?;
    x.expect_same_device("rms_norm", w)?;
    x.expect_bindable("rms_norm")?;
    let dim = x.shape().last().copied().unwrap_or(0);
    if w.shape() != [dim] {
        return Err(Error::ShapeMismatch {
            op: "rms_norm",
            lhs: x.shape().to_vec(),
            rhs: w.shape().to_vec(),
            why: "the weight must be [last dim of x]".into(),
        });
    }
    let rows = x.numel() / dim.max(1);
    let y = Tensor::empty(x.device(), x.shape(), DType::F32)?;
    let rstd = Tensor::empty(x.device(), &[rows], DType::F32)?; // [rows] 1/rms, kept for backward
    x.device().dispatch(
        row_shader(x.device(), &shaders::RMS_NORM, &shaders::RMS_NORM_SUBGROUP),
        "rms_norm",
        &NormParams {
            rows: rows as u32,
            dim: dim as u32,
            eps,
        },
        &[x.binding(), w.binding()],
        &[y.binding(), rstd.binding()],
        rows_grid(x.device(), rows),
    );
    Ok(y.with_op(
        || Op::RmsNorm {
            x: x.clone(),
            w: w.clone(),
            rstd,
        },
        &[x, w],
    ))
}

/// (dx, dw) of rms_norm, given the saved rstd.
pub(crate) fn rms_norm_backward(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let dim = w.numel();
    let rows = x.numel() / dim.max(1);
    let dev = x.device();
    let params = NormBackwardParams {
        rows: rows as u32,
        dim: dim as u32,
    };
    let reads = || [x.binding(), w.binding(), rstd.binding(), dy.binding()];
    let shader = row_shader(
        dev,
        &shaders::RMS_NORM_BACKWARD,
        &shaders::RMS_NORM_BACKWARD_SUBGROUP,
    );
    let dx = Tensor::empty(dev, x.shape(), DType::F32)?;
    dev.dispatch(
        shader,
        "rms_norm_input_grad",
        &params,
        &reads(),
        &[dx.binding()],
        rows_grid(dev, rows),
    );
    let dw = Tensor::empty(dev, w.shape(), DType::F32)?;
    dev.dispatch(
        shader,
        "rms_norm_weight_grad",
        &params,
        &reads(),
        &[dw.binding()],
        grid(dev, dim, 128),
    );
    Ok((dx, dw))
}

impl Tensor {
    /// RMS norm over the last axis with weight `w`.
    pub fn rms_norm(&self, w: &Tensor, eps: f32) -> Result<Tensor> {
        rms_norm(self, w, eps)
    }
}
