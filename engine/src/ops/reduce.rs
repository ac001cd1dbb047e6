//! Sums and means over an axis, deterministic (a fixed-order tree per output element).

use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::kernel_params::kernel_params;
use crate::ops::{row_shader, rows_grid};
use crate::shaders;
use crate::tensor::{DType, Tensor};

kernel_params! {
    /// The axis sum's params: x viewed as [outer, len, inner], summed over len.
    pub(crate) struct SumParams for [shaders::REDUCE, shaders::REDUCE_SUBGROUP] {
        outer: u32,
        len: u32,
        inner: u32,
    }
}

/// Sum over `axis`, keeping it as a dim of size 1.
pub fn sum_keepdim(x: &Tensor, axis: usize) -> Result<Tensor> {
    x.expect_dtype("sum", DType::F32, "f32")?;
    x.expect_bindable("sum")?;
    if axis >= x.rank() {
        return Err(Error::InvalidArgument {
            op: "sum",
            shape: x.shape().to_vec(),
            why: format!("no axis {axis}"),
        });
    }
    let outer: usize = x.shape()[..axis].iter().product();
    let len = x.dim(axis);
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let mut shape = x.shape().to_vec();
    shape[axis] = 1;
    let out = Tensor::empty(x.device(), &shape, DType::F32)?;
    x.device().dispatch(
        row_shader(x.device(), &shaders::REDUCE, &shaders::REDUCE_SUBGROUP),
        "sum_axis",
        &SumParams {
            outer: outer as u32,
            len: len as u32,
            inner: inner as u32,
        },
        &[x.binding()],
        &[out.binding()],
        rows_grid(x.device(), outer * inner),
    );
    Ok(out.with_op(|| Op::Sum { x: x.clone() }, &[x]))
}

/// Sums `grad` down to `shape`, undoing a broadcast from `shape` to `grad`'s shape.
pub(crate) fn sum_to_shape(grad: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if grad.shape() == shape {
        return Ok(grad.clone());
    }
    let lead = grad.rank() - shape.len();
    let mut g = grad.clone();
    for d in 0..grad.rank() {
        let target = if d < lead { 1 } else { shape[d - lead] };
        if g.dim(d) != target {
            g = sum_keepdim(&g, d)?;
        }
    }
    g.reshape(shape)
}

impl Tensor {
    /// Sum over `axis`, removing it.
    pub fn sum(&self, axis: usize) -> Result<Tensor> {
        let mut shape = self.shape().to_vec();
        let s = sum_keepdim(self, axis)?;
        shape.remove(axis);
        s.reshape(&shape)
    }

    /// Sum over `axis`, keeping it as size 1.
    pub fn sum_keepdim(&self, axis: usize) -> Result<Tensor> {
        sum_keepdim(self, axis)
    }

    /// Mean over `axis`, removing it.
    pub fn mean(&self, axis: usize) -> Result<Tensor> {
        let n = self.shape().get(axis).copied().unwrap_or(1);
        self.sum(axis)?.scale(1.0 / n as f32)
    }

    /// Sum of every element, shape `[1]`.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])?.sum_keepdim(0)
    }

    /// Mean of every element, shape `[1]`.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.sum_all()?.scale(1.0 / self.numel() as f32)
    }
}
