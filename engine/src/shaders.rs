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

/// Lists every built-in kernel variant:
/// `IDENT = "name" { enable "ext", ..., const "...", ..., "file", ... }` where an `enable`
/// names a WGSL extension the variant turns on (directives must open the module), and a file
/// is a path under `shaders/` without `.wgsl`, the kernel file last.
macro_rules! shaders {
    ($(
        $(#[$doc:meta])*
        $ident:ident = $name:literal {
            $(enable $e:literal,)* $(const $c:literal,)* $($file:literal),+ $(,)?
        }
    )*) => {
        $(
            $(#[$doc])*
            pub const $ident: Shader = Shader {
                name: $name,
                source: concat!(
                    $("enable ", $e, ";\n",)*
                    $($c, "\n",)*
                    $(include_str!(concat!("../../shaders/", $file, ".wgsl")), "\n",)+
                ),
            };
        )*
        /// Every built-in kernel variant, for validation and for warming the pipeline cache.
        pub const ALL: &[&Shader] = &[$(&$ident),*];
        /// Each variant's name, its directive and constant lines (`enable x;`, then
        /// `const ...`) and its files (paths under `shaders/` without `.wgsl`), in the
        /// order they are concatenated.
        pub const COMPOSITION: &[(&str, &[&str], &[&str])] = &[
            $(($name, &[$(concat!("enable ", $e, ";"),)* $($c),*], &[$($file),+])),*
        ];
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
    /// Matmul, general kernel; B stored as f32.
    MATMUL = "matmul" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "matmul" }
    /// Matmul, general kernel; B stored as f32, summed into C.
    MATMUL_ACCUMULATE = "matmul+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "matmul" }
    /// Matmul, general kernel; B stored as f16.
    MATMUL_F16 = "matmul+f16" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "matmul" }
    /// Matmul, general kernel; B stored as f16, summed into C.
    MATMUL_F16_ACCUMULATE = "matmul+f16+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "matmul" }
    /// Matmul, general kernel; B stored as bf16.
    MATMUL_BF16 = "matmul+bf16" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_bf16", "matmul" }
    /// Matmul, general kernel; B stored as bf16, summed into C.
    MATMUL_BF16_ACCUMULATE = "matmul+bf16+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_bf16", "matmul" }
    /// Matmul, general kernel; B stored as q8_0.
    MATMUL_Q8_0 = "matmul+q8_0" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q8_0", "lib/block_bytes", "matmul" }
    /// Matmul, general kernel; B stored as q8_0, summed into C.
    MATMUL_Q8_0_ACCUMULATE = "matmul+q8_0+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q8_0", "lib/block_bytes", "matmul" }
    /// Matmul, general kernel; B stored as q4_0.
    MATMUL_Q4_0 = "matmul+q4_0" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_0", "lib/block_bytes", "matmul" }
    /// Matmul, general kernel; B stored as q4_0, summed into C.
    MATMUL_Q4_0_ACCUMULATE = "matmul+q4_0+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_0", "lib/block_bytes", "matmul" }
    /// Matmul, general kernel; B stored as q4_k.
    MATMUL_Q4K = "matmul+q4_k" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_k", "lib/block_bytes", "matmul" }
    /// Matmul, general kernel; B stored as q4_k, summed into C.
    MATMUL_Q4K_ACCUMULATE = "matmul+q4_k+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_k", "lib/block_bytes", "matmul" }
    /// Matmul, general kernel; B stored as q6_k.
    MATMUL_Q6K = "matmul+q6_k" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q6_k", "lib/block_bytes", "matmul" }
    /// Matmul, general kernel; B stored as q6_k, summed into C.
    MATMUL_Q6K_ACCUMULATE = "matmul+q6_k+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q6_k", "lib/block_bytes", "matmul" }
    /// Matmul, tiled kernel; B stored as f32.
    MATMUL_TILED = "matmul_tiled" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as f32, summed into C.
    MATMUL_TILED_ACCUMULATE = "matmul_tiled+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as f16.
    MATMUL_TILED_F16 = "matmul_tiled+f16" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as f16, summed into C.
    MATMUL_TILED_F16_ACCUMULATE = "matmul_tiled+f16+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as bf16.
    MATMUL_TILED_BF16 = "matmul_tiled+bf16" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_bf16", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as bf16, summed into C.
    MATMUL_TILED_BF16_ACCUMULATE = "matmul_tiled+bf16+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_bf16", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as q8_0.
    MATMUL_TILED_Q8_0 = "matmul_tiled+q8_0" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q8_0", "lib/block_bytes", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as q8_0, summed into C.
    MATMUL_TILED_Q8_0_ACCUMULATE = "matmul_tiled+q8_0+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q8_0", "lib/block_bytes", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as q4_0.
    MATMUL_TILED_Q4_0 = "matmul_tiled+q4_0" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_0", "lib/block_bytes", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as q4_0, summed into C.
    MATMUL_TILED_Q4_0_ACCUMULATE = "matmul_tiled+q4_0+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_0", "lib/block_bytes", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as q4_k.
    MATMUL_TILED_Q4K = "matmul_tiled+q4_k" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_k", "lib/block_bytes", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as q4_k, summed into C.
    MATMUL_TILED_Q4K_ACCUMULATE = "matmul_tiled+q4_k+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_k", "lib/block_bytes", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as q6_k.
    MATMUL_TILED_Q6K = "matmul_tiled+q6_k" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q6_k", "lib/block_bytes", "matmul_tiled" }
    /// Matmul, tiled kernel; B stored as q6_k, summed into C.
    MATMUL_TILED_Q6K_ACCUMULATE = "matmul_tiled+q6_k+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q6_k", "lib/block_bytes", "matmul_tiled" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as f32.
    MATMUL_SUBGROUP = "matmul_subgroup" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/weights_f32x4", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as f32, summed into C.
    MATMUL_SUBGROUP_ACCUMULATE = "matmul_subgroup+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/weights_f32x4", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as f16.
    MATMUL_SUBGROUP_F16 = "matmul_subgroup+f16" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/weights_f16", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as f16, summed into C.
    MATMUL_SUBGROUP_F16_ACCUMULATE = "matmul_subgroup+f16+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/weights_f16", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as bf16.
    MATMUL_SUBGROUP_BF16 = "matmul_subgroup+bf16" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/weights_bf16", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as bf16, summed into C.
    MATMUL_SUBGROUP_BF16_ACCUMULATE = "matmul_subgroup+bf16+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/weights_bf16", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as q8_0.
    MATMUL_SUBGROUP_Q8_0 = "matmul_subgroup+q8_0" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/weights_q8_0", "lib/block_bytes", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as q8_0, summed into C.
    MATMUL_SUBGROUP_Q8_0_ACCUMULATE = "matmul_subgroup+q8_0+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/weights_q8_0", "lib/block_bytes", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as q4_0.
    MATMUL_SUBGROUP_Q4_0 = "matmul_subgroup+q4_0" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/weights_q4_0", "lib/block_bytes", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as q4_0, summed into C.
    MATMUL_SUBGROUP_Q4_0_ACCUMULATE = "matmul_subgroup+q4_0+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/weights_q4_0", "lib/block_bytes", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as q4_k.
    MATMUL_SUBGROUP_Q4K = "matmul_subgroup+q4_k" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/weights_q4_k", "lib/block_bytes", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as q4_k, summed into C.
    MATMUL_SUBGROUP_Q4K_ACCUMULATE = "matmul_subgroup+q4_k+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/weights_q4_k", "lib/block_bytes", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as q6_k.
    MATMUL_SUBGROUP_Q6K = "matmul_subgroup+q6_k" { const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/weights_q6_k", "lib/block_bytes", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, subgroup kernel (8-lane subgroups); B stored as q6_k, summed into C.
    MATMUL_SUBGROUP_Q6K_ACCUMULATE = "matmul_subgroup+q6_k+accumulate" { const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/weights_q6_k", "lib/block_bytes", "lib/lanes8", "matmul_subgroup" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as f32.
    MATMUL_COOP_F16X16 = "matmul_coop+f16x16" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as f32, summed into C.
    MATMUL_COOP_F16X16_ACCUMULATE = "matmul_coop+f16x16+accumulate" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as f16.
    MATMUL_COOP_F16X16_F16 = "matmul_coop+f16x16+f16" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as f16, summed into C.
    MATMUL_COOP_F16X16_F16_ACCUMULATE = "matmul_coop+f16x16+f16+accumulate" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as bf16.
    MATMUL_COOP_F16X16_BF16 = "matmul_coop+f16x16+bf16" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_bf16", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as bf16, summed into C.
    MATMUL_COOP_F16X16_BF16_ACCUMULATE = "matmul_coop+f16x16+bf16+accumulate" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_bf16", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as q8_0.
    MATMUL_COOP_F16X16_Q8_0 = "matmul_coop+f16x16+q8_0" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q8_0", "lib/block_bytes", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as q8_0, summed into C.
    MATMUL_COOP_F16X16_Q8_0_ACCUMULATE = "matmul_coop+f16x16+q8_0+accumulate" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q8_0", "lib/block_bytes", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as q4_0.
    MATMUL_COOP_F16X16_Q4_0 = "matmul_coop+f16x16+q4_0" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_0", "lib/block_bytes", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as q4_0, summed into C.
    MATMUL_COOP_F16X16_Q4_0_ACCUMULATE = "matmul_coop+f16x16+q4_0+accumulate" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_0", "lib/block_bytes", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as q4_k.
    MATMUL_COOP_F16X16_Q4K = "matmul_coop+f16x16+q4_k" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_k", "lib/block_bytes", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as q4_k, summed into C.
    MATMUL_COOP_F16X16_Q4K_ACCUMULATE = "matmul_coop+f16x16+q4_k+accumulate" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_k", "lib/block_bytes", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as q6_k.
    MATMUL_COOP_F16X16_Q6K = "matmul_coop+f16x16+q6_k" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q6_k", "lib/block_bytes", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (16x16x16 f16 fragments, f32 sums); B stored as q6_k, summed into C.
    MATMUL_COOP_F16X16_Q6K_ACCUMULATE = "matmul_coop+f16x16+q6_k+accumulate" { enable "f16", enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q6_k", "lib/block_bytes", "lib/coop_f16x16", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as f32.
    MATMUL_COOP_F32X8 = "matmul_coop+f32x8" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as f32, summed into C.
    MATMUL_COOP_F32X8_ACCUMULATE = "matmul_coop+f32x8+accumulate" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f32", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as f16.
    MATMUL_COOP_F32X8_F16 = "matmul_coop+f32x8+f16" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as f16, summed into C.
    MATMUL_COOP_F32X8_F16_ACCUMULATE = "matmul_coop+f32x8+f16+accumulate" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_f16", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as bf16.
    MATMUL_COOP_F32X8_BF16 = "matmul_coop+f32x8+bf16" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_bf16", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as bf16, summed into C.
    MATMUL_COOP_F32X8_BF16_ACCUMULATE = "matmul_coop+f32x8+bf16+accumulate" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_bf16", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as q8_0.
    MATMUL_COOP_F32X8_Q8_0 = "matmul_coop+f32x8+q8_0" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q8_0", "lib/block_bytes", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as q8_0, summed into C.
    MATMUL_COOP_F32X8_Q8_0_ACCUMULATE = "matmul_coop+f32x8+q8_0+accumulate" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q8_0", "lib/block_bytes", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as q4_0.
    MATMUL_COOP_F32X8_Q4_0 = "matmul_coop+f32x8+q4_0" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_0", "lib/block_bytes", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as q4_0, summed into C.
    MATMUL_COOP_F32X8_Q4_0_ACCUMULATE = "matmul_coop+f32x8+q4_0+accumulate" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_0", "lib/block_bytes", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as q4_k.
    MATMUL_COOP_F32X8_Q4K = "matmul_coop+f32x8+q4_k" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_k", "lib/block_bytes", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as q4_k, summed into C.
    MATMUL_COOP_F32X8_Q4K_ACCUMULATE = "matmul_coop+f32x8+q4_k+accumulate" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q4_k", "lib/block_bytes", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as q6_k.
    MATMUL_COOP_F32X8_Q6K = "matmul_coop+f32x8+q6_k" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = false;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q6_k", "lib/block_bytes", "lib/coop_f32x8", "matmul_coop" }
    /// Matmul, cooperative matrices (8x8x8 f32 fragments); B stored as q6_k, summed into C.
    MATMUL_COOP_F32X8_Q6K_ACCUMULATE = "matmul_coop+f32x8+q6_k+accumulate" { enable "wgpu_cooperative_matrix", const "const ACCUMULATE: bool = true;", "lib/matmul_params", "lib/matmul_scalar", "lib/weights_q6_k", "lib/block_bytes", "lib/coop_f32x8", "matmul_coop" }
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
    /// Embedding lookup, the table stored as f32.
    EMBEDDING = "embedding" { "lib/ids", "lib/weights_f32", "embedding" }
    /// Embedding lookup, the table stored as f16.
    EMBEDDING_F16 = "embedding+f16" { "lib/ids", "lib/weights_f16", "embedding" }
    /// Embedding lookup, the table stored as bf16.
    EMBEDDING_BF16 = "embedding+bf16" { "lib/ids", "lib/weights_bf16", "embedding" }
    /// Embedding lookup, the table stored as q8_0.
    EMBEDDING_Q8_0 = "embedding+q8_0" { "lib/ids", "lib/weights_q8_0", "lib/block_bytes", "embedding" }
    /// Embedding lookup, the table stored as q4_0.
    EMBEDDING_Q4_0 = "embedding+q4_0" { "lib/ids", "lib/weights_q4_0", "lib/block_bytes", "embedding" }
    /// Embedding lookup, the table stored as q4_k.
    EMBEDDING_Q4K = "embedding+q4_k" { "lib/ids", "lib/weights_q4_k", "lib/block_bytes", "embedding" }
    /// Embedding lookup, the table stored as q6_k.
    EMBEDDING_Q6K = "embedding+q6_k" { "lib/ids", "lib/weights_q6_k", "lib/block_bytes", "embedding" }
    /// Embedding's backward.
    EMBEDDING_BACKWARD = "embedding_backward" { "lib/ids", "embedding_backward" }
    /// Cross-entropy (workgroup tree).
    CROSS_ENTROPY = "cross_entropy" { "lib/ce_params", "lib/ids", "lib/rows_tree", "cross_entropy" }
    /// Cross-entropy, subgroup reductions.
    CROSS_ENTROPY_SUBGROUP = "cross_entropy+subgroup" { "lib/ce_params", "lib/ids", "lib/rows_subgroup", "cross_entropy" }
    /// Cross-entropy's backward.
    CROSS_ENTROPY_BACKWARD = "cross_entropy_backward" { "lib/ce_params", "lib/ids", "cross_entropy_backward" }
    /// SwiGLU.
    SWIGLU = "swiglu" { "lib/ids", "lib/swiglu_io", "swiglu" }
    /// SwiGLU's backward.
    SWIGLU_BACKWARD = "swiglu_backward" { "lib/ids", "lib/swiglu_io", "swiglu_backward" }
    /// HydraLoRA's gated expansion.
    GATE = "gate" { "lib/ids", "gate" }
    /// The gated expansion's backward.
    GATE_BACKWARD = "gate_backward" { "lib/ids", "gate_backward" }
    /// Top-k routing.
    TOP_K = "top_k" { "lib/ids", "top_k" }
    /// AdamW.
    ADAMW = "adamw" { "lib/ids", "adamw" }
}

/// The storage formats of a matmul's B (the weights), in [`MATMUL_VARIANTS`]' order.
pub const WEIGHT_FORMATS: [DType; 7] = DType::WEIGHT_FORMATS;

/// Every matmul variant: `[kernel][weight format][accumulate]`, kernels in
/// [`MatmulKernel`]'s order (general, tiled, subgroup, then the cooperative-matrix kernels
/// f16x16 and f32x8), formats as [`WEIGHT_FORMATS`].
pub const MATMUL_VARIANTS: [[[&Shader; 2]; 7]; 5] = [
    [
        [&MATMUL, &MATMUL_ACCUMULATE],
        [&MATMUL_F16, &MATMUL_F16_ACCUMULATE],
        [&MATMUL_BF16, &MATMUL_BF16_ACCUMULATE],
        [&MATMUL_Q8_0, &MATMUL_Q8_0_ACCUMULATE],
        [&MATMUL_Q4_0, &MATMUL_Q4_0_ACCUMULATE],
        [&MATMUL_Q4K, &MATMUL_Q4K_ACCUMULATE],
        [&MATMUL_Q6K, &MATMUL_Q6K_ACCUMULATE],
    ],
    [
        [&MATMUL_TILED, &MATMUL_TILED_ACCUMULATE],
        [&MATMUL_TILED_F16, &MATMUL_TILED_F16_ACCUMULATE],
        [&MATMUL_TILED_BF16, &MATMUL_TILED_BF16_ACCUMULATE],
        [&MATMUL_TILED_Q8_0, &MATMUL_TILED_Q8_0_ACCUMULATE],
        [&MATMUL_TILED_Q4_0, &MATMUL_TILED_Q4_0_ACCUMULATE],
        [&MATMUL_TILED_Q4K, &MATMUL_TILED_Q4K_ACCUMULATE],
        [&MATMUL_TILED_Q6K, &MATMUL_TILED_Q6K_ACCUMULATE],
    ],
    [
        [&MATMUL_SUBGROUP, &MATMUL_SUBGROUP_ACCUMULATE],
        [&MATMUL_SUBGROUP_F16, &MATMUL_SUBGROUP_F16_ACCUMULATE],
        [&MATMUL_SUBGROUP_BF16, &MATMUL_SUBGROUP_BF16_ACCUMULATE],
        [&MATMUL_SUBGROUP_Q8_0, &MATMUL_SUBGROUP_Q8_0_ACCUMULATE],
        [&MATMUL_SUBGROUP_Q4_0, &MATMUL_SUBGROUP_Q4_0_ACCUMULATE],
        [&MATMUL_SUBGROUP_Q4K, &MATMUL_SUBGROUP_Q4K_ACCUMULATE],
        [&MATMUL_SUBGROUP_Q6K, &MATMUL_SUBGROUP_Q6K_ACCUMULATE],
    ],
    [
        [&MATMUL_COOP_F16X16, &MATMUL_COOP_F16X16_ACCUMULATE],
        [&MATMUL_COOP_F16X16_F16, &MATMUL_COOP_F16X16_F16_ACCUMULATE],
        [
            &MATMUL_COOP_F16X16_BF16,
            &MATMUL_COOP_F16X16_BF16_ACCUMULATE,
        ],
        [
            &MATMUL_COOP_F16X16_Q8_0,
            &MATMUL_COOP_F16X16_Q8_0_ACCUMULATE,
        ],
        [
            &MATMUL_COOP_F16X16_Q4_0,
            &MATMUL_COOP_F16X16_Q4_0_ACCUMULATE,
        ],
        [&MATMUL_COOP_F16X16_Q4K, &MATMUL_COOP_F16X16_Q4K_ACCUMULATE],
        [&MATMUL_COOP_F16X16_Q6K, &MATMUL_COOP_F16X16_Q6K_ACCUMULATE],
    ],
    [
        [&MATMUL_COOP_F32X8, &MATMUL_COOP_F32X8_ACCUMULATE],
        [&MATMUL_COOP_F32X8_F16, &MATMUL_COOP_F32X8_F16_ACCUMULATE],
        [&MATMUL_COOP_F32X8_BF16, &MATMUL_COOP_F32X8_BF16_ACCUMULATE],
        [&MATMUL_COOP_F32X8_Q8_0, &MATMUL_COOP_F32X8_Q8_0_ACCUMULATE],
        [&MATMUL_COOP_F32X8_Q4_0, &MATMUL_COOP_F32X8_Q4_0_ACCUMULATE],
        [&MATMUL_COOP_F32X8_Q4K, &MATMUL_COOP_F32X8_Q4K_ACCUMULATE],
        [&MATMUL_COOP_F32X8_Q6K, &MATMUL_COOP_F32X8_Q6K_ACCUMULATE],
    ],
];

/// The embedding lookups, in [`WEIGHT_FORMATS`]' order.
pub const EMBEDDING_VARIANTS: [&Shader; 7] = [
    &EMBEDDING,
    &EMBEDDING_F16,
    &EMBEDDING_BF16,
    &EMBEDDING_Q8_0,
    &EMBEDDING_Q4_0,
    &EMBEDDING_Q4K,
    &EMBEDDING_Q6K,
];

/// The embedding lookup whose table is stored as `format`.
pub fn embedding(format: DType) -> &'static Shader {
    EMBEDDING_VARIANTS[weight_format_index(format)]
}

fn weight_format_index(format: DType) -> usize {
    WEIGHT_FORMATS
        .iter()
        .position(|&f| f == format)
        .unwrap_or_else(|| unreachable!("weights are never {format:?}"))
}

/// The matmul variant of `kernel` whose B (the weights) is stored as `weights`, writing C
/// or, with `accumulate`, adding into it.
pub fn matmul(kernel: MatmulKernel, weights: DType, accumulate: bool) -> &'static Shader {
    let format = weight_format_index(weights);
    let kernel = match kernel {
        MatmulKernel::General => 0,
        MatmulKernel::Tiled => 1,
        MatmulKernel::Subgroup => 2,
        MatmulKernel::CoopF16x16 => 3,
        MatmulKernel::CoopF32x8 => 4,
    };
    MATMUL_VARIANTS[kernel][format][accumulate as usize]
}

/// The names of a WGSL module's compute entry points (`@compute ... fn name(`), in order.
pub fn entry_points(source: &str) -> Vec<&str> {
    source
        .split("@compute")
        .skip(1)
        .filter_map(|after| {
            let rest = &after[after.find("fn ")? + 3..];
            Some(rest[..rest.find('(')?].trim())
        })
        .collect()
}
