//! Every WGSL kernel file, embedded in the binary. Binding convention for all of them:
//! `@binding(0)` is the params block (`var<storage, read>`), then the read-only inputs,
//! then the read-write outputs, in that order.

/// One `.wgsl` file from `shaders/`.
#[derive(Debug)]
pub struct Shader {
    /// The file's stem (`matmul` for `shaders/matmul.wgsl`), and `+variant` for a variant of
    /// the file: the pipeline cache's key, so it must be unique per source.
    pub name: &'static str,
    /// The WGSL source text (a variant's: its constants, then the file).
    pub source: &'static str,
}

macro_rules! shader {
    ($ident:ident, $file:literal) => {
        #[doc = concat!("`shaders/", $file, ".wgsl`.")]
        pub const $ident: Shader = Shader {
            name: $file,
            source: include_str!(concat!("../../shaders/", $file, ".wgsl")),
        };
    };
}

/// A matmul file in two variants, as a compile-time `ACCUMULATE` constant (a run-time flag
/// in the store made the subgroup kernel's output-bound products 1.5x slower on lavapipe):
/// C = product, and C += product (gradients summed in place, `matmul_accumulate`).
macro_rules! summing_shader {
    ($plain:ident, $summing:ident, $file:literal) => {
        #[doc = concat!("`shaders/", $file, ".wgsl`, writing C.")]
        pub const $plain: Shader = Shader {
            name: $file,
            source: concat!(
                "const ACCUMULATE: bool = false;\n",
                include_str!(concat!("../../shaders/", $file, ".wgsl"))
            ),
        };
        #[doc = concat!("`shaders/", $file, ".wgsl`, adding into C.")]
        pub const $summing: Shader = Shader {
            name: concat!($file, "+accumulate"),
            source: concat!(
                "const ACCUMULATE: bool = true;\n",
                include_str!(concat!("../../shaders/", $file, ".wgsl"))
            ),
        };
    };
}

shader!(ELEMENTWISE, "elementwise");
shader!(FILL, "fill");
shader!(UNARY, "unary");
shader!(UNARY_BACKWARD, "unary_backward");
shader!(REDUCE, "reduce");
shader!(COPY, "copy");
shader!(CAST, "cast");
summing_shader!(MATMUL, MATMUL_ACCUMULATE, "matmul");
summing_shader!(MATMUL_F16, MATMUL_F16_ACCUMULATE, "matmul_f16");
summing_shader!(
    MATMUL_SUBGROUP,
    MATMUL_SUBGROUP_ACCUMULATE,
    "matmul_subgroup"
);
summing_shader!(MATMUL_TILED, MATMUL_TILED_ACCUMULATE, "matmul_tiled");
summing_shader!(MATMUL_SPLITK, MATMUL_SPLITK_ACCUMULATE, "matmul_splitk");
shader!(SOFTMAX, "softmax");
shader!(SOFTMAX_BACKWARD, "softmax_backward");
shader!(FLASH_ATTENTION, "flash_attention");
shader!(FLASH_ATTENTION_BACKWARD, "flash_attention_backward");
shader!(FLASH_ATTENTION_SUBGROUP, "flash_attention_subgroup");
shader!(
    FLASH_ATTENTION_BACKWARD_SUBGROUP,
    "flash_attention_backward_subgroup"
);
shader!(RMS_NORM, "rms_norm");
shader!(RMS_NORM_BACKWARD, "rms_norm_backward");
shader!(ROPE, "rope");
shader!(EMBEDDING, "embedding");
shader!(EMBEDDING_BACKWARD, "embedding_backward");
shader!(CROSS_ENTROPY, "cross_entropy");
shader!(CROSS_ENTROPY_BACKWARD, "cross_entropy_backward");
shader!(SWIGLU, "swiglu");
shader!(SWIGLU_BACKWARD, "swiglu_backward");
shader!(GATE, "gate");
shader!(GATE_BACKWARD, "gate_backward");
shader!(TOP_K, "top_k");
shader!(ADAMW, "adamw");
// Subgroup twins of the row reductions (devices with SUBGROUP; see Device::subgroup_reductions).
shader!(SOFTMAX_SUBGROUP, "softmax_subgroup");
shader!(SOFTMAX_BACKWARD_SUBGROUP, "softmax_backward_subgroup");
shader!(RMS_NORM_SUBGROUP, "rms_norm_subgroup");
shader!(RMS_NORM_BACKWARD_SUBGROUP, "rms_norm_backward_subgroup");
shader!(CROSS_ENTROPY_SUBGROUP, "cross_entropy_subgroup");
shader!(REDUCE_SUBGROUP, "reduce_subgroup");

/// All kernels, for validation and for warming the pipeline cache.
pub const ALL: &[&Shader] = &[
    &ELEMENTWISE,
    &FILL,
    &UNARY,
    &UNARY_BACKWARD,
    &REDUCE,
    &COPY,
    &CAST,
    &MATMUL,
    &MATMUL_F16,
    &MATMUL_SUBGROUP,
    &MATMUL_TILED,
    &MATMUL_SPLITK,
    &MATMUL_ACCUMULATE,
    &MATMUL_F16_ACCUMULATE,
    &MATMUL_SUBGROUP_ACCUMULATE,
    &MATMUL_TILED_ACCUMULATE,
    &MATMUL_SPLITK_ACCUMULATE,
    &SOFTMAX,
    &SOFTMAX_BACKWARD,
    &FLASH_ATTENTION,
    &FLASH_ATTENTION_BACKWARD,
    &FLASH_ATTENTION_SUBGROUP,
    &FLASH_ATTENTION_BACKWARD_SUBGROUP,
    &RMS_NORM,
    &RMS_NORM_BACKWARD,
    &ROPE,
    &EMBEDDING,
    &EMBEDDING_BACKWARD,
    &CROSS_ENTROPY,
    &CROSS_ENTROPY_BACKWARD,
    &SWIGLU,
    &SWIGLU_BACKWARD,
    &GATE,
    &GATE_BACKWARD,
    &TOP_K,
    &ADAMW,
    &SOFTMAX_SUBGROUP,
    &SOFTMAX_BACKWARD_SUBGROUP,
    &RMS_NORM_SUBGROUP,
    &RMS_NORM_BACKWARD_SUBGROUP,
    &CROSS_ENTROPY_SUBGROUP,
    &REDUCE_SUBGROUP,
];
