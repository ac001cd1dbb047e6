//! The engine's error type: every message names the op and the shapes involved.

use crate::tensor::DType;

/// Everything that can go wrong when a user's input or device meets the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no GPU adapter found{detail}. Install a GPU driver with Vulkan, Metal or DX12 support; \
         on a Linux machine without a GPU, install Mesa's software Vulkan driver (lavapipe): \
         `apt-get install -y mesa-vulkan-drivers libvulkan1`"
    )]
    NoAdapter { detail: String },

    #[error("could not open the GPU device `{adapter}`: {reason}")]
    RequestDevice { adapter: String, reason: String },

    #[error("{op}: shapes {lhs:?} and {rhs:?} do not match: {why}")]
    ShapeMismatch {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
        why: String,
    },

    #[error("{op}: invalid argument for shape {shape:?}: {why}")]
    InvalidArgument {
        op: &'static str,
        shape: Vec<usize>,
        why: String,
    },

    #[error("{op}: the tensor of shape {shape:?} has dtype {got:?}, which is not accepted here (expected {expected})")]
    DType {
        op: &'static str,
        shape: Vec<usize>,
        got: DType,
        expected: &'static str,
    },

    #[error(
        "{op}: tensor of shape {shape:?} needs {bytes} bytes, over the device's limit of {limit} bytes \
         ({which})"
    )]
    TooLarge {
        op: &'static str,
        shape: Vec<usize>,
        bytes: u64,
        limit: u64,
        which: &'static str,
    },

    #[error("{op}: tensors of shapes {lhs:?} and {rhs:?} live on two different devices")]
    DeviceMismatch {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
    },

    #[error(
        "host data of {got} elements does not fill a tensor of shape {shape:?} ({want} elements)"
    )]
    HostLength {
        shape: Vec<usize>,
        got: usize,
        want: usize,
    },

    #[error(
        "out of GPU memory: could not allocate {bytes} bytes for a tensor of shape {shape:?} \
         ({held} bytes already held by hydralora's buffer pool): {reason}. Try a smaller \
         micro-batch, shorter sequences (--max-len), fewer adapted modules, or f16 storage"
    )]
    OutOfMemory {
        shape: Vec<usize>,
        bytes: u64,
        held: u64,
        reason: String,
    },

    #[error("the GPU device was lost ({0}); restart and resume from the last checkpoint")]
    DeviceLost(String),

    #[error("the GPU reported an error: {0}")]
    Device(String),

    #[error("backward: {0}")]
    Backward(String),

    #[error("reading a buffer back from the GPU failed: {0}")]
    Readback(String),

    #[error("the device does not support {0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
