//! Causal scaled-dot-product attention with grouped-query heads, two ways:
//!
//! - `Composed`: the matmul and masked-softmax kernels (its backward is theirs). It keeps
//!   the [T, S] probabilities of every head for backward: O(T S) memory.
//! - `Flash`: one fused kernel forward (`flash_attention.wgsl`: an online softmax over key
//!   blocks) that saves only the output and a log-sum-exp per query row, and two backward
//!   passes that recompute the probabilities (`flash_attention_backward.wgsl`): memory
//!   linear in the sequence length.
//!
//! [`causal_attention`] picks one per device and size (see [`attention_kernel`]);
//! [`causal_attention_with`] pins one (tests, benchmarks).

use crate::device::Device;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::grid;
use crate::ops::matmul::matmul_t;
use crate::ops::softmax::{softmax_scaled, CausalMask};
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// The largest head dim the flash kernels take (their per-row registers).
pub const FLASH_MAX_HEAD_DIM: usize = 128;

/// How attention is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionKernel {
    /// Scores by matmul, masked softmax, matmul with V: O(T S) memory per head.
    Composed,
    /// The fused flash kernels: O(T + S) memory per head. Head dims up to 128.
    Flash,
}

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub t: usize,
    pub s: usize,
    pub d: usize,
}

impl AttnDims {
    /// Bytes of the probabilities the composed path keeps: [B, Hq, T, S] f32.
    pub fn scores_bytes(&self) -> u64 {
        (self.b * self.hq * self.t * self.s) as u64 * 4
    }
}

/// Checks q: [B, Hq, T, D]; k, v: [B, Hkv, S, D] with Hq a multiple of Hkv and S >= T.
fn dims(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<AttnDims> {
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
    if q.rank() != 4 || k.rank() != 4 || v.shape() != k.shape() {
        return Err(bad(
            "q must be [B, Hq, T, D], k and v the same [B, Hkv, S, D]",
        ));
    }
    let [b, hq, t, d] = [q.dim(0), q.dim(1), q.dim(2), q.dim(3)];
    let [bk, hkv, s, dk] = [k.dim(0), k.dim(1), k.dim(2), k.dim(3)];
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
/// `HYDRALORA_ATTENTION=flash|composed` pins the kernel (for benchmarks).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    match forced_kernel()? {
        Some(kernel) => causal_attention_with(q, k, v, kernel),
        None => {
            let dims = dims(q, k, v)?;
            run(q, k, v, &dims, attention_kernel(q.device(), &dims))
        }
    }
}

/// The kernel `HYDRALORA_ATTENTION` pins, if set.
fn forced_kernel() -> Result<Option<AttentionKernel>> {
    match std::env::var("HYDRALORA_ATTENTION").as_deref() {
        Err(_) | Ok("") => Ok(None),
        Ok("flash") => Ok(Some(AttentionKernel::Flash)),
        Ok("composed") => Ok(Some(AttentionKernel::Composed)),
        Ok(other) => Err(Error::InvalidArgument {
            op: "attention",
            shape: vec![],
            why: format!("HYDRALORA_ATTENTION is `{other}`; it takes `flash` or `composed`"),
        }),
    }
}

/// [`causal_attention`] on a pinned kernel. Fails with [`Error::Unsupported`] when the
/// flash kernels cannot take the head dim.
pub fn causal_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    let dims = dims(q, k, v)?;
    if kernel == AttentionKernel::Flash && dims.d > FLASH_MAX_HEAD_DIM {
        return Err(Error::Unsupported(format!(
            "attention: the flash kernels take head dims up to {FLASH_MAX_HEAD_DIM}, not {}",
            dims.d
        )));
    }
    run(q, k, v, &dims, kernel)
}

/// The composed path, kept as an independent check of the fused one.
pub fn causal_attention_composed(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    causal_attention_with(q, k, v, AttentionKernel::Composed)
}

/// Scores above this many bytes always take the flash kernels (their memory is linear).
pub const COMPOSED_MAX_SCORES_BYTES: u64 = 16 << 20;

/// The kernel [`causal_attention`] runs for a shape on a device: flash where it fits the
/// head dim, except on a CPU device (lavapipe) for scores up to
/// [`COMPOSED_MAX_SCORES_BYTES`], where the composed path rides the fast subgroup matmul.
pub fn attention_kernel(device: &Device, dims: &AttnDims) -> AttentionKernel {
    if dims.d > FLASH_MAX_HEAD_DIM
        || (device.is_cpu() && dims.scores_bytes() <= COMPOSED_MAX_SCORES_BYTES)
    {
        AttentionKernel::Composed
    } else {
        AttentionKernel::Flash
    }
}

fn run(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dims: &AttnDims,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    match kernel {
        AttentionKernel::Composed => composed(q, k, v, dims),
        AttentionKernel::Flash => flash(q, k, v, dims),
    }
}

fn composed(q: &Tensor, k: &Tensor, v: &Tensor, dims: &AttnDims) -> Result<Tensor> {
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
fn flash_params(dims: &AttnDims) -> [u32; 7] {
    [
        dims.b as u32,
        dims.hq as u32,
        dims.hkv as u32,
        dims.t as u32,
        dims.s as u32,
        dims.d as u32,
        (1.0 / (dims.d as f32).sqrt()).to_bits(),
    ]
}

fn flash(q: &Tensor, k: &Tensor, v: &Tensor, dims: &AttnDims) -> Result<Tensor> {
    for x in [q, k, v] {
        x.expect_bindable("attention")?;
    }
    let dev = q.device();
    let out = Tensor::empty(dev, q.shape(), DType::F32)?; // [B, Hq, T, D]
    let rows = dims.b * dims.hq * dims.t;
    let lse = Tensor::empty(dev, &[dims.b, dims.hq, dims.t], DType::F32)?; // [B, Hq, T]
    if rows > 0 && dims.d > 0 {
        // (An empty output, T = 0 or D = 0, has nothing to compute.)
        dev.dispatch(
            &shaders::FLASH_ATTENTION,
            "flash_forward",
            &flash_params(dims),
            &[q.binding(), k.binding(), v.binding()],
            &[out.binding(), lse.binding()],
            grid(dev, rows, 64),
        );
    }
    Ok(out.with_op(
        || Op::FlashAttention {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            lse,
            dims: *dims,
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
    dims: &AttnDims,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = q.device();
    let params = flash_params(dims);
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
    dev.dispatch(
        &shaders::FLASH_ATTENTION_BACKWARD,
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
        grid(dev, rows, 64),
    );
    dev.dispatch(
        &shaders::FLASH_ATTENTION_BACKWARD,
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
        grid(dev, dims.b * dims.hkv * dims.s, 64),
    );
    Ok((dq, dk, dv))
}
