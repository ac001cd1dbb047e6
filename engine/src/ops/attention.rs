//! Causal scaled-dot-product attention with grouped-query heads, two ways:
//!
//! - `Composed`: the matmul and masked-softmax kernels (its backward is theirs). It keeps
//!   the [T, S] probabilities of every head for backward: O(T S) memory.
//! - `Flash`: one fused kernel forward (`flash_attention.wgsl`: an online softmax over key
//!   blocks) that saves only the output and a log-sum-exp per query row, and two backward
//!   passes that recompute the probabilities (`flash_attention_backward.wgsl`): memory
//!   linear in the sequence length.
//! - `FlashSubgroup`: the same kernels laid out for CPU drivers (`*_subgroup.wgsl`: 8-lane
//!   subgroups sharing each loaded key or query row by broadcast).
//!
//! [`causal_attention`] takes heads-first tensors, [`causal_attention_tokens_first`] the
//! [B, T, H, D] layout the projections produce (the flash kernels read both through
//! strides). Each picks a kernel per device and size ([`attention_kernel`]); the `_with`
//! forms pin one (tests, benchmarks).

use crate::device::Device;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::kernel_params::kernel_params;
use crate::ops::matmul::{matmul_t, subgroups_of_8};
use crate::ops::softmax::{softmax_scaled, CausalMask};
use crate::ops::{grid, rows_grid};
use crate::shaders;
use crate::tensor::{DType, Tensor};

kernel_params! {
    /// The flash kernels' params, forward and backward, both flavours. Strides are in f32,
    /// between batches, heads and positions: of q, o, dO (and dq), then of k, v (dk, dv).
    pub(crate) struct FlashParams for [
        shaders::FLASH_ATTENTION,
        shaders::FLASH_ATTENTION_BACKWARD,
        shaders::FLASH_ATTENTION_SUBGROUP,
        shaders::FLASH_ATTENTION_BACKWARD_SUBGROUP,
    ] {
        b: u32,
        hq: u32,
        hkv: u32,
        t: u32, // queries per head
        s: u32, // keys per head (>= t)
        d: u32, // head dim (<= FLASH_MAX_HEAD_DIM)
        scale: f32,
        q_sb: u32,
        q_sh: u32,
        q_st: u32,
        kv_sb: u32,
        kv_sh: u32,
        kv_st: u32,
    }
}

/// The largest head dim the flash kernels take (their per-row registers).
pub const FLASH_MAX_HEAD_DIM: usize = 128;

/// How attention is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionKernel {
    /// Scores by matmul, masked softmax, matmul with V: O(T S) memory per head.
    Composed,
    /// The fused flash kernels: O(T + S) memory per head. Head dims up to 128.
    Flash,
    /// The flash kernels with 8-lane subgroups sharing each loaded row (CPU drivers):
    /// needs subgroups of exactly 8 and a head dim that is a multiple of 4.
    FlashSubgroup,
}

impl AttentionKernel {
    /// Every kernel, for tests and benchmarks that try each one.
    pub const ALL: [AttentionKernel; 3] = [
        AttentionKernel::Composed,
        AttentionKernel::Flash,
        AttentionKernel::FlashSubgroup,
    ];

    /// Why this kernel cannot run head dim `d` on `device` (`None`: it can).
    pub fn unsupported(self, device: &Device, d: usize) -> Option<String> {
        match self {
            AttentionKernel::Composed => None,
            _ if d > FLASH_MAX_HEAD_DIM => Some(format!(
                "the flash kernels take head dims up to {FLASH_MAX_HEAD_DIM}, not {d}"
            )),
            AttentionKernel::Flash => None,
            AttentionKernel::FlashSubgroup if !subgroups_of_8(device) => {
                Some("the device has no subgroups of exactly 8 lanes".into())
            }
            AttentionKernel::FlashSubgroup if d % 4 != 0 => Some(format!(
                "the subgroup flash kernels need a head dim that is a multiple of 4, not {d}"
            )),
            AttentionKernel::FlashSubgroup => None,
        }
    }
}

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Batch size.
    pub b: usize,
    /// Query heads.
    pub hq: usize,
    /// Key/value heads (dividing `hq`: grouped-query attention).
    pub hkv: usize,
    /// Query positions.
    pub t: usize,
    /// Key positions (`s >= t`; the queries are the last `t` of them).
    pub s: usize,
    /// Head dim.
    pub d: usize,
}

impl AttnDims {
    /// Bytes of the probabilities the composed path keeps: [B, Hq, T, S] f32.
    pub fn scores_bytes(&self) -> u64 {
        (self.b * self.hq * self.t * self.s) as u64 * 4
    }
}

/// How q, k, v and the output are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// [B, H, T, D] (what [`causal_attention`] takes).
    HeadsFirst,
    /// [B, T, H, D], as the projections produce them ([`causal_attention_tokens_first`]).
    TokensFirst,
}

/// How a flash forward ran, kept for its backward: the shape, kernel and layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlashPlan {
    pub dims: AttnDims,
    pub kernel: AttentionKernel,
    pub layout: Layout,
}

/// Checks q: [B, Hq, T, D]; k, v: [B, Hkv, S, D] with Hq a multiple of Hkv and S >= T.
fn dims(q: &Tensor, k: &Tensor, v: &Tensor, layout: Layout) -> Result<AttnDims> {
    q.expect_same_device("attention", k)?;
    q.expect_same_device("attention", v)?;
    for x in [q, k, v] {
        x.expect_dtype("attention", DType::F32, "f32")?;
    }
    let bad = |why: &str| Error::ShapeMismatch {
        op: "attention",
        lhs: q.shape().to_vec(),
        rhs: k.shape().to_vec(),
        why: why.into(),
    };
    let (heads, seq, want) = match layout {
        Layout::HeadsFirst => (
            1,
            2,
            "q must be [B, Hq, T, D], k and v the same [B, Hkv, S, D]",
        ),
        Layout::TokensFirst => (
            2,
            1,
            "q must be [B, T, Hq, D], k and v the same [B, S, Hkv, D]",
        ),
    };
    if q.rank() != 4 || k.rank() != 4 || v.shape() != k.shape() {
        return Err(bad(want));
    }
    let [b, hq, t, d] = [q.dim(0), q.dim(heads), q.dim(seq), q.dim(3)];
    let [bk, hkv, s, dk] = [k.dim(0), k.dim(heads), k.dim(seq), k.dim(3)];
    if b != bk || d != dk || hkv == 0 || hq % hkv != 0 || s < t {
        return Err(bad(
            "batch and head dims must agree, Hq % Hkv == 0 and S >= T",
        ));
    }
    Ok(AttnDims {
        b,
        hq,
        hkv,
        t,
        s,
        d,
    })
}

/// q: [B, Hq, T, D]; k, v: [B, Hkv, S, D] with Hq a multiple of Hkv and S >= T (the last T
/// keys are the queries' own positions; the first S - T are cached). Query t sees keys
/// 0..=t + S - T. Scores are scaled by 1/sqrt(D). Result: [B, Hq, T, D].
/// `HYDRALORA_ATTENTION` pins the kernel for benchmarks: `composed`, `flash` (the flash
/// kernels this device would run), `flash-rows` or `flash-subgroup`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attend(q, k, v, Layout::HeadsFirst, None)
}

/// [`causal_attention`] on tokens-first tensors, as the projections produce them:
/// q: [B, T, Hq, D]; k, v: [B, S, Hkv, D]. Result: [B, T, Hq, D]. The flash kernels read
/// this layout directly, so no heads-first transposes are needed around them.
pub fn causal_attention_tokens_first(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attend(q, k, v, Layout::TokensFirst, None)
}

/// Checks, then runs the pinned kernel, the one `HYDRALORA_ATTENTION` names, or the
/// device's choice.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: Layout,
    pinned: Option<AttentionKernel>,
) -> Result<Tensor> {
    let dims = dims(q, k, v, layout)?;
    let kernel = match pinned {
        Some(kernel) => kernel,
        None => {
            forced_kernel(q.device(), &dims)?.unwrap_or_else(|| attention_kernel(q.device(), &dims))
        }
    };
    if let Some(why) = kernel.unsupported(q.device(), dims.d) {
        return Err(Error::Unsupported(format!("attention: {why}")));
    }
    match kernel {
        AttentionKernel::Composed => composed(q, k, v, &dims, layout),
        AttentionKernel::Flash | AttentionKernel::FlashSubgroup => {
            flash(q, k, v, dims, kernel, layout)
        }
    }
}

/// The kernel [`causal_attention`] will run for a shape: the one `HYDRALORA_ATTENTION` pins
/// when it is set to a valid name, else [`attention_kernel`]'s choice. Memory estimates and
/// size checks ask this, so a pinned kernel's memory is the one counted.
pub fn attention_kernel_in_use(device: &Device, dims: &AttnDims) -> AttentionKernel {
    match forced_kernel(device, dims) {
        Ok(Some(kernel)) => kernel,
        _ => attention_kernel(device, dims),
    }
}

/// The kernel `HYDRALORA_ATTENTION` pins, if set.
fn forced_kernel(device: &Device, dims: &AttnDims) -> Result<Option<AttentionKernel>> {
    let sg = AttentionKernel::FlashSubgroup;
    Ok(match std::env::var("HYDRALORA_ATTENTION").as_deref() {
        Err(_) | Ok("") => None,
        Ok("composed") => Some(AttentionKernel::Composed),
        Ok("flash") if device.is_cpu() && sg.unsupported(device, dims.d).is_none() => Some(sg),
        Ok("flash") | Ok("flash-rows") => Some(AttentionKernel::Flash),
        Ok("flash-subgroup") => Some(sg),
        Ok(other) => {
            return Err(Error::InvalidArgument {
                op: "attention",
                shape: vec![],
                why: format!(
                    "HYDRALORA_ATTENTION is `{other}`; it takes composed, flash, flash-rows \
                     or flash-subgroup"
                ),
            })
        }
    })
}

/// [`causal_attention`] on a pinned kernel. Fails with [`Error::Unsupported`] when that
/// kernel cannot run this head dim on this device.
pub fn causal_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    attend(q, k, v, Layout::HeadsFirst, Some(kernel))
}

/// [`causal_attention_tokens_first`] on a pinned kernel (tests).
pub fn causal_attention_tokens_first_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    attend(q, k, v, Layout::TokensFirst, Some(kernel))
}

/// The composed path, kept as an independent check of the fused one.
pub fn causal_attention_composed(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    causal_attention_with(q, k, v, AttentionKernel::Composed)
}

/// On devices without the subgroup flash kernels, scores above this many bytes (or over one
/// binding) take the flash kernels, whose memory is linear.
pub const COMPOSED_MAX_SCORES_BYTES: u64 = 128 << 20;

/// The kernel [`causal_attention`] runs for a shape on a device, by measurement
/// (BENCHMARKS.md):
///
/// - head dims over 128: composed (the flash kernels' registers stop there);
/// - a CPU device that runs the subgroup flash kernels (lavapipe): `FlashSubgroup` at every
///   length; at bench-s (T = 128) it does the composed path's work in the same CPU time
///   (less once it skips the transposes, tokens first), at T = 256 to 1024 in less, and
///   its memory is linear in T;
/// - elsewhere (GPUs): composed while its scores are at most [`COMPOSED_MAX_SCORES_BYTES`]
///   and fit one binding (the tiled matmul is the measured fast path; bench-m's 128 MiB per
///   layer stays there), `Flash` beyond, so that long sequences stay linear in memory. The
///   per-row flash kernels' GPU speed is unmeasured.
pub fn attention_kernel(device: &Device, dims: &AttnDims) -> AttentionKernel {
    let sg = AttentionKernel::FlashSubgroup;
    let composed_max = COMPOSED_MAX_SCORES_BYTES.min(device.info().max_binding_bytes());
    if dims.d > FLASH_MAX_HEAD_DIM {
        AttentionKernel::Composed
    } else if device.is_cpu() && sg.unsupported(device, dims.d).is_none() {
        sg
    } else if dims.scores_bytes() <= composed_max {
        AttentionKernel::Composed
    } else {
        AttentionKernel::Flash
    }
}

fn composed(q: &Tensor, k: &Tensor, v: &Tensor, dims: &AttnDims, layout: Layout) -> Result<Tensor> {
    if layout == Layout::TokensFirst {
        let heads_first = |x: &Tensor| x.transpose(1, 2);
        let out = composed(
            &heads_first(q)?,
            &heads_first(k)?,
            &heads_first(v)?,
            dims,
            Layout::HeadsFirst,
        )?;
        return out.transpose(1, 2);
    }
    let AttnDims {
        b,
        hq,
        hkv,
        t,
        s,
        d,
    } = *dims;
    let group = hq / hkv;
    // The query heads sharing one kv head are adjacent: fold them into the query rows.
    let q_rows = q.reshape(&[b * hkv, group * t, d])?; // [B Hkv, g T, D]
    let k_rows = k.reshape(&[b * hkv, s, d])?; // [B Hkv, S, D]
    let v_rows = v.reshape(&[b * hkv, s, d])?; // [B Hkv, S, D]
    let scores = matmul_t(&q_rows, &k_rows, false, true)?; // [B Hkv, g T, S]
    let probs = softmax_scaled(
        &scores,
        1.0 / (d as f32).sqrt(),
        Some(CausalMask {
            q_len: t,
            offset: s - t,
        }),
    )?;
    let out = probs.matmul(&v_rows)?; // [B Hkv, g T, D]
    out.reshape(&[b, hq, t, d])
}

/// The params block of both flash shaders.
fn flash_params(plan: &FlashPlan) -> FlashParams {
    let AttnDims {
        b,
        hq,
        hkv,
        t,
        s,
        d,
    } = plan.dims;
    // Strides (batch, head, position) of a [B, H, L, D] or [B, L, H, D] tensor.
    let strides = |h: usize, l: usize| match plan.layout {
        Layout::HeadsFirst => [h * l * d, l * d, d],
        Layout::TokensFirst => [l * h * d, d, h * d],
    };
    let [q_sb, q_sh, q_st] = strides(hq, t);
    let [kv_sb, kv_sh, kv_st] = strides(hkv, s);
    let u = |x: usize| x as u32;
    FlashParams {
        b: u(b),
        hq: u(hq),
        hkv: u(hkv),
        t: u(t),
        s: u(s),
        d: u(d),
        scale: 1.0 / (d as f32).sqrt(),
        q_sb: u(q_sb),
        q_sh: u(q_sh),
        q_st: u(q_st),
        kv_sb: u(kv_sb),
        kv_sh: u(kv_sh),
        kv_st: u(kv_st),
    }
}

/// Which shader, and how many workgroups for `rows` rows of one side (the per-row kernels
/// take 64 rows per workgroup, the subgroup ones 8 rows of one head; `per_head` rows each).
fn flash_launch(
    dev: &Device,
    kernel: AttentionKernel,
    heads: usize,
    per_head: usize,
    forward: bool,
) -> (&'static shaders::Shader, [u32; 3]) {
    match (kernel, forward) {
        (AttentionKernel::FlashSubgroup, true) => (
            &shaders::FLASH_ATTENTION_SUBGROUP,
            rows_grid(dev, heads * per_head.div_ceil(8)),
        ),
        (AttentionKernel::FlashSubgroup, false) => (
            &shaders::FLASH_ATTENTION_BACKWARD_SUBGROUP,
            rows_grid(dev, heads * per_head.div_ceil(8)),
        ),
        (_, true) => (&shaders::FLASH_ATTENTION, grid(dev, heads * per_head, 64)),
        (_, false) => (
            &shaders::FLASH_ATTENTION_BACKWARD,
            grid(dev, heads * per_head, 64),
        ),
    }
}

fn flash(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dims: AttnDims,
    kernel: AttentionKernel,
    layout: Layout,
) -> Result<Tensor> {
    let plan = FlashPlan {
        dims,
        kernel,
        layout,
    };
    let dims = &plan.dims;
    for x in [q, k, v] {
        x.expect_bindable("attention")?;
    }
    let dev = q.device();
    let out = Tensor::empty(dev, q.shape(), DType::F32)?; // [B, Hq, T, D]
    let rows = dims.b * dims.hq * dims.t;
    let lse = Tensor::empty(dev, &[dims.b, dims.hq, dims.t], DType::F32)?; // [B, Hq, T]
    if rows > 0 && dims.d > 0 {
        // (An empty output, T = 0 or D = 0, has nothing to compute.)
        let (shader, groups) = flash_launch(dev, kernel, dims.b * dims.hq, dims.t, true);
        dev.dispatch(
            shader,
            "flash_forward",
            &flash_params(&plan),
            &[q.binding(), k.binding(), v.binding()],
            &[out.binding(), lse.binding()],
            groups,
        );
    }
    Ok(out.with_op(
        || Op::FlashAttention {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            lse,
            plan,
        },
        &[q, k, v],
    ))
}

/// (dq, dk, dv) of the flash forward that produced `out` (and `lse`), given dout.
pub(crate) fn flash_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    plan: &FlashPlan,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dims, kernel) = (&plan.dims, plan.kernel);
    let dev = q.device();
    let params = flash_params(plan);
    let dq = Tensor::empty(dev, q.shape(), DType::F32)?; // [B, Hq, T, D]
    let delta = Tensor::empty(dev, lse.shape(), DType::F32)?; // [B, Hq, T] rowsum(dO * O)
    let dk = Tensor::empty(dev, k.shape(), DType::F32)?; // [B, Hkv, S, D]
    let dv = Tensor::empty(dev, v.shape(), DType::F32)?; // [B, Hkv, S, D]
    let rows = dims.b * dims.hq * dims.t;
    if rows == 0 || dims.d == 0 {
        return Ok((
            dq,
            Tensor::zeros(dev, k.shape())?,
            Tensor::zeros(dev, v.shape())?,
        ));
    }
    let (shader, groups) = flash_launch(dev, kernel, dims.b * dims.hq, dims.t, false);
    dev.dispatch(
        shader,
        "flash_backward_dq",
        &params,
        &[
            q.binding(),
            k.binding(),
            v.binding(),
            dout.binding(),
            lse.binding(),
            out.binding(),
        ],
        &[dq.binding(), delta.binding()],
        groups,
    );
    let (shader, groups) = flash_launch(dev, kernel, dims.b * dims.hkv, dims.s, false);
    dev.dispatch(
        shader,
        "flash_backward_dkv",
        &params,
        &[
            q.binding(),
            k.binding(),
            v.binding(),
            dout.binding(),
            lse.binding(),
            delta.binding(),
        ],
        &[dk.binding(), dv.binding()],
        groups,
    );
    Ok((dq, dk, dv))
}
