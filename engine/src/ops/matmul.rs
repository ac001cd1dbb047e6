//! Batched matrix multiply with transpose flags. Transposes and broadcasts are strides
//! handed to one kernel, never copies.
//!
//! Three kernels compute the same product on every device, and two more on the matrix units
//! of devices with cooperative matrices (see [`MatmulKernel`]); [`matmul_t`] picks one per
//! shape and device (the rule is `choose`, below), and [`matmul_with`] pins one (tests and
//! benchmarks).
//! Any of them can split K: each split sums its k range into a slice of a scratch tensor and
//! a second pass adds the slices in a fixed order, so results are deterministic.

use crate::device::{CoopUse, Device};
use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::grid;
use crate::ops::kernel_params::impl_kernel_params;
use crate::shaders;
use crate::tensor::{DType, Tensor};

const OP: &str = "matmul";

/// The WGSL kernels a product can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulKernel {
    /// `matmul.wgsl`: 4x4 outputs per invocation, scalar loads with any strides, no workgroup
    /// memory. Runs every shape on every device; the fallback.
    General,
    /// `matmul_tiled.wgsl`: 64x64 tiles staged through workgroup memory in 16-deep k slices,
    /// two barriers per slice. Any shape and strides. The fast kernel on real GPUs.
    Tiled,
    /// `matmul_subgroup.wgsl`: barrier-free, a workgroup is one subgroup of 8 lanes sharing
    /// 32 (or 8) rows through `subgroupBroadcast`, vec4 loads, 8 columns per lane. The fast
    /// kernel on CPU Vulkan drivers (lavapipe). Needs subgroups of exactly 8, N % 4 == 0,
    /// the contiguous dim of each operand % 4 == 0, and K % 4 == 0 unless both operands
    /// are stored with K outermost (A^T B: weight gradients over any token count).
    Subgroup,
    /// `matmul_coop.wgsl` with 16x16x16 fragments: A and B rounded to f16 as they are staged
    /// in workgroup memory, products summed in f32 by the matrix units (tensor cores).
    /// Any shape and strides; needs a device opened with cooperative matrices that lists
    /// 16x16x16 f16 x f16 -> f32, `SHADER_F16`, and subgroups of at most 32 lanes.
    CoopF16x16,
    /// `matmul_coop.wgsl` with 8x8x8 f32 fragments (Metal's simdgroup matrices): f32 all
    /// through. Needs a device that lists 8x8x8 f32 -> f32, and subgroups of at most 32.
    CoopF32x8,
}

impl MatmulKernel {
    /// The kernels that need no cooperative matrices (general and tiled run on every
    /// device), for tests and benchmarks that try each.
    pub const ALL: [MatmulKernel; 3] = [
        MatmulKernel::General,
        MatmulKernel::Tiled,
        MatmulKernel::Subgroup,
    ];

    /// The cooperative-matrix kernels, in the order [`matmul_t`] prefers them.
    pub const COOPERATIVE: [MatmulKernel; 2] = [MatmulKernel::CoopF16x16, MatmulKernel::CoopF32x8];

    /// The kernel's short name (`general`, `tiled`, `subgroup`, `coop-f16x16`,
    /// `coop-f32x8`), as benchmarks print it and `--kernel` takes it.
    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::General => "general",
            MatmulKernel::Tiled => "tiled",
            MatmulKernel::Subgroup => "subgroup",
            MatmulKernel::CoopF16x16 => "coop-f16x16",
            MatmulKernel::CoopF32x8 => "coop-f32x8",
        }
    }

    /// The kernel named `name` (as [`MatmulKernel::name`] writes it).
    pub fn from_name(name: &str) -> Option<MatmulKernel> {
        MatmulKernel::ALL
            .into_iter()
            .chain(MatmulKernel::COOPERATIVE)
            .find(|k| k.name() == name)
    }

    /// The fragment configuration a cooperative-matrix kernel needs the adapter to list
    /// (None for the others).
    pub fn fragment(self) -> Option<wgpu::CooperativeMatrixProperties> {
        use wgpu::CooperativeScalarType::{F16, F32};
        let (size, ab_type) = match self {
            MatmulKernel::CoopF16x16 => (16, F16),
            MatmulKernel::CoopF32x8 => (8, F32),
            _ => return None,
        };
        Some(wgpu::CooperativeMatrixProperties {
            m_size: size,
            n_size: size,
            k_size: size,
            ab_type,
            cr_type: F32,
            saturating_accumulation: false,
        })
    }

    /// Whether `listed` (an adapter's [`wgpu::Adapter::cooperative_matrix_properties`])
    /// has this cooperative-matrix kernel's fragment configuration.
    pub fn listed_in(self, listed: &[wgpu::CooperativeMatrixProperties]) -> bool {
        self.fragment().is_some_and(|want| {
            listed.iter().any(|l| {
                (l.m_size, l.n_size, l.k_size, l.ab_type, l.cr_type)
                    == (
                        want.m_size,
                        want.n_size,
                        want.k_size,
                        want.ab_type,
                        want.cr_type,
                    )
            })
        })
    }

    fn is_cooperative(self) -> bool {
        self.fragment().is_some()
    }
}

impl std::fmt::Display for MatmulKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A kernel and how many ranges K is split into (1: no split-K).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulVariant {
    /// Which kernel computes the product.
    pub kernel: MatmulKernel,
    /// K ranges asked for; the run may use fewer (each range is rounded to the kernel's step,
    /// and the partial sums must fit one binding). 0 or 1: no split.
    pub splits: usize,
}

impl MatmulVariant {
    /// A kernel with `splits` K ranges.
    pub fn new(kernel: MatmulKernel, splits: usize) -> MatmulVariant {
        MatmulVariant { kernel, splits }
    }
}

impl std::fmt::Display for MatmulVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.splits > 1 {
            write!(f, "{} split-k {}", self.kernel, self.splits)
        } else {
            write!(f, "{}", self.kernel)
        }
    }
}

/// Strides (in elements) of one operand as the kernels read it: between batches (0: shared),
/// along the rows and along the columns of `op(x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Strides {
    pub batch: usize,
    pub row: usize,
    pub col: usize,
}

/// One product as the kernels see it: `batch` products C[m, n] = alpha A[m, k] B[k, n] with
/// strided operands; C is contiguous [batch, m, n]. A is f32; B (the weights) is stored as
/// `weights` (f32, or a storage format such as f16, bf16 or a GGUF block format), which
/// picks the kernel's weight-load piece.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Problem {
    pub alpha: f32,
    /// The caller takes both operands at f16 precision (`matmul_half_inputs`): the f16
    /// cooperative kernel may serve it whatever B's storage.
    pub half_inputs: bool,
    pub weights: DType,
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Strides,
    pub b: Strides,
}

/// How one operand is laid out: its batch count and matrix dims as stored.
struct Operand {
    batch: usize,
    rows: usize, // the stored second-to-last dim
    cols: usize, // the stored last dim
}

fn operand(t: &Tensor) -> Result<Operand> {
    if t.rank() < 2 {
        return Err(Error::InvalidArgument {
            op: OP,
            shape: t.shape().to_vec(),
            why: "matmul needs rank >= 2".into(),
        });
    }
    let r = t.rank();
    Ok(Operand {
        batch: t.shape()[..r - 2].iter().product(),
        rows: t.dim(r - 2),
        cols: t.dim(r - 1),
    })
}

/// Checks the operands and returns the product's kernel view and the output shape.
fn problem(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<(Problem, Vec<usize>)> {
    a.expect_same_device(OP, b)?;
    a.expect_dtype(OP, DType::F32, "f32")?;
    if !b.dtype().is_weight_storage() {
        b.expect_dtype(
            OP,
            DType::F32,
            "f32 (or a weight storage format for the second operand)",
        )?;
    }
    let per_block = b.dtype().block_elements();
    if per_block > 1 && b.shape().last().is_none_or(|&cols| cols % per_block != 0) {
        return Err(Error::InvalidArgument {
            op: OP,
            shape: b.shape().to_vec(),
            why: format!(
                "{} weights are blocks of {per_block} along the last dim",
                b.dtype().name()
            ),
        });
    }
    let (oa, ob) = (operand(a)?, operand(b)?);
    let (m, k) = if ta {
        (oa.cols, oa.rows)
    } else {
        (oa.rows, oa.cols)
    };
    let (kb, n) = if tb {
        (ob.cols, ob.rows)
    } else {
        (ob.rows, ob.cols)
    };
    let mismatch = |why: String| Error::ShapeMismatch {
        op: OP,
        lhs: a.shape().to_vec(),
        rhs: b.shape().to_vec(),
        why,
    };
    if k != kb {
        return Err(mismatch(format!(
            "inner dims differ ({k} vs {kb}; transposed: {ta}, {tb})"
        )));
    }
    let a_shared = a.rank() == 2 && b.rank() > 2;
    let b_shared = b.rank() == 2 && a.rank() > 2;
    if !a_shared && !b_shared && a.shape()[..a.rank() - 2] != b.shape()[..b.rank() - 2] {
        return Err(mismatch("batch dims differ".into()));
    }
    let lead = if a_shared {
        &b.shape()[..b.rank() - 2]
    } else {
        &a.shape()[..a.rank() - 2]
    };
    let mut out_shape = lead.to_vec();
    out_shape.extend([m, n]);
    for t in [a, b] {
        t.expect_bindable(OP)?;
    }
    let batch = oa.batch.max(ob.batch);
    // A batched, untransposed A times a shared B is one tall matrix product.
    let (m_eff, batch_eff) = if b_shared && !ta {
        (m * batch, 1)
    } else {
        (m, batch)
    };
    let (a_row, a_col) = if ta { (1, m) } else { (k, 1) };
    let (b_row, b_col) = if tb { (1, k) } else { (n, 1) };
    let a_batch = if a_shared || batch_eff == 1 { 0 } else { m * k };
    let b_batch = if b_shared || batch_eff == 1 { 0 } else { k * n };
    let problem = Problem {
        alpha: 1.0,
        half_inputs: false,
        weights: b.dtype(),
        batch: batch_eff,
        m: m_eff,
        n,
        k,
        a: Strides {
            batch: a_batch,
            row: a_row,
            col: a_col,
        },
        b: Strides {
            batch: b_batch,
            row: b_row,
            col: b_col,
        },
    };
    Ok((problem, out_shape))
}

/// `op(a) op(b)`, where `op(x)` transposes the last two dims when its flag is set.
/// a: [..., M, K] (or [..., K, M] with `ta`), b: [..., K, N] (or [..., N, K] with `tb`);
/// a rank-2 operand is shared by every batch of the other. Result: [..., M, N].
/// The kernel is picked per shape and device ([`matmul_variant`] says which).
pub fn matmul_t(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    matmul_scaled(a, b, ta, tb, 1.0)
}

/// `alpha op(a) op(b)` in one kernel (the scale applied as C is stored), as [`matmul_t`]:
/// a LoRA layer's `scale * z B^T` costs no scaling pass forward or backward.
pub fn matmul_scaled(a: &Tensor, b: &Tensor, ta: bool, tb: bool, alpha: f32) -> Result<Tensor> {
    let (mut p, out_shape) = problem(a, b, ta, tb)?;
    p.alpha = alpha;
    let variant = choose(a.device(), &p);
    run(a, b, ta, tb, &p, Output::New(out_shape), variant)
}

/// `op(a) op(b)` with both operands at f16 precision and the sums in f32, as tensor cores
/// compute (`--precision mixed`): on a device with f16 cooperative matrices, a large product
/// runs on that kernel, which rounds A and B as it loads them; anywhere else `a` goes
/// through [`Tensor::round_half`] first and today's kernels take it (the same numbers, for a
/// B already stored in f16 or narrower). Recorded as the plain product: the backward's
/// products (`dY W`) keep f32 inputs, so no gradient is ever rounded.
pub fn matmul_half_inputs(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let (mut p, out_shape) = problem(a, b, ta, tb)?;
    p.half_inputs = true;
    let variant = choose(a.device(), &p);
    match variant.kernel {
        MatmulKernel::CoopF16x16 => run(a, b, ta, tb, &p, Output::New(out_shape), variant),
        _ => matmul_t(&a.round_half()?, b, ta, tb),
    }
}

/// `c + alpha op(a) op(b)` as one recorded op (the gradients: `c`'s is the output's, the
/// product's are [`matmul_scaled`]'s). The product is summed into `c`'s own buffer when the
/// caller hands over the only handle to a tensor whose backward never reads its value (a
/// fresh product, such as a layer's `x W^T`): an adapted layer's `x W^T + scale z B^T` then
/// costs no add kernel and no temporary. Otherwise a product and an add.
pub fn add_matmul_scaled(
    c: Tensor,
    a: &Tensor,
    b: &Tensor,
    (ta, tb, alpha): (bool, bool, f32),
) -> Result<Tensor> {
    let (mut p, out_shape) = problem(a, b, ta, tb)?;
    p.alpha = alpha;
    c.expect_same_device(OP, a)?;
    let in_place = out_shape == c.shape()
        && c.dtype() == DType::F32
        && c.is_sole_handle()
        && c.op().is_none_or(|op| !op.reads_output());
    if !in_place {
        return c.add(&matmul_scaled(a, b, ta, tb, alpha)?);
    }
    let variant = choose(a.device(), &p);
    let sum = run(a, b, ta, tb, &p, Output::SumInto(c), variant)?; // c's buffer, c + product
                                                                   // The old `c` stays in the graph as the op's input; the output shares its buffer.
    Ok(sum.detach().with_op(
        || Op::MatmulAdd {
            c: sum.clone(),
            a: a.clone(),
            b: b.clone(),
            ta,
            tb,
            alpha,
        },
        &[&sum, a, b],
    ))
}

/// `acc + op(a) op(b)` (the shapes as in [`matmul_t`]), the product summed straight into
/// `acc`'s buffer when nothing else holds `acc` and no graph is being recorded: a gradient
/// that several products contribute to then costs no add kernel and no temporary (the
/// backward pass sums every matmul input gradient this way). Otherwise a product and an
/// add, with the same result. The returned tensor is `acc` itself when summed in place.
pub fn matmul_accumulate(
    acc: Tensor,
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
) -> Result<Tensor> {
    accumulate(acc, a, b, (ta, tb, 1.0), None)
}

/// `acc + alpha op(a) op(b)`, as [`matmul_accumulate`] (the backward of a scaled product).
pub(crate) fn matmul_accumulate_scaled(
    acc: Tensor,
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    alpha: f32,
) -> Result<Tensor> {
    accumulate(acc, a, b, (ta, tb, alpha), None)
}

/// [`matmul_accumulate`] on a pinned kernel and number of K splits (tests, benchmarks);
/// [`Error::Unsupported`] as for [`matmul_with`].
pub fn matmul_accumulate_with(
    acc: Tensor,
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    variant: MatmulVariant,
) -> Result<Tensor> {
    accumulate(acc, a, b, (ta, tb, 1.0), Some(variant))
}

/// `acc + alpha op(a) op(b)` on `variant` (or the automatic choice).
fn accumulate(
    acc: Tensor,
    a: &Tensor,
    b: &Tensor,
    (ta, tb, alpha): (bool, bool, f32),
    variant: Option<MatmulVariant>,
) -> Result<Tensor> {
    let (mut p, out_shape) = problem(a, b, ta, tb)?;
    p.alpha = alpha;
    let variant = variant.unwrap_or_else(|| choose(a.device(), &p));
    refuse_unsupported(a, b, ta, tb, &p, variant.kernel)?;
    if out_shape != acc.shape() {
        return Err(Error::ShapeMismatch {
            op: "matmul_accumulate",
            lhs: acc.shape().to_vec(),
            rhs: out_shape,
            why: "the sum so far must have the product's shape".into(),
        });
    }
    acc.expect_same_device("matmul_accumulate", a)?;
    if acc.dtype() != DType::F32 || !acc.is_exclusive() || crate::autograd::is_recording() {
        let product = run(a, b, ta, tb, &p, Output::New(out_shape), variant)?;
        return acc.add(&product);
    }
    run(a, b, ta, tb, &p, Output::SumInto(acc), variant)
}

/// Where a product goes: a new tensor of this shape, or summed into an existing one.
enum Output {
    New(Vec<usize>),
    SumInto(Tensor),
}

/// [`matmul_t`] on a pinned kernel and number of K splits (tests, benchmarks). Fails with
/// [`Error::Unsupported`] when that kernel cannot run this product on this device.
pub fn matmul_with(
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    variant: MatmulVariant,
) -> Result<Tensor> {
    matmul_scaled_with(a, b, (ta, tb, 1.0), variant)
}

/// [`matmul_scaled`] on a pinned kernel, as [`matmul_with`]; `(ta, tb, alpha)`.
pub fn matmul_scaled_with(
    a: &Tensor,
    b: &Tensor,
    (ta, tb, alpha): (bool, bool, f32),
    variant: MatmulVariant,
) -> Result<Tensor> {
    let (mut p, out_shape) = problem(a, b, ta, tb)?;
    p.alpha = alpha;
    refuse_unsupported(a, b, ta, tb, &p, variant.kernel)?;
    run(a, b, ta, tb, &p, Output::New(out_shape), variant)
}

fn refuse_unsupported(
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    p: &Problem,
    kernel: MatmulKernel,
) -> Result<()> {
    match unsupported(a.device(), p, kernel) {
        Some(why) => Err(Error::Unsupported(format!(
            "matmul: the {kernel} kernel cannot run {:?} x {:?} (transposed: {ta}, {tb}): {why}",
            a.shape(),
            b.shape()
        ))),
        None => Ok(()),
    }
}

/// The variant [`matmul_t`] runs for these operands.
pub fn matmul_variant(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<MatmulVariant> {
    let (p, _) = problem(a, b, ta, tb)?;
    Ok(choose(a.device(), &p))
}

/// Why `kernel` cannot run `p` on `device` (`None`: it can).
pub(crate) fn unsupported(device: &Device, p: &Problem, kernel: MatmulKernel) -> Option<String> {
    match kernel {
        MatmulKernel::General | MatmulKernel::Tiled => None,
        MatmulKernel::CoopF16x16 | MatmulKernel::CoopF32x8 => coop_unsupported(device, kernel),
        MatmulKernel::Subgroup => {
            if !subgroups_of_8(device) {
                Some("the device has no subgroups of exactly 8 lanes".into())
            } else if subgroup_plan(p).is_none() {
                Some(
                    "N, the contiguous dim of each operand and (unless A^T B) K must be \
                     multiples of 4"
                        .into(),
                )
            } else {
                None
            }
        }
    }
}

/// Why the device cannot run the cooperative-matrix `kernel` (`None`: it can). The kernel's
/// workgroup is 32 invocations meant as one subgroup: with subgroups of 32 (NVIDIA, Apple)
/// or fewer lanes (each then computes the tile redundantly) it is correct, with wider ones
/// (AMD's wave64) a subgroup would be partly empty, which cooperative matrices forbid.
fn coop_unsupported(device: &Device, kernel: MatmulKernel) -> Option<String> {
    let info = device.info();
    let adapter = device.wgpu().0.adapter_info();
    // Metal reports 4..64 for any GPU; Apple's simdgroups are 32 wide.
    let metal = adapter.backend == wgpu::Backend::Metal;
    if info.cooperative_matrix.is_empty() {
        Some(
            "the device was not opened with cooperative matrices (none on this adapter, or \
             HYDRALORA_COOPMAT=off)"
                .into(),
        )
    } else if !kernel.listed_in(&info.cooperative_matrix) {
        Some(format!(
            "the adapter does not list the {kernel} kernel's fragment shape"
        ))
    } else if kernel == MatmulKernel::CoopF16x16 && !info.shader_f16 {
        Some("the device has no SHADER_F16".into())
    } else if adapter.subgroup_max_size > 32 && !metal {
        Some(format!(
            "subgroups may be {} lanes wide; the kernel's workgroup is one subgroup of 32",
            adapter.subgroup_max_size
        ))
    } else {
        None
    }
}

/// The cooperative-matrix kernels this device runs, in [`MatmulKernel::COOPERATIVE`]'s
/// order (none with `HYDRALORA_COOPMAT=off`).
pub fn cooperative_kernels(device: &Device) -> Vec<MatmulKernel> {
    MatmulKernel::COOPERATIVE
        .into_iter()
        .filter(|&k| coop_unsupported(device, k).is_none())
        .collect()
}

/// The cooperative-matrix kernel [`matmul_t`] uses on this device for large products, if
/// any (the first of [`cooperative_kernels`]).
pub fn cooperative_kernel(device: &Device) -> Option<MatmulKernel> {
    cooperative_kernels(device).first().copied()
}

/// The kernel products run on where the cooperative-matrix kernel is not used: the
/// subgroup kernel on a CPU driver with subgroups of 8, the general kernel on other CPU
/// drivers, the tiled kernel on GPUs. (Per product the subgroup kernel may still give way
/// to the general one where a shape does not suit it.)
pub fn fallback_kernel(device: &Device) -> MatmulKernel {
    match (is_cpu(device), subgroups_of_8(device)) {
        (false, _) => MatmulKernel::Tiled,
        (true, true) => MatmulKernel::Subgroup,
        (true, false) => MatmulKernel::General,
    }
}

/// One line for `hydralora info`: whether the matmuls use cooperative matrices, which
/// kernel, and the fallback (`no (fallback: subgroup kernel)` on lavapipe).
pub fn cooperative_matrix_summary(device: &Device) -> String {
    let fallback = fallback_kernel(device);
    match cooperative_kernel(device) {
        Some(k) => {
            let when = match (device.info().coop_use, k) {
                (CoopUse::On, _) => "every product (HYDRALORA_COOPMAT=on)",
                (_, MatmulKernel::CoopF32x8) => "large products",
                _ => "large products with 16-bit or quantized weights",
            };
            format!("yes: {k} kernel for {when} (fallback: {fallback} kernel)")
        }
        None => format!("no (fallback: {fallback} kernel)"),
    }
}

/// Whether the device runs the subgroup kernel: the SUBGROUP feature, with every subgroup
/// 8 lanes wide (llvmpipe with 256-bit vectors; its workgroup of 8 is then one subgroup).
pub fn subgroups_of_8(device: &Device) -> bool {
    if !device.info().subgroup {
        return false;
    }
    let info = device.wgpu().0.adapter_info();
    info.subgroup_min_size == 8 && info.subgroup_max_size == 8
}

fn is_cpu(device: &Device) -> bool {
    device.is_cpu()
}

/// The kernel and K splits for a product on a device. The rule, and why:
///
/// - CPU Vulkan driver (lavapipe/llvmpipe): a workgroup runs as the SIMD lanes of one
///   thread, every buffer load is scalarised lane by lane, and a workgroup barrier is a
///   coroutine switch, so workgroup memory buys nothing there. The subgroup kernel, which
///   loads each A value once per 8 lanes and feeds each loaded B value to 32 rows, ran
///   10x the general kernel (1024^3: 35 vs 3.0 GFLOP/s on 2 cores; the tiled kernel 3.5).
///   So: `Subgroup` where it applies (subgroups of 8, vec4-aligned dims), else `General`.
/// - Any other device (a GPU): `Tiled`; its workgroup-memory reuse is what GPUs need
///   (H200, Vulkan, 2048^3: 12.8 TFLOP/s vs 1.9 for the general kernel).
/// - Split K when the output has too few tiles to occupy the device and K is long (the
///   LoRA weight gradients, [r, T] x [T, d] with small r, large T; 2.5x on the H200):
///   enough splits for 8 CPU workgroups (a few per thread) or 128 GPU workgroups, each
///   split at least 512 (CPU) or 256 (GPU) deep.
///
/// Before all of these, a device with cooperative matrices runs a large product
/// (`worth_cooperative`) on its f32 cooperative-matrix kernel (Metal's 8x8) where it has one.
/// The f16 kernel rounds the activations to f16, which moves results past the tolerances every
/// check holds f32 arithmetic to (`verify` on a bf16 or quantized base, too), so it is never
/// chosen for the user: `HYDRALORA_COOPMAT=on` opts into it for every product (mixed
/// precision, until a `--precision mixed` with its own derived tolerance exists), `off` keeps
/// today's kernels everywhere.
pub(crate) fn choose(device: &Device, p: &Problem) -> MatmulVariant {
    let cpu = is_cpu(device);
    let coop = match device.info().coop_use {
        CoopUse::On => cooperative_kernel(device),
        CoopUse::Off => None,
        CoopUse::Auto if worth_cooperative(p) => {
            cooperative_kernels(device).into_iter().find(|&k| {
                k == MatmulKernel::CoopF32x8 || (p.half_inputs && k == MatmulKernel::CoopF16x16)
            })
        }
        CoopUse::Auto => None,
    };
    let kernel = if let Some(coop) = coop {
        coop
    } else if !cpu {
        MatmulKernel::Tiled
    } else if unsupported(device, p, MatmulKernel::Subgroup).is_none() {
        MatmulKernel::Subgroup
    } else {
        MatmulKernel::General
    };
    let tiles = p.batch * tiles(p, kernel);
    let (want, min_depth) = if cpu { (8, 512) } else { (128, 256) };
    let splits = if tiles >= want {
        1
    } else {
        want.div_ceil(tiles.max(1))
            .min(p.k / min_depth)
            .clamp(1, MAX_SPLITS)
    };
    MatmulVariant { kernel, splits }
}

/// Whether a product is large enough for the cooperative-matrix kernel: every side at least
/// 64 (a layer's forward `x W^T` and input gradient `dY W`, the attention-free bulk of a
/// step). The skinny LoRA products (rank 8..64 on one side) keep the tiled kernel, whose
/// 64-wide tiles they fill no worse and which keeps them in f32. A first rule, to be tuned
/// once `scripts/gpu-bench.sh` has measured both kernels on the LoRA shapes.
///
/// `choose` also takes the f16 kernel (which rounds A to f16) only where B is stored in 16
/// bits or fewer (f16, bf16 or quantized frozen weights, whose owner already traded f32 for
/// memory); f32 weights keep f32 arithmetic: the f32 fragment kernel where the device has it
/// (Metal), today's kernels otherwise, so an f32 run computes what it did before.
fn worth_cooperative(p: &Problem) -> bool {
    p.m >= 64 && p.n >= 64 && p.k >= 64
}

/// Most K splits a product is cut into.
const MAX_SPLITS: usize = 64;

/// Workgroups (tiles of C) one batch of `p` takes on `kernel`, before split-K.
fn tiles(p: &Problem, kernel: MatmulKernel) -> usize {
    match kernel {
        MatmulKernel::General => p.m.div_ceil(32) * p.n.div_ceil(32),
        MatmulKernel::Tiled => p.m.div_ceil(64) * p.n.div_ceil(64),
        MatmulKernel::Subgroup => subgroup_plan(p).map_or(1, |s| s.tiles),
        MatmulKernel::CoopF16x16 | MatmulKernel::CoopF32x8 => {
            let tile = coop_tile(kernel);
            p.m.div_ceil(tile) * p.n.div_ceil(tile)
        }
    }
}

/// The side of the tile of C one workgroup of the cooperative-matrix kernel computes: 2x2
/// fragments (`TILE` in `matmul_coop.wgsl`).
fn coop_tile(kernel: MatmulKernel) -> usize {
    2 * kernel.fragment().map_or(0, |f| f.m_size as usize)
}

/// How the subgroup kernel runs a product: maybe as C^T = op(B)^T op(A)^T (so that the
/// short side of a skinny product is the kernel's rows), with 32 or 8 rows per workgroup.
#[derive(Clone, Copy, Debug)]
struct SubgroupPlan {
    entry: &'static str,
    /// The kernel computes C^T: its rows are the columns of C.
    transposed: bool,
    m: usize,
    n: usize,
    a: Strides,
    b: Strides,
    tiles: usize,
    /// Row blocks walked per column block (tile order; see `matmul_subgroup.wgsl`).
    group: usize,
}

/// The subgroup kernel's layout letter for an operand with these strides: `n` when the
/// kernel's inner dim (k for A, n for B) is contiguous, `t` when the outer one is; the other
/// stride (and the batch stride) must be a multiple of 4 for vec4 loads. Strides count
/// elements, so the rule holds for f16 weights too: their vec4 is two whole 32-bit words.
fn subgroup_layout(s: Strides, inner_contiguous: bool) -> Option<char> {
    if s.batch % 4 != 0 {
        return None;
    }
    if inner_contiguous {
        (s.col == 1 && s.row % 4 == 0).then_some('n')
    } else {
        (s.row == 1 && s.col % 4 == 0).then_some('t')
    }
}

/// The cheapest way for the subgroup kernel to run `p`, or `None` if it cannot.
/// A 32-row tile does about 2.5x the work per second of an 8-row one (each loaded B value
/// feeds 32 multiply-adds instead of 8) but wastes rows when the product has few.
fn subgroup_plan(p: &Problem) -> Option<SubgroupPlan> {
    // vec4 stores need C's rows (and slices) in whole vec4s.
    if p.n % 4 != 0 {
        return None;
    }
    let mut best: Option<(f64, SubgroupPlan)> = None;
    // C^T would make B the kernel's A, which has no weight slot: f32 weights only.
    let orders: &[bool] = match p.weights {
        DType::F32 => &[false, true],
        _ => &[false],
    };
    for &transposed in orders {
        let (m, n, a, b) = if transposed {
            let a = Strides {
                batch: p.b.batch,
                row: p.b.col,
                col: p.b.row,
            };
            let b = Strides {
                batch: p.a.batch,
                row: p.a.col,
                col: p.a.row,
            };
            (p.n, p.m, a, b)
        } else {
            (p.m, p.n, p.a, p.b)
        };
        // A's k dim contiguous ('n') or its m dim ('t'); B's n dim ('n') or its k dim ('t').
        let la = subgroup_layout(a, true).or_else(|| subgroup_layout(a, false));
        let lb = subgroup_layout(b, true).or_else(|| subgroup_layout(b, false));
        let (Some(la), Some(lb)) = (la, lb) else {
            continue;
        };
        // vec4 loads along k (A 'n', B 't') need K % 4 == 0; with k the outer dim of both
        // (`tn`) the kernel zeroes the k past K itself.
        if p.k % 4 != 0 && (la == 'n' || lb == 't') {
            continue;
        }
        for rows in [32, 8] {
            let tiles = m.div_ceil(rows) * n.div_ceil(64);
            let speed = if rows == 32 { 2.5 } else { 1.0 };
            let cost = (tiles * rows * 64) as f64 / speed;
            let group = if la == 'n' && lb == 'n' {
                // B read row by row: keep one block of B columns hot while all row blocks pass.
                m.div_ceil(rows).max(1)
            } else {
                4
            };
            let plan = SubgroupPlan {
                entry: subgroup_entry(la, lb, rows),
                transposed,
                m,
                n,
                a,
                b,
                tiles,
                group,
            };
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, plan));
            }
        }
    }
    best.map(|(_, plan)| plan)
}

fn subgroup_entry(la: char, lb: char, rows: usize) -> &'static str {
    match (la, lb, rows) {
        ('n', 'n', 32) => "nn32",
        ('n', 't', 32) => "nt32",
        ('t', 'n', 32) => "tn32",
        ('t', 't', 32) => "tt32",
        ('n', 'n', _) => "nn8",
        ('n', 't', _) => "nt8",
        ('t', 'n', _) => "tn8",
        _ => "tt8",
    }
}

fn too_many_groups(device: &Device, out_shape: &[usize], groups: [u32; 3]) -> Result<()> {
    let max = device.info().limits.max_compute_workgroups_per_dimension;
    if groups.iter().any(|&g| g > max) {
        return Err(Error::InvalidArgument {
            op: OP,
            shape: out_shape.to_vec(),
            why: format!("needs {groups:?} workgroups, over the device's {max} per dimension"),
        });
    }
    Ok(())
}

/// The params block of every matmul kernel (`shaders/lib/matmul_params.wgsl`), field for
/// field: sizes, then the strides (in elements) of A, B and C, the K split, the subgroup
/// kernel's tile order and the scale.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    a_batch: u32,
    a_row: u32,
    a_col: u32,
    b_batch: u32,
    b_row: u32,
    b_col: u32,
    c_batch: u32,
    c_row: u32,
    c_col: u32,
    splits: u32,
    k_chunk: u32,
    group: u32,
    alpha: f32,
}

impl MatmulParams {
    /// `[m, n, k]` with the strides of `[a, b, c]`, K cut as `splits`, `group` row blocks per
    /// tile group (the subgroup kernel's tile order).
    fn new(
        [m, n, k]: [usize; 3],
        [a, b, c]: [Strides; 3],
        splits: KSplits,
        group: usize,
        alpha: f32,
    ) -> MatmulParams {
        let u = |x: usize| x as u32;
        MatmulParams {
            m: u(m),
            n: u(n),
            k: u(k),
            a_batch: u(a.batch),
            a_row: u(a.row),
            a_col: u(a.col),
            b_batch: u(b.batch),
            b_row: u(b.row),
            b_col: u(b.col),
            c_batch: u(c.batch),
            c_row: u(c.row),
            c_col: u(c.col),
            splits: u(splits.count),
            k_chunk: u(splits.chunk),
            group: u(group),
            alpha,
        }
    }
}

impl_kernel_params!(MatmulParams for each (shaders::MATMUL_VARIANTS.iter().flatten().flatten()) {
    m, n, k, a_batch, a_row, a_col, b_batch, b_row, b_col, c_batch, c_row, c_col, splits,
    k_chunk, group, alpha
});

/// The params block of split-K's reduction (`shaders/matmul_splitk.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SplitKParams {
    numel: u32,  // elements of the output: batch * m * n
    slice: u32,  // m * n
    splits: u32, // partial sums per output element
}

impl_kernel_params!(SplitKParams for [shaders::MATMUL_SPLITK, shaders::MATMUL_SPLITK_ACCUMULATE] {
    numel, slice, splits
});

/// How K is cut: `count` ranges of `chunk` (the last may be shorter), none empty.
#[derive(Clone, Copy, Debug)]
struct KSplits {
    count: usize,
    chunk: usize,
}

/// About `asked` K ranges of a length `kernel` accepts (the subgroup kernel steps 4 k at a
/// time), fewer if the scratch of partial sums would not fit one binding.
fn plan_k_splits(device: &Device, p: &Problem, kernel: MatmulKernel, asked: usize) -> KSplits {
    // Whole k slices of the cooperative-matrix kernel (BK = its tile side) waste no work.
    let step = match kernel {
        MatmulKernel::Subgroup => 4,
        k if k.is_cooperative() => coop_tile(k),
        _ => 1,
    };
    let cut = |ranges: usize| {
        let chunk = p.k.max(1).div_ceil(ranges.max(1)).next_multiple_of(step);
        KSplits {
            count: p.k.max(1).div_ceil(chunk),
            chunk,
        }
    };
    let splits = cut(asked);
    let slice_bytes = 4 * (p.m * p.n).max(1) as u64;
    let max_slices = (device.info().max_binding_bytes() / slice_bytes) as usize;
    if splits.count > 1 && p.batch * splits.count > max_slices {
        return cut(max_slices / p.batch.max(1));
    }
    splits
}

/// One kernel dispatch: entry point, params and grid; `swapped` when the kernel's A is the
/// product's B (the subgroup kernel computing C^T).
struct Launch {
    entry: &'static str,
    params: MatmulParams,
    groups: [usize; 3],
    swapped: bool,
}

/// The general, tiled and cooperative-matrix kernels: C as it is, one workgroup per 32x32
/// (tiled: 64x64; cooperative: two fragments square) tile.
fn strided_launch(p: &Problem, kernel: MatmulKernel, splits: KSplits) -> Launch {
    let (entry, tile) = match kernel {
        MatmulKernel::Tiled => ("matmul_tiled", 64),
        k if k.is_cooperative() => ("matmul_coop", coop_tile(k)),
        _ => ("matmul", 32),
    };
    let c = Strides {
        batch: p.m * p.n,
        row: p.n,
        col: 1,
    };
    Launch {
        entry,
        params: MatmulParams::new([p.m, p.n, p.k], [p.a, p.b, c], splits, 1, p.alpha),
        groups: [
            p.n.div_ceil(tile),
            p.m.div_ceil(tile),
            p.batch * splits.count,
        ],
        swapped: false,
    }
}

/// The subgroup kernel, as `subgroup_plan` lays the product out.
fn subgroup_launch(p: &Problem, splits: KSplits) -> Result<Launch> {
    let s = subgroup_plan(p).ok_or_else(|| {
        Error::Unsupported("matmul: the subgroup kernel cannot run this shape".into())
    })?;
    // C^T [n, m] written into C [m, n]: rows of the kernel are columns of C.
    let (row, col) = if s.transposed { (1, p.n) } else { (p.n, 1) };
    let c = Strides {
        batch: p.m * p.n,
        row,
        col,
    };
    Ok(Launch {
        entry: s.entry,
        params: MatmulParams::new([s.m, s.n, p.k], [s.a, s.b, c], splits, s.group, p.alpha),
        groups: [
            s.tiles.min(65535),
            s.tiles.div_ceil(65535),
            p.batch * splits.count,
        ],
        swapped: s.transposed,
    })
}

/// Adds the K splits' partial sums [batch, splits, m, n] into `out` [batch, m, n], in order.
fn reduce_splits(device: &Device, partial: &Tensor, out: &Tensor, splits: usize, sum_into: bool) {
    let [_, m, n] = partial.shape() else {
        unreachable!("partial sums are [slices, m, n]")
    };
    let params = SplitKParams {
        numel: out.numel() as u32,
        slice: (m * n) as u32,
        splits: splits as u32,
    };
    let shader = match sum_into {
        true => &shaders::MATMUL_SPLITK_ACCUMULATE,
        false => &shaders::MATMUL_SPLITK,
    };
    device.dispatch(
        shader,
        "splitk_reduce",
        &params,
        &[partial.binding()],
        &[out.binding()],
        grid(device, out.numel(), 256),
    );
}

/// Runs `p` on `variant` into `output`.
fn run(
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    p: &Problem,
    output: Output,
    variant: MatmulVariant,
) -> Result<Tensor> {
    let device = a.device();
    // Nothing to sum: the general kernel writes the zeros (the subgroup kernel's vec4
    // bindings cannot bind an empty operand).
    let kernel = match p.k {
        0 => MatmulKernel::General,
        _ => variant.kernel,
    };
    let (out, accumulate) = match output {
        Output::New(shape) => (Tensor::empty(device, &shape, DType::F32)?, false),
        Output::SumInto(acc) => (acc, true),
    };
    out.expect_bindable(OP)?;
    let splits = plan_k_splits(device, p, kernel, variant.splits);
    // With split-K each split writes a fresh slice and the reduction sums into `out`.
    let partial = match splits.count {
        1 => None,
        count => Some(Tensor::empty(
            device,
            &[p.batch * count, p.m, p.n],
            DType::F32,
        )?),
    };
    if let Some(t) = &partial {
        t.expect_bindable(OP)?;
    }
    let launch = match kernel {
        MatmulKernel::Subgroup => subgroup_launch(p, splits)?,
        _ => strided_launch(p, kernel, splits),
    };
    let groups = launch.groups.map(|g| g as u32);
    too_many_groups(device, out.shape(), groups)?;
    let operands = match launch.swapped {
        true => [b.binding(), a.binding()],
        false => [a.binding(), b.binding()],
    };
    let target = partial.as_ref().unwrap_or(&out);
    device.dispatch(
        shaders::matmul(kernel, p.weights, accumulate && partial.is_none()),
        launch.entry,
        &launch.params,
        &operands,
        &[target.binding()],
        groups,
    );
    if let Some(partial) = &partial {
        reduce_splits(device, partial, &out, splits.count, accumulate);
    }
    if accumulate {
        return Ok(out); // backward only: never part of a graph
    }
    Ok(out.with_op(
        || Op::Matmul {
            a: a.clone(),
            b: b.clone(),
            ta,
            tb,
            alpha: p.alpha,
        },
        &[a, b],
    ))
}

impl Tensor {
    /// `self @ rhs` over the last two dims.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        matmul_t(self, rhs, false, false)
    }

    /// `self @ rhs^T`: the shape of a linear layer with weight `rhs` [out, in].
    pub fn matmul_nt(&self, rhs: &Tensor) -> Result<Tensor> {
        matmul_t(self, rhs, false, true)
    }
}
