//! Batched matrix multiply with transpose flags. Transposes and broadcasts are strides
//! handed to one kernel, never copies.

use crate::error::{Error, Result};
use crate::op::Op;
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// How one operand is laid out: its batch count and matrix dims as stored.
struct Operand {
    batch: usize,
    rows: usize, // the stored second-to-last dim
    cols: usize, // the stored last dim
}

fn operand(op: &'static str, t: &Tensor) -> Result<Operand> {
    if t.rank() < 2 {
        return Err(Error::InvalidArgument {
            op,
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

/// `op(a) op(b)`, where `op(x)` transposes the last two dims when its flag is set.
/// a: [..., M, K] (or [..., K, M] with `ta`), b: [..., K, N] (or [..., N, K] with `tb`);
/// a rank-2 operand is shared by every batch of the other. Result: [..., M, N].
pub fn matmul_t(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    const OP: &str = "matmul";
    a.expect_same_device(OP, b)?;
    a.expect_dtype(OP, DType::F32, "f32")?;
    b.expect_dtype(OP, DType::F32, "f32")?;
    let (oa, ob) = (operand(OP, a)?, operand(OP, b)?);
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
    let out = Tensor::empty(a.device(), &out_shape, DType::F32)?;
    out.expect_bindable(OP)?;
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
    let params = [m_eff, n, k, a_batch, a_row, a_col, b_batch, b_row, b_col].map(|x| x as u32);
    let groups = [
        n.div_ceil(32) as u32,
        m_eff.div_ceil(32) as u32,
        batch_eff as u32,
    ];
    let max = a
        .device()
        .info()
        .limits
        .max_compute_workgroups_per_dimension;
    if groups.iter().any(|&g| g > max) {
        return Err(Error::InvalidArgument {
            op: OP,
            shape: out_shape,
            why: format!("needs {groups:?} workgroups, over the device's {max} per dimension"),
        });
    }
    a.device().dispatch(
        &shaders::MATMUL,
        "matmul",
        &params,
        &[a.binding(), b.binding()],
        &[out.binding()],
        groups,
    );
    Ok(out.with_op(
        || Op::Matmul {
            a: a.clone(),
            b: b.clone(),
            ta,
            tb,
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
