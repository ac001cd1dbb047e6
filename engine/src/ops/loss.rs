//! Cross-entropy over logits with an ignore index, fused forward and backward; and the
//! linear cross-entropy, `cross_entropy(hidden W^T, labels)` computed over chunks of rows so
//! that the [N, V] logits and their gradient are never whole.

use crate::backward::{is_recording, NoGradGuard};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::kernel_params::kernel_params;
use crate::ops::layout::copy_strided;
use crate::ops::matmul::{matmul_accumulate, matmul_t};
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
    let (row_loss, lse, counted) = row_losses(logits, labels)?; // [N] each
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

/// The cross-entropy kernel: each row's loss, its log-sum-exp and whether it counts (1 or
/// 0), [N] each, for logits [N, V] and labels [N].
fn row_losses(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
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
    Ok((row_loss, lse, counted))
}

/// dlogits = (softmax - onehot) * grad / count.
pub(crate) fn cross_entropy_backward(
    logits: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    count: &Tensor,
    grad: &Tensor,
) -> Result<Tensor> {
    dlogits_scaled(logits, labels, lse, &grad.div(count)?)
}

/// dlogits = (softmax - onehot) * scale, [N, V]; `scale` is [1]; ignored rows are zero.
fn dlogits_scaled(
    logits: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    scale: &Tensor,
) -> Result<Tensor> {
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
            scale.binding(),
        ],
        &[dlogits.binding()],
        grid(logits.device(), rows * vocab, 256),
    );
    Ok(dlogits)
}

/// Bytes of one chunk's logits in [`linear_cross_entropy`] by default: small next to a
/// model's activations, under every device's binding limit, and enough rows (256 for a 32k
/// vocabulary, 64 for 128k) that the chunk's products stay efficient.
pub const LOSS_CHUNK_BYTES: u64 = 32 << 20;

/// The rows per chunk [`linear_cross_entropy`] takes for a `vocab`-wide output: the most
/// whose logits fit [`LOSS_CHUNK_BYTES`] and one binding, a multiple of 64 (the matmul's
/// tile) when that is at least 64, and at least 1.
pub fn loss_chunk_rows(device: &Device, vocab: usize) -> usize {
    let bytes = LOSS_CHUNK_BYTES.min(device.info().max_binding_bytes());
    let rows = (bytes / (vocab.max(1) as u64 * 4)) as usize;
    if rows >= 64 {
        rows / 64 * 64
    } else {
        rows.max(1)
    }
}

/// Mean cross-entropy of the logits `hidden W^T` against `labels`, without the logits:
/// `cross_entropy(hidden.matmul_nt(W), labels)` for hidden f32 `[N, H]`, W `[V, H]` given as
/// its row parts `[V_i, H]` in order (f32 or f16: whatever the matmul takes), labels i32 `[N]`
/// (-100 ignored). Shape `[1]`. The rows go through in chunks of [`loss_chunk_rows`]; see
/// [`linear_cross_entropy_chunked`].
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight_parts: &[Tensor],
    labels: &Tensor,
) -> Result<Tensor> {
    let vocab = weight_parts.iter().map(|w| w.dim(0)).sum();
    linear_cross_entropy_chunked(
        hidden,
        weight_parts,
        labels,
        loss_chunk_rows(hidden.device(), vocab),
    )
}

/// [`linear_cross_entropy`], `chunk_rows` rows at a time (fewer where one binding holds
/// fewer rows of logits): per chunk, logits `[chunk, V]` = h W^T part by part, the
/// cross-entropy kernel's row losses and, when recording, dlogits = softmax - onehot and from
/// it the chunk's rows of d hidden (dlogits W) and each trainable part's dW_i (dlogits_i^T
/// h), summed chunk by chunk. A frozen part gets no dW.
///
/// The gradients are computed here, in the forward, and the backward only scales them by
/// `grad / count` (as Liger's and Unsloth's fused losses do on CUDA). Recomputing the chunk's
/// logits in backward instead would hold nothing from forward to backward but cost the
/// N x V x H product a second time, the largest product of a LoRA step on a small model;
/// what is held here, d hidden [N, H] and a trainable weight's dW, the backward would
/// allocate anyway.
pub fn linear_cross_entropy_chunked(
    hidden: &Tensor,
    weight_parts: &[Tensor],
    labels: &Tensor,
    chunk_rows: usize,
) -> Result<Tensor> {
    const OP: &str = "linear_cross_entropy";
    hidden.expect_dtype(OP, DType::F32, "f32 hidden states")?;
    labels.expect_dtype(OP, DType::I32, "i32 labels")?;
    hidden.expect_same_device(OP, labels)?;
    let mismatch = |rhs: &Tensor, why: &str| Error::ShapeMismatch {
        op: OP,
        lhs: hidden.shape().to_vec(),
        rhs: rhs.shape().to_vec(),
        why: why.into(),
    };
    if hidden.rank() != 2 || hidden.dim(0) == 0 || labels.shape() != [hidden.dim(0)] {
        return Err(mismatch(
            labels,
            "hidden must be [N, H] with N > 0 and labels [N]",
        ));
    }
    if weight_parts.is_empty() {
        return Err(Error::InvalidArgument {
            op: OP,
            shape: hidden.shape().to_vec(),
            why: "no weight parts".into(),
        });
    }
    for w in weight_parts {
        w.expect_same_device(OP, hidden)?;
        if w.rank() != 2 || w.dim(1) != hidden.dim(1) {
            return Err(mismatch(w, "each weight part must be [V_i, H]"));
        }
    }
    let (n, vocab) = (hidden.dim(0), weight_parts.iter().map(|w| w.dim(0)).sum());
    let row_bytes = vocab as u64 * 4;
    let limit = hidden.device().info().max_binding_bytes();
    if row_bytes > limit {
        return Err(Error::TooLarge {
            op: OP,
            shape: vec![1, vocab],
            bytes: row_bytes,
            limit,
            which: "max_storage_buffer_binding_size: one row of logits",
        });
    }
    let chunk = chunk_rows.min((limit / row_bytes) as usize).clamp(1, n);
    // inputs: hidden, then the parts (the op's gradient order).
    let inputs: Vec<&Tensor> = std::iter::once(hidden).chain(weight_parts).collect();
    let recording = is_recording() && inputs.iter().any(|t| t.tracks_grad());
    let wanted: Vec<bool> = inputs
        .iter()
        .map(|t| recording && t.tracks_grad())
        .collect();
    let (loss, count, grads) = {
        let _inner = NoGradGuard::new();
        chunked_loss(hidden, weight_parts, labels, chunk, &wanted)?
    };
    Ok(loss.with_op(
        || Op::LinearCrossEntropy {
            hidden: hidden.clone(),
            parts: weight_parts.to_vec(),
            grads,
            count,
        },
        &inputs,
    ))
}

/// The mean loss [1], the count of counted rows [1], and the unscaled gradients
/// sum_rows (softmax - onehot)-products of the inputs flagged in `wanted` (hidden, then
/// each part), chunk by chunk.
fn chunked_loss(
    hidden: &Tensor,
    parts: &[Tensor],
    labels: &Tensor,
    chunk: usize,
    wanted: &[bool],
) -> Result<(Tensor, Tensor, Vec<Option<Tensor>>)> {
    let dev = hidden.device();
    let (n, h) = (hidden.dim(0), hidden.dim(1));
    let chunked = chunk < n;
    let mut row_loss = RowsOf::new(dev, chunked, &[n])?; // [N]
    let mut counted = RowsOf::new(dev, chunked, &[n])?; // [N] 1 where the label counts
    let one = Tensor::full(dev, &[1], 1.0)?; // [1]: the gradients are scaled in backward
    let mut d_hidden = RowsOf::new(dev, chunked && wanted[0], &[n, h])?; // [N, H]
    let mut d_parts: Vec<Option<Tensor>> = vec![None; parts.len()]; // [V_i, H] each
    for start in (0..n).step_by(chunk) {
        let rows = chunk.min(n - start);
        let h_c = rows_of(hidden, start, rows)?; // [rows, H]
        let labels_c = rows_of(labels, start, rows)?; // [rows]
        let logits = project(&h_c, parts)?; // [rows, V]
        let (loss_c, lse_c, counted_c) = row_losses(&logits, &labels_c)?; // [rows] each
        row_loss.put(start, loss_c);
        counted.put(start, counted_c);
        if !wanted.iter().any(|&w| w) {
            continue;
        }
        let dlogits = dlogits_scaled(&logits, &labels_c, &lse_c, &one)?; // [rows, V]
        drop(logits);
        let mut dh_c: Option<Tensor> = None; // [rows, H]
        let mut col = 0;
        for (i, w) in parts.iter().enumerate() {
            let d_i = match parts.len() {
                1 => dlogits.clone(),
                _ => dlogits.narrow(1, col, w.dim(0))?, // [rows, V_i]
            };
            col += w.dim(0);
            if wanted[0] {
                dh_c = Some(match dh_c.take() {
                    None => matmul_t(&d_i, w, false, false)?,
                    Some(acc) => matmul_accumulate(acc, &d_i, w, false, false)?,
                });
            }
            if wanted[1 + i] {
                d_parts[i] = Some(match d_parts[i].take() {
                    None => matmul_t(&d_i, &h_c, true, false)?,
                    Some(acc) => matmul_accumulate(acc, &d_i, &h_c, true, false)?,
                });
            }
        }
        if let Some(dh_c) = dh_c {
            d_hidden.put(start, dh_c);
        }
    }
    let count = counted
        .into_tensor()
        .expect("one chunk at least")
        .sum_all()?; // [1]
    let loss = row_loss
        .into_tensor()
        .expect("one chunk at least")
        .sum_all()?
        .div(&count)?;
    let mut grads = vec![d_hidden.into_tensor()];
    grads.extend(d_parts);
    Ok((loss, count, grads))
}

/// Rows `start..start + rows` of `x` (x itself when that is all of it).
fn rows_of(x: &Tensor, start: usize, rows: usize) -> Result<Tensor> {
    match rows == x.dim(0) {
        true => Ok(x.clone()),
        false => x.narrow(0, start, rows),
    }
}

/// A per-row result [N, ...] put together chunk by chunk: copied into one tensor when there
/// are several chunks, the one chunk's own tensor (no copy) when there is one.
struct RowsOf {
    all: Option<Tensor>, // [N, ...] when chunked, else the one chunk's result once put
    chunked: bool,
}

impl RowsOf {
    fn new(dev: &Device, chunked: bool, shape: &[usize]) -> Result<Self> {
        let all = match chunked {
            true => Some(Tensor::empty(dev, shape, DType::F32)?),
            false => None,
        };
        Ok(Self { all, chunked })
    }

    /// The rows `start..` of the result.
    fn put(&mut self, start: usize, rows: Tensor) {
        match &self.all {
            Some(all) if self.chunked => write_rows(all, start, &rows),
            _ => self.all = Some(rows),
        }
    }

    fn into_tensor(self) -> Option<Tensor> {
        self.all
    }
}

/// Copies `src` [rows, ...] into rows `start..` of `dst` [N, ...] in place.
fn write_rows(dst: &Tensor, start: usize, src: &Tensor) {
    let row: usize = src.shape()[1..].iter().product();
    copy_strided(src, &[1], 0, dst, &[1], start * row, &[src.numel()]);
}

/// logits [rows, V] = h W^T, part by part and joined when W is split.
fn project(h: &Tensor, parts: &[Tensor]) -> Result<Tensor> {
    if let [w] = parts {
        return matmul_t(h, w, false, true);
    }
    let logits: Vec<Tensor> = parts
        .iter()
        .map(|w| matmul_t(h, w, false, true))
        .collect::<Result<_>>()?;
    Tensor::concat(&logits, 1)
}
