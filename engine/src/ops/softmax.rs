//! Softmax over the last axis, plain or scaled and causally masked (attention scores).

use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::kernel_params::kernel_params;
use crate::ops::{grid, row_shader, rows_grid};
use crate::shaders::{self, Shader};
use crate::tensor::{DType, Tensor};

kernel_params! {
    /// Softmax's params: softmax(scale * x) over rows of `cols`, causally masked when
    /// `causal` is 1 (row r is query `r % q_len`, seeing keys `0..=r % q_len + offset`).
    pub(crate) struct SoftmaxParams for [shaders::SOFTMAX, shaders::SOFTMAX_SUBGROUP] {
        rows: u32,
        cols: u32,
        scale: f32,
        causal: u32,
        q_len: u32,
        offset: u32,
    }
}

kernel_params! {
    /// Softmax's backward params.
    pub(crate) struct SoftmaxBackwardParams as "SoftmaxParams"
        for [shaders::SOFTMAX_BACKWARD, shaders::SOFTMAX_BACKWARD_SUBGROUP] {
        rows: u32,
        cols: u32,
        scale: f32,
    }
}

/// The causal mask of attention scores: row r of a score tensor is query position
/// `r % q_len`, which sees keys `0..=r % q_len + offset` (offset = tokens already cached).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CausalMask {
    /// Query positions per score block (T); must be at least 1.
    pub q_len: usize,
    /// Keys before the first query (tokens already in the KV cache).
    pub offset: usize,
}

fn rows_cols(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    x.expect_dtype(op, DType::F32, "f32")?;
    x.expect_bindable(op)?;
    let cols = *x.shape().last().ok_or(Error::InvalidArgument {
        op,
        shape: vec![],
        why: "a scalar has no last axis".into(),
    })?;
    Ok((x.numel() / cols.max(1), cols))
}

/// softmax(scale * x) over the last axis, with an optional causal mask.
pub fn softmax_scaled(x: &Tensor, scale: f32, mask: Option<CausalMask>) -> Result<Tensor> {
    let (rows, cols) = rows_cols("softmax", x)?;
    let (causal, q_len, offset) = match mask {
        Some(m) if m.q_len == 0 => {
            return Err(Error::InvalidArgument {
                op: "softmax",
                shape: x.shape().to_vec(),
                why: "q_len 0".into(),
            })
        }
        Some(m) => (1, m.q_len, m.offset),
        None => (0, 1, 0),
    };
    let y = Tensor::empty(x.device(), x.shape(), DType::F32)?;
    let (shader, entry, groups) = row_kernel(
        x.device(),
        [&shaders::SOFTMAX, &shaders::SOFTMAX_SUBGROUP],
        ["softmax", "softmax_rows"],
        rows,
        cols,
    );
    x.device().dispatch(
        shader,
        entry,
        &SoftmaxParams {
            rows: rows as u32,
            cols: cols as u32,
            scale,
            causal,
            q_len: q_len as u32,
            offset: offset as u32,
        },
        &[x.binding()],
        &[y.binding()],
        groups,
    );
    Ok(y.with_op(
        || Op::Softmax {
            x: x.clone(),
            scale,
        },
        &[x],
    ))
}

/// dx for y = softmax(scale * x), given y and dy.
pub(crate) fn softmax_backward(y: &Tensor, dy: &Tensor, scale: f32) -> Result<Tensor> {
    let (rows, cols) = rows_cols("softmax_backward", y)?;
    let dx = Tensor::empty(y.device(), y.shape(), DType::F32)?;
    let (shader, entry, groups) = row_kernel(
        y.device(),
        [
            &shaders::SOFTMAX_BACKWARD,
            &shaders::SOFTMAX_BACKWARD_SUBGROUP,
        ],
        ["softmax_backward", "softmax_backward_rows"],
        rows,
        cols,
    );
    y.device().dispatch(
        shader,
        entry,
        &SoftmaxBackwardParams {
            rows: rows as u32,
            cols: cols as u32,
            scale,
        },
        &[y.binding(), dy.binding()],
        &[dx.binding()],
        groups,
    );
    Ok(dx)
}

/// Which kernel takes the rows: the variant of the device's reduction flavour (`shaders`:
/// tree, subgroup; see [`row_shader`]), and in it one invocation per row on a CPU device for
/// rows up to a few thousand (barriers cost most there; `entries[1]`), else one workgroup
/// per row (`entries[0]`).
fn row_kernel(
    device: &crate::Device,
    shaders: [&'static Shader; 2],
    entries: [&'static str; 2],
    rows: usize,
    cols: usize,
) -> (&'static Shader, &'static str, [u32; 3]) {
    let shader = row_shader(device, shaders[0], shaders[1]);
    if device.is_cpu() && cols <= 4096 {
        (shader, entries[1], grid(device, rows, 64))
    } else {
        (shader, entries[0], rows_grid(device, rows))
    }
}

impl Tensor {
    /// Softmax over the last axis.
    pub fn softmax(&self) -> Result<Tensor> {
        softmax_scaled(self, 1.0, None)
    }
}
