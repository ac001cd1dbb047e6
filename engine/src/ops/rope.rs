//! Rotary position embeddings in Hugging Face LLaMA's "rotate half" layout. The cos/sin
//! tables are computed on the host in f64 (exact on every GPU, whatever its sin/cos precision).

use crate::device::Device;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::grid;
use crate::ops::kernel_params::kernel_params;
use crate::shaders;
use crate::tensor::{DType, Tensor};

kernel_params! {
    /// RoPE's params: `rows` head vectors of `2 half`; row r uses table row
    /// `(r / t_div) % t_mod`, rotated by `sign` times its angle.
    pub(crate) struct RopeParams for [shaders::ROPE] {
        rows: u32,
        half: u32, // head_dim / 2
        t_div: u32,
        t_mod: u32, // table rows (positions)
        sign: f32,  // 1, or -1 for the backward
    }
}

/// cos and sin of `position * inv_freq[i]`, each [positions, head_dim / 2].
#[derive(Clone, Debug)]
pub struct RopeTables {
    /// `cos(position * inv_freq[i])`, `[positions, head_dim / 2]`.
    pub cos: Tensor,
    /// `sin(position * inv_freq[i])`, `[positions, head_dim / 2]`.
    pub sin: Tensor,
}

impl RopeTables {
    /// Tables for the given positions; `inv_freq` [head_dim / 2] is 1 / theta^(2i / head_dim)
    /// or a scaled variant (see [`rope_inv_freq`]).
    pub fn new(device: &Device, positions: &[u32], inv_freq: &[f64]) -> Result<RopeTables> {
        let half = inv_freq.len();
        let (mut cos, mut sin) = (
            Vec::with_capacity(positions.len() * half),
            Vec::with_capacity(positions.len() * half),
        );
        for &p in positions {
            for &f in inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let shape = [positions.len(), half];
        Ok(RopeTables {
            cos: Tensor::from_slice(device, &cos, &shape)?,
            sin: Tensor::from_slice(device, &sin, &shape)?,
        })
    }

    /// Number of positions (table rows).
    pub fn positions(&self) -> usize {
        self.cos.dim(0)
    }
}

/// The plain RoPE inverse frequencies `1 / theta^(2i / head_dim)`, i < head_dim / 2.
///
/// ```
/// let f = hydralora_engine::rope_inv_freq(4, 10_000.0);
/// assert_eq!(f.len(), 2);
/// assert!((f[0] - 1.0).abs() < 1e-12 && (f[1] - 0.01).abs() < 1e-12);
/// ```
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
        .collect()
}

/// Which table row each head vector uses: x viewed as [rows, head_dim] has position
/// `(row / t_div) % positions`. For x [B, T, H, D], t_div = H; for [B, H, T, D], t_div = 1.
pub fn rope(x: &Tensor, tables: &RopeTables, t_div: usize) -> Result<Tensor> {
    x.expect_dtype("rope", DType::F32, "f32")?;
    x.expect_same_device("rope", &tables.cos)?;
    x.expect_bindable("rope")?;
    let half = tables.cos.dim(1);
    let d = *x.shape().last().unwrap_or(&0);
    if d != 2 * half || t_div == 0 {
        return Err(Error::ShapeMismatch {
            op: "rope",
            lhs: x.shape().to_vec(),
            rhs: tables.cos.shape().to_vec(),
            why: format!("the last dim must be twice the table width {half} (t_div {t_div})"),
        });
    }
    let y = rotate(x, tables, t_div, 1.0)?;
    Ok(y.with_op(
        || Op::Rope {
            x: x.clone(),
            tables: tables.clone(),
            t_div,
        },
        &[x],
    ))
}

/// Rotates every head vector by +angle (sign 1) or -angle (sign -1, the backward).
pub(crate) fn rotate(x: &Tensor, tables: &RopeTables, t_div: usize, sign: f32) -> Result<Tensor> {
    let half = tables.cos.dim(1);
    let rows = x.numel() / (2 * half).max(1);
    let y = Tensor::empty(x.device(), x.shape(), DType::F32)?;
    x.device().dispatch(
        &shaders::ROPE,
        "rope",
        &RopeParams {
            rows: rows as u32,
            half: half as u32,
            t_div: t_div as u32,
            t_mod: tables.positions() as u32,
            sign,
        },
        &[x.binding(), tables.cos.binding(), tables.sin.binding()],
        &[y.binding()],
        grid(x.device(), rows * half, 256),
    );
    Ok(y)
}
