//! Reverse mode: one pass over the graph in reverse topological order, and the backward
//! rule of every op in one `match`. Rules run without recording (no higher-order graphs),
//! except a checkpoint's, which re-runs its function recording (see [`checkpoint`]).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::op::{CheckpointFn, Op};
use crate::ops::elementwise::{swiglu_backward, unary_backward, BinaryKind};
use crate::ops::{
    attention, embedding, gate, loss,
    matmul::{matmul_accumulate_scaled, matmul_scaled},
    norm,
    reduce::sum_to_shape,
    rope, softmax,
};
use crate::tensor::{Tensor, TensorId};

thread_local! {
    static NO_GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
    /// Checkpoint forwards running (unrecorded) on this thread.
    static CHECKPOINT_FORWARDS: Cell<usize> = const { Cell::new(0) };
    /// Checkpoint functions being re-run by their backward rule on this thread.
    static RECOMPUTES: Cell<usize> = const { Cell::new(0) };
}

/// Whether ops on this thread record the graph (false inside [`no_grad`]).
///
/// ```
/// use hydralora_engine::{is_recording, no_grad};
/// assert!(is_recording());
/// no_grad(|| assert!(!is_recording()));
/// assert!(is_recording());
/// ```
pub fn is_recording() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

/// Runs `f` without recording any op: inference, optimizer updates, evaluation. Results
/// computed inside hold no graph (no inputs kept alive, no gradient flows through them).
/// The setting is per thread.
///
/// ```no_run
/// use hydralora_engine::{no_grad, Device, Tensor};
/// # fn main() -> hydralora_engine::Result<()> {
/// let dev = Device::new()?;
/// let w = Tensor::rand_uniform(&dev, &[4, 4], -1.0, 1.0, 0)?.into_param();
/// let x = Tensor::rand_uniform(&dev, &[2, 4], -1.0, 1.0, 1)?;
/// assert!(x.matmul_nt(&w)?.tracks_grad());
/// let y = no_grad(|| x.matmul_nt(&w))?; // [2, 4]
/// assert!(!y.tracks_grad());
/// # Ok(()) }
/// ```
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = NoGradGuard::new();
    f()
}

/// Stops recording until dropped.
pub struct NoGradGuard(());

impl NoGradGuard {
    /// Turns recording off on this thread (nested guards count; recording resumes when the
    /// last one is dropped).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
        NoGradGuard(())
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Whether this thread computes for training: recording a graph, or running the forward of a
/// [`checkpoint`] (unrecorded now, recorded when its backward re-runs it). Training-only
/// behaviour, such as dropout, keys on this rather than on [`is_recording`], so that a
/// checkpoint's forward and its re-run compute the same values.
///
/// ```
/// use hydralora_engine::{is_training, no_grad};
/// assert!(is_training());
/// no_grad(|| assert!(!is_training()));
/// ```
pub fn is_training() -> bool {
    is_recording() || CHECKPOINT_FORWARDS.with(|d| d.get() > 0)
}

/// Whether this thread is re-running a [`checkpoint`]'s function in its backward pass: the
/// values are the forward's again, so side records of the forward (router statistics) need
/// not be taken twice.
pub fn is_recomputing() -> bool {
    RECOMPUTES.with(|d| d.get() > 0)
}

/// Adds one to a thread-local counter until dropped.
struct Depth(&'static std::thread::LocalKey<Cell<usize>>);

impl Depth {
    fn enter(key: &'static std::thread::LocalKey<Cell<usize>>) -> Depth {
        key.with(|d| d.set(d.get() + 1));
        Depth(key)
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        self.0.with(|d| d.set(d.get() - 1));
    }
}

/// Turns recording on (whatever [`no_grad`] said) until dropped, then restores it.
struct RecordingGuard(usize);

impl RecordingGuard {
    fn new() -> Self {
        RecordingGuard(NO_GRAD_DEPTH.with(|d| d.replace(0)))
    }
}

impl Drop for RecordingGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(self.0));
    }
}

/// Activation checkpointing: `f(inputs)`, keeping for backward only `inputs` and `f` instead
/// of every intermediate result of `f`.
///
/// While recording, `f` runs unrecorded ([`is_training`] stays true, so dropout still
/// applies) and the result records one op. Its backward rule re-runs `f` on the saved inputs,
/// recording, as new leaves that track gradients where the originals did, backpropagates the
/// output's gradient through that graph, and hands back the inputs' gradients; the
/// gradients of parameters `f` reads itself (captured, not passed as inputs) land in the
/// same [`Gradients`] as if `f` had been recorded. The re-run uses the same kernels in the
/// same order, so every gradient is bitwise the one of the recorded `f`. `f` must compute the
/// same thing when called again: randomness inside it must come from a seed it captures.
/// Without recording (under [`no_grad`]), it is just `f(inputs)`.
///
/// The op is recorded whenever recording is on, even when no input tracks gradients: the
/// parameters `f` reads are only seen when it re-runs.
///
/// ```no_run
/// use hydralora_engine::{checkpoint, Device, Tensor};
/// # fn main() -> hydralora_engine::Result<()> {
/// let dev = Device::new()?;
/// let w = Tensor::rand_uniform(&dev, &[4, 4], -1.0, 1.0, 0)?.into_param(); // [4, 4]
/// let x = Tensor::rand_uniform(&dev, &[2, 4], -1.0, 1.0, 1)?; // [2, 4]
/// let w_in = w.clone();
/// // silu(x W^T) W^T: the [2, 4] intermediate is recomputed in backward, not kept.
/// let y = checkpoint(&[&x], move |xs| xs[0].matmul_nt(&w_in)?.silu()?.matmul_nt(&w_in))?;
/// let grads = y.sum_all()?.backward()?;
/// assert_eq!(grads.get(&w).unwrap().shape(), &[4, 4]);
/// # Ok(()) }
/// ```
pub fn checkpoint(
    inputs: &[&Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    let inputs: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    if !is_recording() {
        return f(&inputs);
    }
    let out = {
        let _unrecorded = NoGradGuard::new();
        let _forward = Depth::enter(&CHECKPOINT_FORWARDS);
        f(&inputs)?
    };
    Ok(out.recorded(Op::Checkpoint {
        inputs,
        f: Arc::new(f),
    }))
}

/// A checkpoint's backward: `f` re-run, recording, on leaves holding the saved inputs, and
/// `g` backpropagated through it. Returns the inputs' gradients; the gradients of the
/// parameters `f` read are summed into `params`.
fn checkpoint_backward(
    inputs: &[Tensor],
    f: &CheckpointFn,
    g: &Tensor,
    params: &mut Gradients,
) -> Result<Vec<Option<Tensor>>> {
    let leaves: Vec<Tensor> = inputs.iter().map(|t| t.leaf(t.tracks_grad())).collect();
    let out = {
        let _recording = RecordingGuard::new();
        let _recompute = Depth::enter(&RECOMPUTES);
        f(&leaves)?
    };
    if out.shape() != g.shape() {
        return Err(Error::Backward(format!(
            "checkpoint: the function re-run gave shape {:?}, the forward {:?}",
            out.shape(),
            g.shape()
        )));
    }
    if !out.tracks_grad() {
        return Ok(vec![None; inputs.len()]);
    }
    let mut inner = out.backward_with(g.clone())?;
    let grads = leaves.iter().map(|t| inner.map.remove(&t.id())).collect();
    for (id, grad) in inner.map {
        params.accumulate(id, grad)?;
    }
    Ok(grads)
}

/// Gradients of the parameters (leaves that require grad), keyed by tensor id.
#[derive(Default)]
pub struct Gradients {
    map: HashMap<TensorId, Tensor>,
}

impl Gradients {
    /// The gradient of parameter `t` (same shape as `t`), or `None` when the output did not
    /// depend on it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }
    /// [`Gradients::get`] by tensor id.
    pub fn get_id(&self, id: TensorId) -> Option<&Tensor> {
        self.map.get(&id)
    }
    /// Takes the gradient of `t` out (to accumulate into it or to free it early).
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }
    /// Sets the gradient of `t`, replacing any (for gradient accumulation and clipping).
    pub fn insert(&mut self, t: &Tensor, grad: Tensor) {
        self.map.insert(t.id(), grad);
    }
    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether no parameter has a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Every (parameter id, gradient) pair, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&TensorId, &Tensor)> {
        self.map.iter()
    }

    /// Adds `grad` to the gradient of parameter `id` (sets it when there is none): a
    /// parameter read inside a checkpoint and elsewhere collects both parts.
    fn accumulate(&mut self, id: TensorId, grad: Tensor) -> Result<()> {
        let sum = match self.map.remove(&id) {
            Some(prev) => prev.add(&grad)?,
            None => grad,
        };
        self.map.insert(id, sum);
        Ok(())
    }
}

impl Tensor {
    /// Gradients of this tensor (a scalar, or any shape with an implied gradient of ones)
    /// with respect to every parameter it depends on. Only parameters
    /// ([`Tensor::into_param`]) get an entry; each gradient has its parameter's shape.
    ///
    /// ```no_run
    /// use hydralora_engine::{Device, Tensor};
    /// # fn main() -> hydralora_engine::Result<()> {
    /// let dev = Device::new()?;
    /// // y = sum(x W^T), x [1, 2], W [3, 2]: dy/dW[i, j] = x[j].
    /// let w = Tensor::zeros(&dev, &[3, 2])?.into_param();
    /// let x = Tensor::from_slice(&dev, &[1.0, 2.0], &[1, 2])?;
    /// let y = x.matmul_nt(&w)?.sum_all()?; // [1]
    /// let grads = y.backward()?;
    /// let dw = grads.get(&w).expect("y depends on w").to_vec_f32()?;
    /// assert_eq!(dw, [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
    /// assert!(grads.get(&x).is_none()); // x is not a parameter
    /// # Ok(()) }
    /// ```
    pub fn backward(&self) -> Result<Gradients> {
        let ones = no_grad(|| Tensor::full(self.device(), self.shape(), 1.0))?;
        self.backward_with(ones)
    }

    /// Backward from a given output gradient (same shape as `self`, else
    /// [`Error::Backward`]; on the same device, else [`Error::DeviceMismatch`]).
    pub fn backward_with(&self, grad: Tensor) -> Result<Gradients> {
        if grad.shape() != self.shape() {
            return Err(Error::Backward(format!(
                "gradient shape {:?} for a tensor of shape {:?}",
                grad.shape(),
                self.shape()
            )));
        }
        self.expect_same_device("backward", &grad)?;
        let _guard = NoGradGuard::new();
        let order = topological_order(self);
        let mut pending: HashMap<TensorId, Tensor> = HashMap::from([(self.id(), grad)]);
        let mut params = Gradients::default();
        for node in order.iter().rev() {
            // Taking the gradient out frees it as soon as it has been consumed.
            let Some(g) = pending.remove(&node.id()) else {
                continue;
            };
            let Some(op) = node.op() else {
                if node.requires_grad() {
                    params.accumulate(node.id(), g)?;
                }
                continue;
            };
            // Only the inputs in the graph get a gradient: a frozen weight's is never computed.
            let inputs = op.inputs();
            let needs: Vec<bool> = inputs.iter().map(|t| t.tracks_grad()).collect();
            // The gradient each input has so far: a rule may sum its part straight into it.
            let mut sums: Vec<Option<Tensor>> = inputs
                .iter()
                .map(|t| {
                    if t.tracks_grad() {
                        pending.remove(&t.id())
                    } else {
                        None
                    }
                })
                .collect();
            let grads = rule(op, node, &g, (&needs, &mut sums), &mut params)?;
            for ((input, gi), prev) in inputs.into_iter().zip(grads).zip(sums) {
                if !input.tracks_grad() {
                    continue; // frozen: its gradient is never kept
                }
                let mut sum = match (prev, gi) {
                    (Some(prev), Some(gi)) => prev.add(&gi)?,
                    (Some(one), None) | (None, Some(one)) => one,
                    (None, None) => continue,
                };
                // An input used twice by this op (x * x) collects both parts.
                if let Some(other) = pending.remove(&input.id()) {
                    sum = other.add(&sum)?;
                }
                pending.insert(input.id(), sum);
            }
        }
        Ok(params)
    }
}

/// Every tensor `root` depends on through recorded ops, each after all its inputs.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative DFS: (tensor, inputs pushed yet?)
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(op) = t.op() {
            for input in op.inputs() {
                if input.tracks_grad() && !seen.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}

/// The backward rule of each op: gradients of its inputs (in `Op::inputs` order) from the
/// gradient `g` of its output `out`. `None` where an input gets no gradient.
/// `needs[i]` says whether input i is in the graph; rules with costly gradients (matmul,
/// the binary ops) skip the ones nobody needs. `sums[i]` is the gradient input i has
/// collected so far: a rule that takes it returns the total (matmul sums its product into
/// it in place); one left there is added to the rule's part by the caller.
/// A rule that reads `out` must say so in `Op::reads_output` (`add_matmul_scaled` reuses
/// the buffer of an output whose rule does not). A checkpoint's rule sums the gradients of
/// the parameters its function read into `params`.
fn rule(
    op: &Op,
    out: &Tensor,
    g: &Tensor,
    (needs, sums): (&[bool], &mut [Option<Tensor>]),
    params: &mut Gradients,
) -> Result<Vec<Option<Tensor>>> {
    let need = |i: usize| needs.get(i).copied().unwrap_or(true);
    Ok(match op {
        Op::Matmul {
            a,
            b,
            ta,
            tb,
            alpha,
        } => {
            let (da, db) = matmul_grads((a, b, *ta, *tb, *alpha), g, (need(0), need(1)), sums)?;
            vec![da, db]
        }
        Op::MatmulAdd {
            a,
            b,
            ta,
            tb,
            alpha,
            ..
        } => {
            let (da, db) = matmul_grads(
                (a, b, *ta, *tb, *alpha),
                g,
                (need(1), need(2)),
                &mut sums[1..],
            )?;
            vec![Some(g.clone()), da, db]
        }
        Op::Binary { a, b, kind } => {
            let da = || match kind {
                BinaryKind::Add | BinaryKind::Sub => Ok(g.clone()),
                BinaryKind::Mul => g.mul(b),
                BinaryKind::Div => g.div(b),
            };
            let db = || match kind {
                BinaryKind::Add => Ok(g.clone()),
                BinaryKind::Sub => g.neg(),
                BinaryKind::Mul => g.mul(a),
                // d(a/b)/db = -a / b^2 = -out / b
                BinaryKind::Div => g.mul(out)?.div(b)?.neg(),
            };
            vec![
                need(0)
                    .then(|| sum_to_shape(&da()?, a.shape()))
                    .transpose()?,
                need(1)
                    .then(|| sum_to_shape(&db()?, b.shape()))
                    .transpose()?,
            ]
        }
        Op::Swiglu { g: gate, u } => {
            let (dg, du) = swiglu_backward(gate, u, g)?;
            vec![Some(dg), Some(du)]
        }
        Op::Unary { x, kind } => vec![Some(unary_backward(x, out, g, *kind)?)],
        Op::Sum { x, .. } => vec![Some(Tensor::zeros(x.device(), x.shape())?.add(g)?)],
        Op::Softmax { scale, .. } => vec![Some(softmax::softmax_backward(out, g, *scale)?)],
        Op::FlashAttention { q, k, v, lse, plan } => {
            let (dq, dk, dv) = attention::flash_backward(q, k, v, out, lse, g, plan)?;
            vec![Some(dq), Some(dk), Some(dv)]
        }
        Op::RmsNorm { x, w, rstd } => {
            let (dx, dw) = norm::rms_norm_backward(x, w, rstd, g)?;
            vec![Some(dx), Some(dw)]
        }
        Op::Rope { tables, t_div, .. } => vec![Some(rope::rotate(g, tables, *t_div, -1.0)?)],
        Op::Embedding {
            table,
            ids,
            ids_host,
        } => {
            let ids_host = ids_host.as_deref();
            vec![Some(embedding::embedding_backward(
                table.shape(),
                ids,
                ids_host,
                g,
            )?)]
        }
        Op::CrossEntropy {
            logits,
            labels,
            lse,
            count,
        } => {
            vec![Some(loss::cross_entropy_backward(
                logits, labels, lse, count, g,
            )?)]
        }
        Op::LinearCrossEntropy { grads, count, .. } => {
            let scale = g.div(count)?; // [1]
            grads
                .iter()
                .map(|d| d.as_ref().map(|d| d.mul(&scale)).transpose())
                .collect::<Result<_>>()?
        }
        Op::GateExpand { g: gate_w, h } => {
            let (dg, dh) = gate::gate_expand_backward(gate_w, h, g)?;
            vec![Some(dg), Some(dh)]
        }
        Op::RoutedExpand {
            logits_src,
            h_src,
            rank,
        } => {
            // One source (no dropout): one gradient, both parts in their own columns.
            let (d_logits_src, d_h_src) =
                gate::routed_expand_backward(logits_src, h_src, *rank, g)?;
            vec![Some(d_logits_src), d_h_src]
        }
        Op::Reshape { x } => vec![Some(g.reshape(x.shape())?)],
        Op::Transpose { d0, d1, .. } => vec![Some(g.transpose(*d0, *d1)?)],
        Op::Narrow { x, axis, start } => vec![Some(
            Tensor::zeros(x.device(), x.shape())?.with_slice(*axis, *start, g)?,
        )],
        Op::Concat { parts, axis } => {
            let mut at = 0;
            let mut grads = Vec::with_capacity(parts.len());
            for p in parts {
                grads.push(Some(g.narrow(*axis, at, p.dim(*axis))?));
                at += p.dim(*axis);
            }
            grads
        }
        Op::Custom { inputs, op } => {
            let refs: Vec<&Tensor> = inputs.iter().collect();
            op.backward(&refs, out, g)?
        }
        Op::Checkpoint { inputs, f } => checkpoint_backward(inputs, f.as_ref(), g, params)?,
    })
}

/// The gradients of C = alpha op(A) op(B)'s operands from dC (those asked for), each summed
/// into its gradient so far (`sums[0]`, `sums[1]`) when there is one:
/// dop(A) = alpha dC op(B)^T, dop(B) = alpha op(A)^T dC.
type Grads = (Option<Tensor>, Option<Tensor>);
fn matmul_grads(
    (a, b, ta, tb, alpha): (&Tensor, &Tensor, bool, bool, f32),
    g: &Tensor,
    (need_a, need_b): (bool, bool),
    sums: &mut [Option<Tensor>],
) -> Result<Grads> {
    let (x, y, tx, ty) = if ta {
        (b, g, tb, true)
    } else {
        (g, b, false, !tb)
    };
    let da = need_a
        .then(|| product_grad(a, (x, y, tx, ty, alpha), sums[0].take()))
        .transpose()?;
    let (x, y, tx, ty) = if tb {
        (g, a, true, ta)
    } else {
        (a, g, !ta, false)
    };
    let db = need_b
        .then(|| product_grad(b, (x, y, tx, ty, alpha), sums[1].take()))
        .transpose()?;
    Ok((da, db))
}

/// The gradient of matmul operand `x` from the product `alpha op(p) op(q)`, summed to x's
/// shape (over broadcast batches), and into `sum` (x's gradient so far) in place when there
/// is one.
fn product_grad(
    x: &Tensor,
    (p, q, tp, tq, alpha): (&Tensor, &Tensor, bool, bool, f32),
    sum: Option<Tensor>,
) -> Result<Tensor> {
    match sum {
        Some(sum) if sum.shape() == x.shape() && p.rank().max(q.rank()) == x.rank() => {
            matmul_accumulate_scaled(sum, p, q, tp, tq, alpha)
        }
        Some(sum) => sum.add(&sum_to_shape(
            &matmul_scaled(p, q, tp, tq, alpha)?,
            x.shape(),
        )?),
        None => sum_to_shape(&matmul_scaled(p, q, tp, tq, alpha)?, x.shape()),
    }
}
