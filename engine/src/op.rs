//! The list of differentiable ops: what each one remembers for its backward pass.
//! A tensor computed from tensors that track gradients holds one of these; the rules that
//! turn an output gradient into input gradients are all in `backward.rs`.

use crate::ops::attention::FlashPlan;
use crate::ops::elementwise::{BinaryKind, UnaryKind};
use crate::ops::rope::RopeTables;
use crate::tensor::Tensor;

pub(crate) enum Op {
    /// alpha op(a) op(b), op = transpose when the flag is set.
    Matmul {
        a: Tensor,
        b: Tensor,
        ta: bool,
        tb: bool,
        alpha: f32,
    },
    /// c + alpha op(a) op(b), the product summed into c's buffer (c's value is never read
    /// again: see `reads_output`).
    MatmulAdd {
        c: Tensor,
        a: Tensor,
        b: Tensor,
        ta: bool,
        tb: bool,
        alpha: f32,
    },
    /// a (+ - * /) b with broadcasting.
    Binary {
        a: Tensor,
        b: Tensor,
        kind: BinaryKind,
    },
    /// silu(g) * u, fused.
    Swiglu {
        g: Tensor,
        u: Tensor,
    },
    /// neg, exp, log, sqrt, silu, scale.
    Unary {
        x: Tensor,
        kind: UnaryKind,
    },
    /// Sum over one axis, kept as size 1 (`sum_keepdim`); backward broadcasts the gradient
    /// back to x's shape, so the axis need not be stored.
    Sum {
        x: Tensor,
    },
    /// softmax(scale * x) over the last axis (causal masking included: masked y = 0).
    Softmax {
        x: Tensor,
        scale: f32,
    },
    /// Fused causal attention (the flash kernels); the log-sum-exp of each query row's
    /// scores is saved, [B, Hq, T], and the probabilities are recomputed from it.
    FlashAttention {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lse: Tensor,
        plan: FlashPlan,
    },
    /// w * x * rstd, rstd = 1/sqrt(mean(x^2) + eps) per row (saved).
    RmsNorm {
        x: Tensor,
        w: Tensor,
        rstd: Tensor,
    },
    /// rotate-half RoPE with the given tables.
    Rope {
        x: Tensor,
        tables: RopeTables,
        t_div: usize,
    },
    /// table[ids]; `ids_host` is the host's copy when the caller had one (the backward then
    /// groups positions by id without reading the device back).
    Embedding {
        table: Tensor,
        ids: Tensor,
        ids_host: Option<std::sync::Arc<[u32]>>,
    },
    /// mean cross-entropy; lse per row and the counted-row total are saved.
    CrossEntropy {
        logits: Tensor,
        labels: Tensor,
        lse: Tensor,
        count: Tensor,
    },
    /// mean cross-entropy of hidden W^T, W in row parts, chunk by chunk (the logits are
    /// never whole). Its gradients were computed in the forward, unscaled (a sum over
    /// counted rows), for the inputs that tracked gradients then: hidden's [N, H], then each
    /// part's [V_i, H]; the backward scales them by grad / count.
    LinearCrossEntropy {
        hidden: Tensor,
        parts: Vec<Tensor>,
        grads: Vec<Option<Tensor>>,
        count: Tensor,
    },
    /// z[t, i r + j] = g[t, i] h[t, j].
    GateExpand {
        g: Tensor,
        h: Tensor,
    },
    /// z[t, i r + j] = softmax(logits_src[t, r..])[i] h_src[t, j], r = `rank`.
    RoutedExpand {
        logits_src: Tensor,
        h_src: Tensor,
        rank: usize,
    },
    Reshape {
        x: Tensor,
    },
    Transpose {
        x: Tensor,
        d0: usize,
        d1: usize,
    },
    Narrow {
        x: Tensor,
        axis: usize,
        start: usize,
    },
    Concat {
        parts: Vec<Tensor>,
        axis: usize,
    },
    /// A user-defined op (see [`crate::CustomOp`]).
    Custom {
        inputs: Vec<Tensor>,
        op: std::sync::Arc<dyn crate::CustomOp>,
    },
    /// `f(inputs)` run without recording (see [`crate::checkpoint`]): only the inputs and
    /// `f` are kept, and the backward rule re-runs `f`, recording, to backpropagate.
    Checkpoint {
        inputs: Vec<Tensor>,
        f: std::sync::Arc<CheckpointFn>,
    },
}

/// A checkpointed function: its inputs in, one tensor out (see [`crate::checkpoint`]).
pub type CheckpointFn = dyn Fn(&[Tensor]) -> crate::Result<Tensor> + Send + Sync;

impl Op {
    /// Whether this op's backward rule reads its own output's value. One that does not may
    /// have its output's buffer reused in place (by `add_matmul_scaled`) once nothing else
    /// holds it.
    pub fn reads_output(&self) -> bool {
        match self {
            Op::Binary { kind, .. } => *kind == crate::ops::elementwise::BinaryKind::Div,
            Op::Unary { .. }
            | Op::Softmax { .. }
            | Op::FlashAttention { .. }
            | Op::Custom { .. } => true,
            _ => false,
        }
    }

    /// The tensors this op read, in the order its backward rule returns gradients for.
    pub fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Matmul { a, b, .. } | Op::Binary { a, b, .. } => vec![a, b],
            Op::MatmulAdd { c, a, b, .. } => vec![c, a, b],
            Op::Unary { x, .. }
            | Op::Sum { x, .. }
            | Op::Softmax { x, .. }
            | Op::Rope { x, .. }
            | Op::Reshape { x }
            | Op::Transpose { x, .. }
            | Op::Narrow { x, .. } => vec![x],
            Op::RmsNorm { x, w, .. } => vec![x, w],
            Op::Swiglu { g, u } => vec![g, u],
            Op::FlashAttention { q, k, v, .. } => vec![q, k, v],
            Op::Embedding { table, .. } => vec![table],
            Op::CrossEntropy { logits, .. } => vec![logits],
            Op::LinearCrossEntropy { hidden, parts, .. } => {
                std::iter::once(hidden).chain(parts).collect()
            }
            Op::GateExpand { g, h } => vec![g, h],
            Op::RoutedExpand {
                logits_src, h_src, ..
            } => vec![logits_src, h_src],
            Op::Concat { parts, .. } => parts.iter().collect(),
            Op::Custom { inputs, .. } | Op::Checkpoint { inputs, .. } => inputs.iter().collect(),
        }
    }
}
