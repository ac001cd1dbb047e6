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
        "out of GPU memory: could not allocate {} for a tensor of shape {shape:?} ({} already \
         held by hydralora's buffer pool{}): {reason}. Try a smaller micro-batch, shorter \
         sequences (--max-len), fewer adapted modules, or f16 storage of the frozen weights \
         (--f16-weights)",
        human_bytes(*.bytes),
        human_bytes(*.held),
        budget_note(.budget)
    )]
    OutOfMemory {
        shape: Vec<usize>,
        /// Bytes the tensor asked for.
        bytes: u64,
        /// Bytes held by live tensors when it was refused.
        held: u64,
        /// The device's memory budget, when one is set ([`crate::Device::set_memory_budget`]).
        budget: Option<u64>,
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
