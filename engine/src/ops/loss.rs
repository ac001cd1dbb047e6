//! Cross-entropy over logits with an ignore index, fused forward and backward.

use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::kernel_params::kernel_params;
use crate::ops::{grid, row_shader, rows_grid};
use crate::shaders;
use crate::tensor::{DType, Tensor};

kernel_params! {
    /// Cross-entropy's params, forward and backward: logits [rows, vocab].
    pub(crate) struct CeParams for [
        shaders::CROSS_ENTROPY,
        shaders::CROSS_ENTROPY_SUBGROUP,
        shaders::CROSS_ENTROPY_BACKWARD,
    ] {
        rows: u32,
        vocab: u32,
    }
}

/// The label that contributes no loss (PyTorch's default `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// Mean cross-entropy of `logits` `[N, V]` against `labels` i32 `[N]` over the rows whose
/// label is not -100. Shape `[1]`. (No shift: a causal-LM loss shifts labels before calling this.)
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    logits.expect_dtype("cross_entropy", DType::F32, "f32 logits")?;
    labels.expect_dtype("cross_entropy", DType::I32, "i32 labels")?;
    logits.expect_same_device("cross_entropy", labels)?;
    if logits.rank() != 2 || labels.shape() != [logits.dim(0)] {
        return Err(Error::ShapeMismatch {
            op: "cross_entropy",
            lhs: logits.shape().to_vec(),
            rhs: labels.shape().to_vec(),
            why: "logits must be [N, V] and labels [N]".into(),
        });
    }
    logits.expect_bindable("cross_entropy")?;
    let (rows, vocab) = (logits.dim(0), logits.dim(1));
    let dev = logits.device();
    let row_loss = Tensor::empty(dev, &[rows], DType::F32)?; // [N]
    let lse = Tensor::empty(dev, &[rows], DType::F32)?; // [N] log-sum-exp, for backward
    let counted = Tensor::empty(dev, &[rows], DType::F32)?; // [N] 1 where the label counts
    dev.dispatch(
        row_shader(
            dev,
            &shaders::CROSS_ENTROPY,
            &shaders::CROSS_ENTROPY_SUBGROUP,
        ),
        "cross_entropy",
        &CeParams {
            rows: rows as u32,
            vocab: vocab as u32,
        },
        &[logits.binding(), labels.binding()],
        &[row_loss.binding(), lse.binding(), counted.binding()],
        rows_grid(dev, rows),
    );
    let count = counted.sum_all()?; // [1]
    let loss = row_loss.sum_all()?.div(&count)?;
    Ok(loss.with_op(
        || Op::CrossEntropy {
            logits: logits.clone(),
            labels: labels.clone(),
            lse,
            count,
        },
        &[logits],
    ))
}

/// dlogits = (softmax - onehot) * grad / count.
pub(crate) fn cross_entropy_backward(
    logits: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    count: &Tensor,
    grad: &Tensor,
) -> Result<Tensor> {
    let g = grad.div(count)?;
    let (rows, vocab) = (logits.dim(0), logits.dim(1));
    let dlogits = Tensor::empty(logits.device(), logits.shape(), DType::F32)?;
    logits.device().dispatch(
        &shaders::CROSS_ENTROPY_BACKWARD,
        "cross_entropy_backward",
        &CeParams {
            rows: rows as u32,
            vocab: vocab as u32,
        },
        &[
            logits.binding(),
            labels.binding(),
            lse.binding(),
            g.binding(),
        ],
        &[dlogits.binding()],
        grid(logits.device(), rows * vocab, 256),
    );
    Ok(dlogits)
}
