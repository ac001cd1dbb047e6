//! # hydralora-engine
//!
//! GPU tensors whose every kernel is a WGSL compute shader run through `wgpu` (Vulkan,
//! Metal, DX12), with reverse-mode autodiff, AdamW and a gradient checker.
//!
//! - [`Device`] opens an adapter (or wraps a `wgpu::Device` an app already has); kernel
//!   dispatches are recorded and submitted in batches, and reading a result back
//!   ([`Tensor::to_vec_f32`]) is what waits for them.
//! - [`Tensor`] is a shape, a [`DType`] and a pooled GPU buffer, row-major and contiguous.
//!   Ops are methods ([`Tensor::matmul`], [`Tensor::add`], [`Tensor::softmax`], ...) and
//!   functions re-exported here ([`causal_attention`], [`rms_norm`], [`cross_entropy`],
//!   [`linear_cross_entropy`] (lm_head and the loss by chunks of rows), ...).
//! - A tensor made by [`Tensor::into_param`] is a parameter; ops on parameters record a
//!   graph, [`Tensor::backward`] returns their [`Gradients`], and [`no_grad`] turns the
//!   recording off; [`checkpoint`] keeps a function's inputs instead of its intermediates
//!   and re-runs it in backward.
//! - [`AdamW`] updates parameters in place; [`gradcheck`] compares autodiff gradients with
//!   finite differences; [`custom`] adds your own kernel and backward rule.
//! - Every failure is an [`Error`] naming the op and the shapes involved.
//!
//! ```no_run
//! use hydralora_engine::{Device, Tensor};
//! # fn main() -> hydralora_engine::Result<()> {
//! let dev = Device::new()?;
//! let w = Tensor::rand_uniform(&dev, &[3, 4], -1.0, 1.0, 0)?.into_param(); // [3, 4]
//! let x = Tensor::from_slice(&dev, &[1.0, 2.0, 3.0, 4.0], &[1, 4])?; // [1, 4]
//! let loss = x.matmul_nt(&w)?.silu()?.sum_all()?; // [1]
//! let grads = loss.backward()?;
//! println!("dL/dw = {:?}", grads.get(&w).unwrap().to_vec_f32()?);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod backward;
pub mod custom;
mod device;
mod error;
pub mod gradcheck;
mod op;
pub mod ops;
pub mod optim;
mod pool;
pub mod quant;
pub mod rng;
pub mod shaders;
mod tensor;

pub(crate) mod autograd {
    pub(crate) use crate::backward::is_recording;
    pub(crate) use crate::op::Op;
}

pub use backward::{
    checkpoint, is_recomputing, is_recording, is_training, no_grad, Gradients, NoGradGuard,
};
pub use custom::CustomOp;
pub use device::{CoopUse, Device, DeviceInfo};
pub use error::{human_bytes, Error, Result};
pub use ops::attention::{
    attention_kernel, attention_kernel_in_use, causal_attention, causal_attention_composed,
    causal_attention_tokens_first, causal_attention_tokens_first_with, causal_attention_with,
    AttentionKernel, AttnDims,
};
pub use ops::elementwise::swiglu;
pub use ops::embedding::{embedding, embedding_host_ids, embedding_parts};
pub use ops::gate::{gate_expand, routed_expand, top_k_mask};
pub use ops::loss::{
    cross_entropy, linear_cross_entropy, linear_cross_entropy_chunked, loss_chunk_rows,
    IGNORE_INDEX, LOSS_CHUNK_BYTES,
};
pub use ops::matmul::{add_matmul_scaled, matmul_half_inputs, matmul_scaled, matmul_t};
pub use ops::norm::rms_norm;
pub use ops::rope::{rope, rope_inv_freq, RopeTables};
pub use ops::softmax::{softmax_scaled, CausalMask};
pub use optim::{AdamW, AdamWConfig};
pub use pool::{size_class as pool_bytes, PoolStats};
pub use tensor::{DType, Tensor, TensorId};
