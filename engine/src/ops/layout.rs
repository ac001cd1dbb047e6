//! Shape changes: reshape (free), and transpose, narrow, concat (the strided copy kernel).

use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::kernel_params::kernel_params;
use crate::ops::{contiguous_strides, grid, pad6, MAX_RANK};
use crate::shaders;
use crate::tensor::{numel, DType, Tensor};

kernel_params! {
    /// The strided copy's params (offsets and strides in 32-bit words).
    pub(crate) struct CopyParams for [shaders::COPY] {
        numel: u32,
        in_offset: u32,
        out_offset: u32,
        dims: [u32; MAX_RANK], // the index space, padded in front with 1s
        in_strides: [u32; MAX_RANK],
        out_strides: [u32; MAX_RANK],
    }
}

kernel_params! {
    /// The f32/f16 casts' params.
    pub(crate) struct CastParams for [shaders::CAST] {
        numel: u32, // elements
    }
}

/// Copies the index space `dims` from `src` (strides, offset) into `dst` (strides, offset), in 32-bit words.
pub(crate) fn copy_strided(
    src: &Tensor,
    src_strides: &[usize],
    src_offset: usize,
    dst: &Tensor,
    dst_strides: &[usize],
    dst_offset: usize,
    dims: &[usize],
) {
    let params = CopyParams {
        numel: numel(dims) as u32,
        in_offset: src_offset as u32,
        out_offset: dst_offset as u32,
        dims: pad6(dims, 1),
        in_strides: pad6(src_strides, 0),
        out_strides: pad6(dst_strides, 0),
    };
    src.device().dispatch(
        &shaders::COPY,
        "copy_strided",
        &params,
        &[src.binding()],
        &[dst.binding()],
        grid(src.device(), numel(dims), 256),
    );
}

fn expect_words(op: &'static str, x: &Tensor) -> Result<()> {
    if x.dtype().block_bytes() != 4 {
        return Err(Error::DType {
            op,
            shape: x.shape().to_vec(),
            got: x.dtype(),
            expected: "a 32-bit dtype (f32, u32, i32)",
        });
    }
    if x.rank() > MAX_RANK {
        return Err(Error::InvalidArgument {
            op,
            shape: x.shape().to_vec(),
            why: format!("rank above {MAX_RANK}"),
        });
    }
    x.expect_bindable(op)
}

impl Tensor {
    /// The same data with another shape of the same element count (no copy); otherwise
    /// [`Error::ShapeMismatch`].
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
                why: "element counts differ".into(),
            });
        }
        let out = Tensor::from_parts(
            self.device(),
            shape.to_vec(),
            self.dtype(),
            self.0.storage.clone(),
            None,
        );
        Ok(out.with_op(|| Op::Reshape { x: self.clone() }, &[self]))
    }

    /// Swaps axes `d0` and `d1` (a copy); an axis past the rank is [`Error::InvalidArgument`].
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        expect_words("transpose", self)?;
        if d0 >= self.rank() || d1 >= self.rank() {
            return Err(Error::InvalidArgument {
                op: "transpose",
                shape: self.shape().to_vec(),
                why: format!("axes {d0} and {d1}"),
            });
        }
        let mut shape = self.shape().to_vec();
        shape.swap(d0, d1);
        let mut src_strides = contiguous_strides(self.shape());
        src_strides.swap(d0, d1);
        let out = Tensor::empty(self.device(), &shape, self.dtype())?;
        copy_strided(
            self,
            &src_strides,
            0,
            &out,
            &contiguous_strides(&shape),
            0,
            &shape,
        );
        Ok(out.with_op(
            || Op::Transpose {
                x: self.clone(),
                d0,
                d1,
            },
            &[self],
        ))
    }

    /// Elements `start..start + len` along `axis` (a copy); a range past the end is
    /// [`Error::InvalidArgument`].
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        expect_words("narrow", self)?;
        if axis >= self.rank() || start + len > self.dim(axis) {
            return Err(Error::InvalidArgument {
                op: "narrow",
                shape: self.shape().to_vec(),
                why: format!("axis {axis}, range {start}..{}", start + len),
            });
        }
        let mut shape = self.shape().to_vec();
        shape[axis] = len;
        let strides = contiguous_strides(self.shape());
        let out = Tensor::empty(self.device(), &shape, self.dtype())?;
        copy_strided(
            self,
            &strides,
            start * strides[axis],
            &out,
            &contiguous_strides(&shape),
            0,
            &shape,
        );
        Ok(out.with_op(
            || Op::Narrow {
                x: self.clone(),
                axis,
                start,
            },
            &[self],
        ))
    }

    /// Joins tensors along `axis`; every other dim and the dtype must match
    /// ([`Error::ShapeMismatch`]). No tensors, or no such axis, is [`Error::InvalidArgument`].
    pub fn concat(parts: &[Tensor], axis: usize) -> Result<Tensor> {
        let first = parts.first().ok_or(Error::InvalidArgument {
            op: "concat",
            shape: vec![],
            why: "no tensors".into(),
        })?;
        expect_words("concat", first)?;
        if axis >= first.rank() {
            return Err(Error::InvalidArgument {
                op: "concat",
                shape: first.shape().to_vec(),
                why: format!("no axis {axis}"),
            });
        }
        let mut shape = first.shape().to_vec();
        shape[axis] = 0;
        for p in parts {
            p.expect_same_device("concat", first)?;
            let same_rest = p.rank() == first.rank()
                && (0..p.rank()).all(|d| d == axis || p.dim(d) == first.dim(d))
                && p.dtype() == first.dtype();
            if !same_rest {
                return Err(Error::ShapeMismatch {
                    op: "concat",
                    lhs: first.shape().to_vec(),
                    rhs: p.shape().to_vec(),
                    why: format!("only axis {axis} may differ (and dtypes must match)"),
                });
            }
            shape[axis] += p.dim(axis);
        }
        let out = Tensor::empty_bindable("concat", first.device(), &shape, first.dtype())?;
        let out_strides = contiguous_strides(&shape);
        let mut at = 0;
        for p in parts {
            copy_strided(
                p,
                &contiguous_strides(p.shape()),
                0,
                &out,
                &out_strides,
                at * out_strides[axis],
                p.shape(),
            );
            at += p.dim(axis);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        Ok(out.with_op(
            || Op::Concat {
                parts: parts.to_vec(),
                axis,
            },
            &refs,
        ))
    }

    /// Writes `src` into the slice `start..` of `axis` of a copy of `self` (zeros elsewhere
    /// when `self` is zeros): the backward of narrow.
    pub(crate) fn with_slice(&self, axis: usize, start: usize, src: &Tensor) -> Result<Tensor> {
        let out = self.deep_clone()?;
        let strides = contiguous_strides(self.shape());
        copy_strided(
            src,
            &contiguous_strides(src.shape()),
            0,
            &out,
            &strides,
            start * strides[axis],
            src.shape(),
        );
        Ok(out)
    }
}

impl Tensor {
    /// This f32 tensor stored as f16 (half the memory; for frozen weights and storage).
    pub fn to_f16(&self) -> Result<Tensor> {
        self.expect_dtype("to_f16", DType::F32, "f32")?;
        self.cast("f32_to_f16", DType::F16)
    }

    /// This f16 tensor widened to f32 for compute.
    pub fn to_f32(&self) -> Result<Tensor> {
        self.expect_dtype("to_f32", DType::F16, "f16")?;
        self.cast("f16_to_f32", DType::F32)
    }

    fn cast(&self, entry: &'static str, to: DType) -> Result<Tensor> {
        self.expect_bindable(entry)?;
        let out = Tensor::empty_bindable(entry, self.device(), self.shape(), to)?;
        self.device().dispatch(
            &shaders::CAST,
            entry,
            &CastParams {
                numel: self.numel() as u32,
            },
            &[self.binding()],
            &[out.binding()],
            grid(self.device(), self.numel().div_ceil(2), 256),
        );
        Ok(out)
    }

    /// Uploads f16 host data.
    pub fn from_f16(device: &crate::Device, data: &[half::f16], shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(Error::HostLength {
                shape: shape.to_vec(),
                got: data.len(),
                want: numel(shape),
            });
        }
        let t = Tensor::empty(device, shape, DType::F16)?;
        device.upload(t.buffer(), bytemuck::cast_slice(data));
        Ok(t)
    }

    /// Uploads a frozen weight in a storage format, `bytes` exactly as [`crate::quant`]
    /// describes them (a GGUF tensor's data, a safetensors bf16 tensor's): f16, bf16 or a
    /// GGUF block format, whose blocks run along the last dim. Matmuls read it as their
    /// second operand; [`Tensor::to_vec_dequantized`] reads it back.
    pub fn from_blocks(
        device: &crate::Device,
        dtype: DType,
        bytes: &[u8],
        shape: &[usize],
    ) -> Result<Tensor> {
        let why = |why: String| Error::InvalidArgument {
            op: "from_blocks",
            shape: shape.to_vec(),
            why,
        };
        if !dtype.is_weight_storage() {
            return Err(why(format!("{dtype:?} is not a weight storage format")));
        }
        let per_block = dtype.block_elements();
        if shape.last().is_none_or(|&cols| cols % per_block != 0) {
            return Err(why(format!(
                "{} stores rows in blocks of {per_block} values: the last dim must be a multiple",
                dtype.name()
            )));
        }
        let want = dtype.storage_bytes(numel(shape));
        if bytes.len() as u64 != want {
            return Err(why(format!(
                "{} bytes given, {want} needed for {} values of {}",
                bytes.len(),
                numel(shape),
                dtype.name()
            )));
        }
        let t = Tensor::empty(device, shape, dtype)?;
        device.upload(t.buffer(), bytes);
        Ok(t)
    }

    /// Stores f32 host data as a frozen weight of `dtype` (quantized on the host by
    /// [`crate::quant::quantize`]); f32 uploads as it is.
    pub fn from_f32_as(
        device: &crate::Device,
        data: &[f32],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(Error::HostLength {
                shape: shape.to_vec(),
                got: data.len(),
                want: numel(shape),
            });
        }
        if dtype == DType::F32 {
            return Tensor::from_slice(device, data, shape);
        }
        let row = shape.last().copied().unwrap_or(1);
        Tensor::from_blocks(
            device,
            dtype,
            &crate::quant::quantize(dtype, data, row)?,
            shape,
        )
    }

    /// Copies a float tensor of any storage format to the host as f32 (block formats and
    /// halves decoded on the CPU).
    pub fn to_vec_dequantized(&self) -> Result<Vec<f32>> {
        match self.dtype() {
            DType::F32 => self.to_vec_f32(),
            DType::U32 | DType::I32 => Err(Error::DType {
                op: "to_vec_dequantized",
                shape: self.shape().to_vec(),
                got: self.dtype(),
                expected: "a float format",
            }),
            dtype => {
                let bytes = self
                    .device()
                    .read_bytes(self.buffer(), self.size_in_bytes())?;
                crate::quant::dequantize(dtype, &bytes, self.numel())
            }
        }
    }

    /// Copies an f16 tensor to the host.
    pub fn to_vec_f16(&self) -> Result<Vec<half::f16>> {
        self.expect_dtype("to_vec_f16", DType::F16, "f16")?;
        let bytes = self
            .device()
            .read_bytes(self.buffer(), self.size_in_bytes())?;
        Ok(bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
            .collect())
    }
}
