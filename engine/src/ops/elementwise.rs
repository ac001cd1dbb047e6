//! Elementwise ops: add, sub, mul, div with NumPy broadcasting; neg, exp, log, sqrt, silu, scale.

use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::kernel_params::kernel_params;
use crate::ops::{contiguous_strides, grid, pad6, MAX_RANK};
use crate::shaders;
use crate::tensor::{DType, Tensor};

kernel_params! {
    /// The binary ops' params (`elementwise.wgsl`).
    pub(crate) struct BinaryParams for [shaders::ELEMENTWISE] {
        op: u32, // a BinaryKind
        numel: u32,
        broadcast: u32,             // a Broadcast
        out_dims: [u32; MAX_RANK],  // the output shape, padded in front with 1s
        a_strides: [u32; MAX_RANK], // 0 on an axis that a broadcasts along
        b_strides: [u32; MAX_RANK],
    }
}

kernel_params! {
    /// The unary ops' params, forward and backward.
    pub(crate) struct UnaryParams for [shaders::UNARY, shaders::UNARY_BACKWARD] {
        op: u32, // UnaryKind::code
        numel: u32,
        scalar: f32, // the factor of Scale
    }
}

kernel_params! {
    /// Fill's params.
    pub(crate) struct FillParams for [shaders::FILL] {
        numel: u32,
        value: f32,
    }
}

kernel_params! {
    /// SwiGLU's params, forward and backward.
    pub(crate) struct SwigluParams for [shaders::SWIGLU, shaders::SWIGLU_BACKWARD] {
        numel: u32,
    }
}

/// Binary op codes, as in `shaders/elementwise.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    /// a + b
    Add = 0,
    /// a - b
    Sub = 1,
    /// a * b
    Mul = 2,
    /// a / b
    Div = 3,
}

/// Unary op codes, as in `shaders/unary.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryKind {
    /// -x
    Neg,
    /// e^x
    Exp,
    /// The natural logarithm.
    Log,
    /// The square root.
    Sqrt,
    /// x * sigmoid(x)
    Silu,
    /// x * s
    Scale(f32),
    /// x rounded to the nearest f16 (kept in f32); its gradient passes straight through,
    /// as a cast's does. What a half-precision matmul does to its inputs (`--precision
    /// mixed`).
    RoundHalf,
}

impl UnaryKind {
    fn code(self) -> (u32, f32) {
        match self {
            UnaryKind::Neg => (0, 0.0),
            UnaryKind::Exp => (1, 0.0),
            UnaryKind::Log => (2, 0.0),
            UnaryKind::Sqrt => (3, 0.0),
            UnaryKind::Silu => (4, 0.0),
            UnaryKind::Scale(s) => (5, s),
            UnaryKind::RoundHalf => (6, 0.0),
        }
    }
}

/// The broadcast shape of `a` and `b` (NumPy rules), or an error naming both (`op` names the
/// op in it). Ranks above 6 are refused.
///
/// ```
/// use hydralora_engine::ops::elementwise::broadcast_shape;
/// assert_eq!(broadcast_shape("add", &[2, 1, 3], &[4, 1]).unwrap(), [2, 4, 3]);
/// assert!(broadcast_shape("add", &[2, 3], &[4]).is_err());
/// ```
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    if rank > MAX_RANK {
        return Err(Error::InvalidArgument {
            op,
            shape: a.to_vec(),
            why: format!("rank above {MAX_RANK}"),
        });
    }
    let dim = |s: &[usize], d: usize| {
        if d < rank - s.len() {
            1
        } else {
            s[d - (rank - s.len())]
        }
    };
    (0..rank)
        .map(|d| match (dim(a, d), dim(b, d)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::ShapeMismatch {
                op,
                lhs: a.to_vec(),
                rhs: b.to_vec(),
                why: format!("axis {d} cannot be broadcast"),
            }),
        })
        .collect()
}

/// Strides of `shape` read as `out_shape`: 0 along broadcast axes.
fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let own = contiguous_strides(shape);
    let lead = out_shape.len() - shape.len();
    (0..out_shape.len())
        .map(|d| {
            if d < lead || shape[d - lead] == 1 {
                0
            } else {
                own[d - lead]
            }
        })
        .collect()
}

/// How the operands of a binary op meet its output shape (`elementwise.wgsl`'s constants).
#[derive(Clone, Copy)]
enum Broadcast {
    /// a, b and the output share one shape.
    Same = 0,
    /// Any NumPy broadcast, with index arithmetic per element.
    General = 1,
    /// a has the output's shape and b is one value (a scale, a count).
    BScalar = 2,
}

pub(crate) fn binary(a: &Tensor, b: &Tensor, kind: BinaryKind) -> Result<Tensor> {
    let name = match kind {
        BinaryKind::Add => "add",
        BinaryKind::Sub => "sub",
        BinaryKind::Mul => "mul",
        BinaryKind::Div => "div",
    };
    a.expect_same_device(name, b)?;
    a.expect_dtype(name, DType::F32, "f32")?;
    b.expect_dtype(name, DType::F32, "f32")?;
    a.expect_bindable(name)?;
    b.expect_bindable(name)?;
    let shape = broadcast_shape(name, a.shape(), b.shape())?;
    let out = Tensor::empty_bindable(name, a.device(), &shape, DType::F32)?;
    let numel = out.numel();
    let broadcast = if a.shape() == b.shape() {
        Broadcast::Same
    } else if a.shape() == shape.as_slice() && b.numel() == 1 {
        Broadcast::BScalar
    } else {
        Broadcast::General
    };
    let params = BinaryParams {
        op: kind as u32,
        numel: numel as u32,
        broadcast: broadcast as u32,
        out_dims: pad6(&shape, 1),
        a_strides: pad6(&broadcast_strides(a.shape(), &shape), 0),
        b_strides: pad6(&broadcast_strides(b.shape(), &shape), 0),
    };
    // Flat cases: four elements per invocation; any other broadcast: one, with index arithmetic.
    let (entry, items) = match broadcast {
        Broadcast::Same | Broadcast::BScalar => ("binary_flat", numel.div_ceil(4)),
        Broadcast::General => ("binary", numel),
    };
    a.device().dispatch(
        &shaders::ELEMENTWISE,
        entry,
        &params,
        &[a.binding(), b.binding()],
        &[out.binding()],
        grid(a.device(), items, 256),
    );
    Ok(out.with_op(
        || Op::Binary {
            a: a.clone(),
            b: b.clone(),
            kind,
        },
        &[a, b],
    ))
}

pub(crate) fn unary(x: &Tensor, kind: UnaryKind) -> Result<Tensor> {
    x.expect_dtype("unary", DType::F32, "f32")?;
    x.expect_bindable("unary")?;
    let out = Tensor::empty(x.device(), x.shape(), DType::F32)?;
    let (code, scalar) = kind.code();
    x.device().dispatch(
        &shaders::UNARY,
        "unary",
        &UnaryParams {
            op: code,
            numel: x.numel() as u32,
            scalar,
        },
        &[x.binding()],
        &[out.binding()],
        grid(x.device(), x.numel(), 256),
    );
    Ok(out.with_op(|| Op::Unary { x: x.clone(), kind }, &[x]))
}

/// dx for y = f(x), given the upstream gradient dy.
pub(crate) fn unary_backward(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    kind: UnaryKind,
) -> Result<Tensor> {
    let dx = Tensor::empty(x.device(), x.shape(), DType::F32)?;
    let (code, scalar) = kind.code();
    x.device().dispatch(
        &shaders::UNARY_BACKWARD,
        "unary_backward",
        &UnaryParams {
            op: code,
            numel: x.numel() as u32,
            scalar,
        },
        &[x.binding(), y.binding(), dy.binding()],
        &[dx.binding()],
        grid(x.device(), x.numel(), 256),
    );
    Ok(dx)
}

/// Overwrites every element of `t` with `value`.
pub(crate) fn fill(t: &Tensor, value: f32) {
    t.device().dispatch(
        &shaders::FILL,
        "fill",
        &FillParams {
            numel: t.numel() as u32,
            value,
        },
        &[],
        &[t.binding()],
        grid(t.device(), t.numel(), 256),
    );
}

/// silu(g) * u in one kernel (the LLaMA MLP's gate); g and u of one shape.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.expect_dtype("swiglu", DType::F32, "f32")?;
    u.expect_dtype("swiglu", DType::F32, "f32")?;
    g.expect_same_device("swiglu", u)?;
    if g.shape() != u.shape() {
        return Err(Error::ShapeMismatch {
            op: "swiglu",
            lhs: g.shape().to_vec(),
            rhs: u.shape().to_vec(),
            why: "gate and up must have one shape".into(),
        });
    }
    g.expect_bindable("swiglu")?;
    let y = Tensor::empty_bindable("swiglu", g.device(), g.shape(), DType::F32)?;
    let n = g.numel();
    g.device().dispatch(
        &shaders::SWIGLU,
        "swiglu",
        &SwigluParams { numel: n as u32 },
        &[g.binding(), u.binding()],
        &[y.binding()],
        grid(g.device(), n.div_ceil(4), 256),
    );
    Ok(y.with_op(
        || Op::Swiglu {
            g: g.clone(),
            u: u.clone(),
        },
        &[g, u],
    ))
}

/// (dg, du) of swiglu.
pub(crate) fn swiglu_backward(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = g.device();
    let (dg, du) = (
        Tensor::empty(dev, g.shape(), DType::F32)?,
        Tensor::empty(dev, u.shape(), DType::F32)?,
    );
    let n = g.numel();
    dev.dispatch(
        &shaders::SWIGLU_BACKWARD,
        "swiglu_backward",
        &SwigluParams { numel: n as u32 },
        &[g.binding(), u.binding(), dy.binding()],
        &[dg.binding(), du.binding()],
        grid(dev, n.div_ceil(4), 256),
    );
    Ok((dg, du))
}

impl Tensor {
    /// `self + rhs`, elementwise with NumPy broadcasting (f32, rank at most 6). Fails with
    /// [`Error::ShapeMismatch`] when the shapes do not broadcast.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(self, rhs, BinaryKind::Add)
    }
    /// `self - rhs`, broadcast like [`Tensor::add`].
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(self, rhs, BinaryKind::Sub)
    }
    /// `self * rhs` elementwise, broadcast like [`Tensor::add`].
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(self, rhs, BinaryKind::Mul)
    }
    /// `self / rhs` elementwise, broadcast like [`Tensor::add`].
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(self, rhs, BinaryKind::Div)
    }
    /// -x, elementwise.
    pub fn neg(&self) -> Result<Tensor> {
        unary(self, UnaryKind::Neg)
    }
    /// e^x, elementwise.
    pub fn exp(&self) -> Result<Tensor> {
        unary(self, UnaryKind::Exp)
    }
    /// The natural logarithm, elementwise.
    pub fn log(&self) -> Result<Tensor> {
        unary(self, UnaryKind::Log)
    }
    /// The square root, elementwise.
    pub fn sqrt(&self) -> Result<Tensor> {
        unary(self, UnaryKind::Sqrt)
    }
    /// x * sigmoid(x)
    pub fn silu(&self) -> Result<Tensor> {
        unary(self, UnaryKind::Silu)
    }
    /// x * s
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        unary(self, UnaryKind::Scale(s))
    }
    /// Each element rounded to the nearest f16 value (still stored as f32; beyond f16's
    /// range, ±infinity); the gradient passes through unchanged (straight-through, as a
    /// cast's). `--precision mixed` feeds the frozen weights' matmuls through it.
    pub fn round_half(&self) -> Result<Tensor> {
        unary(self, UnaryKind::RoundHalf)
    }
}
