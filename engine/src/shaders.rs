//! Every WGSL kernel, embedded in the binary and composed at compile time.
//!
//! A kernel variant is a few `const` lines, then shared pieces from `shaders/lib/`, then
//! one kernel file from `shaders/`, concatenated. WGSL module-scope declarations are
//! order-independent, so a kernel file calls functions and names structs that a piece
//! declares (a params struct, a row reduction in its workgroup-tree or subgroup flavour,
//! a matmul's weight load), and a variant swaps one piece or one constant for another
//! instead of copying the kernel. The one `shaders!` invocation below lists every
//! variant once: it makes the constant, [`ALL`] (validated by naga in the tests) and
//! [`COMPOSITION`] (which files make each variant), and the variant's name keys the
//! pipeline cache.
//!
//! Binding convention for all of them: `@binding(0)` is the params block
//! (`var<storage, read>`), then the read-only inputs, then the read-write outputs, in that
//! order.

use crate::ops::matmul::MatmulKernel;
use crate::tensor::DType;

/// One compute shader module: a composed variant, or a user's own source (custom ops).
#[derive(Debug)]
pub struct Shader {
    /// Unique per source: the pipeline cache's key. For the built-in kernels, the kernel
    /// file's stem, then `+variant` for each choice that is not the default
    /// (`matmul_subgroup+f16+accumulate`).
    pub name: &'static str,
    /// The WGSL source text.
    pub source: &'static str,
}

/// Lists every built-in kernel variant: `IDENT = "name" { const "..." , ..., "file", ... }`
/// where a file is a path under `shaders/` without `.wgsl`, the kernel file last.
macro_rules! shaders {
    ($(
        $(#[$doc:meta])*
        $ident:ident = $name:literal { $(const $c:literal,)* $($file:literal),+ $(,)? }
    )*) => {
        $(
            $(#[$doc])*
            pub const $ident: Shader = Shader {
                name: $name,
                source: concat!(
                    $($c, "\n",)*
                    $(include_str!(concat!("../../shaders/", $file, ".wgsl")), "\n",)+
                ),
            };
        )*
        /// Every built-in kernel variant, for validation and for warming the pipeline cache.
        pub const ALL: &[&Shader] = &[$(&$ident),*];
        /// Each variant's name, its constant lines and its files (paths under `shaders/`
        /// without `.wgsl`), in the order they are concatenated.
        pub const COMPOSITION: &[(&str, &[&str], &[&str])] = &[$(($name, &[$($c),*], &[$($file),+])),*];
    };
}

shaders! {
    /// Binary ops with broadcasting.
    ELEMENTWISE = "elementwise" { "lib/ids", "elementwise" }
    /// Fill a tensor with a constant.
    FILL = "fill" { "lib/ids", "fill" }
    /// Unary ops.
    UNARY = "unary" { "lib/ids", "unary" }
    /// Gradients of the unary ops.
    UNARY_BACKWARD = "unary_backward" { "lib/ids", "unary_backward" }
    /// Sums along an axis (workgroup tree).
    REDUCE = "reduce" { "lib/ids", "lib/rows_tree", "reduce" }
    /// Sums along an axis, subgroup reductions.
    REDUCE_SUBGROUP = "reduce+subgroup" { "lib/ids", "lib/rows_subgroup", "reduce" }
    /// Strided copies.
    COPY = "copy" { "lib/ids", "copy" }
    /// Casts between f32 and f16.
    CAST = "cast" { "lib/ids", "cast" }
    /// The general matmul, f32 weights, writing C.
    MATMUL = "matmul" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "matmul" }
    /// The general matmul, f32 weights, adding into C.
    MATMUL_ACCUMULATE = "matmul+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "matmul" }
    /// The general matmul, f16 weights, writing C.
    MATMUL_F16 = "matmul+f16" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "matmul" }
    /// The general matmul, f16 weights, adding into C.
    MATMUL_F16_ACCUMULATE = "matmul+f16+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "matmul" }
    /// The tiled matmul, f32 weights, writing C.
    MATMUL_TILED = "matmul_tiled" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "matmul_tiled" }
    /// The tiled matmul, f32 weights, adding into C.
    MATMUL_TILED_ACCUMULATE = "matmul_tiled+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "matmul_tiled" }
    /// The tiled matmul, f16 weights, writing C.
    MATMUL_TILED_F16 = "matmul_tiled+f16" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "matmul_tiled" }
    /// The tiled matmul, f16 weights, adding into C.
    MATMUL_TILED_F16_ACCUMULATE = "matmul_tiled+f16+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "matmul_tiled" }
    /// The subgroup matmul, f32 weights, writing C.
    MATMUL_SUBGROUP = "matmul_subgroup" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/weights_f32", "lib/lanes8", "matmul_subgroup" }
    /// The subgroup matmul, f32 weights, adding into C.
    MATMUL_SUBGROUP_ACCUMULATE = "matmul_subgroup+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/weights_f32", "lib/lanes8", "matmul_subgroup" }
    /// The subgroup matmul, f16 weights, writing C.
    MATMUL_SUBGROUP_F16 = "matmul_subgroup+f16" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/weights_f16", "lib/lanes8", "matmul_subgroup" }
    /// The subgroup matmul, f16 weights, adding into C.
    MATMUL_SUBGROUP_F16_ACCUMULATE = "matmul_subgroup+f16+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/weights_f16", "lib/lanes8", "matmul_subgroup" }
    /// Split-K's reduction, writing C.
    MATMUL_SPLITK = "matmul_splitk" { const "const ACCUMULATE: bool = false;", "lib/ids", "matmul_splitk" }
    /// Split-K's reduction, adding into C.
    MATMUL_SPLITK_ACCUMULATE = "matmul_splitk+accumulate" { const "const ACCUMULATE: bool = true;", "lib/ids", "matmul_splitk" }
    /// Softmax over rows (workgroup tree).
    SOFTMAX = "softmax" { "lib/ids", "lib/rows_tree", "softmax" }
    /// Softmax over rows, subgroup reductions.
    SOFTMAX_SUBGROUP = "softmax+subgroup" { "lib/ids", "lib/rows_subgroup", "softmax" }
    /// Softmax's backward (workgroup tree).
    SOFTMAX_BACKWARD = "softmax_backward" { "lib/ids", "lib/rows_tree", "softmax_backward" }
    /// Softmax's backward, subgroup reductions.
    SOFTMAX_BACKWARD_SUBGROUP = "softmax_backward+subgroup" { "lib/ids", "lib/rows_subgroup", "softmax_backward" }
    /// Flash attention forward.
    FLASH_ATTENTION = "flash_attention" { "lib/ids", "lib/flash", "flash_attention" }
    /// Flash attention backward.
    FLASH_ATTENTION_BACKWARD = "flash_attention_backward" { "lib/ids", "lib/flash", "flash_attention_backward" }
    /// Flash attention forward, subgroup layout (8-lane subgroups).
    FLASH_ATTENTION_SUBGROUP = "flash_attention_subgroup" {
        "lib/ids", "lib/flash", "lib/lanes8", "lib/flash_lanes", "flash_attention_subgroup"
    }
    /// Flash attention backward, subgroup layout (8-lane subgroups).
    FLASH_ATTENTION_BACKWARD_SUBGROUP = "flash_attention_backward_subgroup" {
        "lib/ids", "lib/flash", "lib/lanes8", "lib/flash_lanes", "flash_attention_backward_subgroup"
    }
    /// RMS norm (workgroup tree).
    RMS_NORM = "rms_norm" { "lib/ids", "lib/rows_tree", "rms_norm" }
    /// RMS norm, subgroup reductions.
    RMS_NORM_SUBGROUP = "rms_norm+subgroup" { "lib/ids", "lib/rows_subgroup", "rms_norm" }
    /// RMS norm's backward (workgroup tree).
    RMS_NORM_BACKWARD = "rms_norm_backward" { "lib/ids", "lib/rows_tree", "rms_norm_backward" }
    /// RMS norm's backward, subgroup reductions.
    RMS_NORM_BACKWARD_SUBGROUP = "rms_norm_backward+subgroup" { "lib/ids", "lib/rows_subgroup", "rms_norm_backward" }
    /// Rotary position embedding.
    ROPE = "rope" { "lib/ids", "rope" }
    /// Embedding lookup.
    EMBEDDING = "embedding" { "lib/ids", "embedding" }
    /// Embedding's backward.
    EMBEDDING_BACKWARD = "embedding_backward" { "lib/ids", "embedding_backward" }
    /// Cross-entropy (workgroup tree).
    CROSS_ENTROPY = "cross_entropy" { "lib/ce_params", "lib/ids", "lib/rows_tree", "cross_entropy" }
    /// Cross-entropy, subgroup reductions.
    CROSS_ENTROPY_SUBGROUP = "cross_entropy+subgroup" { "lib/ce_params", "lib/ids", "lib/rows_subgroup", "cross_entropy" }
    /// Cross-entropy's backward.
    CROSS_ENTROPY_BACKWARD = "cross_entropy_backward" { "lib/ce_params", "lib/ids", "cross_entropy_backward" }
    /// SwiGLU.
    SWIGLU = "swiglu" { "lib/ids", "swiglu" }
    /// SwiGLU's backward.
    SWIGLU_BACKWARD = "swiglu_backward" { "lib/ids", "swiglu_backward" }
    /// HydraLoRA's gated expansion.
    GATE = "gate" { "lib/ids", "gate" }
    /// The gated expansion's backward.
    GATE_BACKWARD = "gate_backward" { "lib/ids", "gate_backward" }
    /// Top-k routing.
    TOP_K = "top_k" { "lib/ids", "top_k" }
    /// AdamW.
    ADAMW = "adamw" { "lib/ids", "adamw" }
}

/// The matmul variant of `kernel` whose B (the weights) is stored as `weights` (f32 or
/// f16), writing C or, with `accumulate`, adding into it.
pub fn matmul(kernel: MatmulKernel, weights: DType, accumulate: bool) -> &'static Shader {
    use MatmulKernel::{General, Subgroup, Tiled};
    match (kernel, weights, accumulate) {
        (General, DType::F32, false) => &MATMUL,
        (General, DType::F32, true) => &MATMUL_ACCUMULATE,
        (General, DType::F16, false) => &MATMUL_F16,
        (General, DType::F16, true) => &MATMUL_F16_ACCUMULATE,
        (Tiled, DType::F32, false) => &MATMUL_TILED,
        (Tiled, DType::F32, true) => &MATMUL_TILED_ACCUMULATE,
        (Tiled, DType::F16, false) => &MATMUL_TILED_F16,
        (Tiled, DType::F16, true) => &MATMUL_TILED_F16_ACCUMULATE,
        (Subgroup, DType::F32, false) => &MATMUL_SUBGROUP,
        (Subgroup, DType::F32, true) => &MATMUL_SUBGROUP_ACCUMULATE,
        (Subgroup, DType::F16, false) => &MATMUL_SUBGROUP_F16,
        (Subgroup, DType::F16, true) => &MATMUL_SUBGROUP_F16_ACCUMULATE,
        (_, other, _) => unreachable!("matmul weights are f32 or f16, not {other:?}"),
    }
}
