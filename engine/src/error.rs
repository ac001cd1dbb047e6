//! The engine's error type: every message names the op and the shapes involved.

use crate::tensor::DType;

/// Everything that can go wrong when a user's input or device meets the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter was found (or none matched `WGPU_ADAPTER_NAME` / `WGPU_BACKEND`).
    #[error(
        "no GPU adapter found{detail}. Install a GPU driver with Vulkan, Metal or DX12 support; \
         on a Linux machine without a GPU, install Mesa's software Vulkan driver (lavapipe): \
         `apt-get install -y mesa-vulkan-drivers libvulkan1`"
    )]
    NoAdapter {
        /// What was asked for (`WGPU_ADAPTER_NAME`, `WGPU_BACKEND`) and the adapters found, or
        /// empty.
        detail: String,
    },

    /// The adapter was found but could not open a device.
    #[error("could not open the GPU device `{adapter}`: {reason}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// The driver's message.
        reason: String,
    },

    /// Two operands' shapes do not fit together (broadcast, matmul, concat, assign, ...).
    #[error("{op}: shapes {lhs:?} and {rhs:?} do not match: {why}")]
    ShapeMismatch {
        /// The op that refused them.
        op: &'static str,
        /// The first operand's shape.
        lhs: Vec<usize>,
        /// The second operand's shape.
        rhs: Vec<usize>,
        /// What does not match.
        why: String,
    },

    /// An argument is out of range for the tensor it applies to (an axis, a length, `k`, ...).
    #[error("{op}: invalid argument for shape {shape:?}: {why}")]
    InvalidArgument {
        /// The op that refused it.
        op: &'static str,
        /// The shape of the tensor involved.
        shape: Vec<usize>,
        /// What is wrong.
        why: String,
    },

    /// A tensor has an element type the op does not take (most ops take f32 only).
    #[error("{op}: the tensor of shape {shape:?} has dtype {got:?}, which is not accepted here (expected {expected})")]
    DType {
        /// The op that refused it.
        op: &'static str,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Its element type.
        got: DType,
        /// The element type(s) accepted, in words.
        expected: &'static str,
    },

    /// A tensor exceeds a device limit: `max_buffer_size` for any tensor, or
    /// `max_storage_buffer_binding_size` for one a kernel reads or writes.
    #[error(
        "{op}: tensor of shape {shape:?} needs {bytes} bytes, over the device's limit of {limit} bytes \
         ({which})"
    )]
    TooLarge {
        /// The op (or `alloc`) that needed it.
        op: &'static str,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Bytes the tensor needs.
        bytes: u64,
        /// The device's limit, in bytes.
        limit: u64,
        /// Which limit, and what to do about it.
        which: &'static str,
    },

    /// The operands were created on two different [`Device`](crate::Device)s.
    #[error("{op}: tensors of shapes {lhs:?} and {rhs:?} live on two different devices")]
    DeviceMismatch {
        /// The op that received them.
        op: &'static str,
        /// The first operand's shape.
        lhs: Vec<usize>,
        /// The second operand's shape.
        rhs: Vec<usize>,
    },

    /// Host data whose length is not the element count of the tensor's shape.
    #[error(
        "host data of {got} elements does not fill a tensor of shape {shape:?} ({want} elements)"
    )]
    HostLength {
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Elements given.
        got: usize,
        /// Elements the shape holds.
        want: usize,
    },

    /// The driver could not allocate a buffer, even after the pool released its idle ones. Also
    /// reported (with an empty shape and 0 bytes) for an out-of-memory the driver raised outside
    /// an allocation.
    #[error(
        "out of GPU memory: could not allocate {} for a tensor of shape {shape:?} ({} already \
         held by hydralora's buffer pool{}): {reason}. Try a smaller micro-batch, shorter \
         sequences (--max-len), fewer adapted modules, or f16 storage of the frozen weights \
         (--f16-weights)",
        human_bytes(*.bytes),
        human_bytes(*.held),
        budget_note(.budget)
    )]
    OutOfMemory {
        /// The shape of the tensor being allocated.
        shape: Vec<usize>,
        /// Bytes the tensor asked for.
        bytes: u64,
        /// Bytes held by live tensors when it was refused.
        held: u64,
        /// The device's memory budget, when one is set ([`crate::Device::set_memory_budget`]).
        budget: Option<u64>,
        /// Why: the budget, or the driver's message.
        reason: String,
    },

    /// The device was lost (driver reset, GPU removed); it stays lost, every later call fails.
    #[error("the GPU device was lost ({0}); restart and resume from the last checkpoint")]
    DeviceLost(String),

    /// An error the driver reported (validation, internal), recorded and returned at the next
    /// readback or [`Device::synchronize`](crate::Device::synchronize).
    #[error("the GPU reported an error: {0}")]
    Device(String),

    /// [`Tensor::backward_with`](crate::Tensor::backward_with) was given a gradient of the wrong
    /// shape.
    #[error("backward: {0}")]
    Backward(String),

    /// Mapping or waiting for a buffer read back to the host failed.
    #[error("reading a buffer back from the GPU failed: {0}")]
    Readback(String),

    /// The device lacks something an op needs (e.g. a pinned matmul kernel that cannot run there).
    #[error("the device does not support {0}")]
    Unsupported(String),
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A byte count for people: `512 B`, `1.50 KiB`, `6.00 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

fn budget_note(budget: &Option<u64>) -> String {
    match budget {
        Some(b) => format!(", memory budget {}", human_bytes(*b)),
        None => String::new(),
    }
}
