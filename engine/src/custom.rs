//! User-written ops: your own WGSL kernel and backward rule, recorded in the same graph as
//! the built-in ops (see `examples/gradcheck_custom_op.rs`).

use std::sync::Arc;

use crate::error::Result;
use crate::op::Op;
use crate::shaders::Shader;
use crate::tensor::{DType, Tensor};

/// The backward rule of a user-defined op.
pub trait CustomOp: Send + Sync {
    /// A name for error messages.
    fn name(&self) -> &'static str;
    /// Gradients of `inputs` (same order; `None` for no gradient) from the output `out` and
    /// its gradient `grad`. Runs with recording off; may use any engine op or [`launch`].
    fn backward(
        &self,
        inputs: &[&Tensor],
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>>;
}

/// Records `out` as computed by `op` from `inputs`, when any input tracks gradients.
pub fn record(out: Tensor, inputs: &[&Tensor], op: Arc<dyn CustomOp>) -> Tensor {
    let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    out.with_op(|| Op::Custom { inputs: owned, op }, inputs)
}

/// Runs a user kernel. Bindings follow the engine's convention: `@binding(0)` is
/// `var<storage, read>` params (the `params` words), then `reads` as `var<storage, read>`,
/// then `writes` as `var<storage, read_write>`. `shader.name` must be unique per source.
pub fn launch(
    shader: &'static Shader,
    entry: &'static str,
    params: &[u32],
    reads: &[&Tensor],
    writes: &[&Tensor],
    workgroups: [u32; 3],
) -> Result<()> {
    let Some(first) = reads.first().or(writes.first()) else {
        return Ok(());
    };
    for t in reads.iter().chain(writes) {
        t.expect_same_device(entry, first)?;
        t.expect_bindable(entry)?;
    }
    let r: Vec<_> = reads.iter().map(|t| t.binding()).collect();
    let w: Vec<_> = writes.iter().map(|t| t.binding()).collect();
    first
        .device()
        .dispatch(shader, entry, params, &r, &w, workgroups);
    Ok(())
}

impl Tensor {
    /// An f32 tensor whose contents a kernel will write (for custom ops).
    pub fn uninit(device: &crate::Device, shape: &[usize]) -> Result<Tensor> {
        Tensor::empty(device, shape, DType::F32)
    }
}
