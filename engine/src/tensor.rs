//! Tensors: a shape, a dtype and a pooled GPU buffer, reference-counted and contiguous
//! (row-major). A tensor made by an op on tensors that need gradients remembers that op,
//! which is the autodiff graph.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::autograd::{self, Op};
use crate::device::{Binding, Device};
use crate::error::{Error, Result};
use crate::pool::PooledBuffer;

/// Element types. Compute is f32; ids are u32 (labels i32, where -100 means "no loss").
/// The others are storage formats for frozen weights, which the matmul kernels read as
/// their second operand and widen or dequantize to f32 as they load it: f16 and bf16 (two
/// halves packed per 32-bit word) and GGUF's block formats (see [`crate::quant`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: every op computes in it.
    F32,
    /// 16-bit float, storage only: [`Tensor::to_f16`] / [`Tensor::to_f32`] convert, and the
    /// right operand of a matmul may be f16 (widened as it is loaded).
    F16,
    /// bfloat16 (the top half of an f32), storage only, widened by a shift as it is loaded:
    /// the format most checkpoints ship in, kept exactly as stored.
    BF16,
    /// GGUF q8_0: blocks of 32 values, an f16 scale and 32 signed bytes (8.5 bits a value).
    Q8_0,
    /// GGUF q4_0: blocks of 32 values, an f16 scale and 32 nibbles (4.5 bits a value).
    Q4_0,
    /// GGUF q4_K: super-blocks of 256 values in 8 sub-blocks with 6-bit scales and mins
    /// (4.5 bits a value).
    Q4K,
    /// GGUF q6_K: super-blocks of 256 values in 16 sub-blocks with 8-bit scales (6.5625
    /// bits a value).
    Q6K,
    /// 32-bit unsigned integer: token ids and positions.
    U32,
    /// 32-bit signed integer: labels.
    I32,
}

impl DType {
    /// Values per storage block: 1 for element formats, 32 or 256 for GGUF's.
    pub fn block_elements(self) -> usize {
        match self {
            DType::Q8_0 | DType::Q4_0 => 32,
            DType::Q4K | DType::Q6K => 256,
            _ => 1,
        }
    }

    /// Bytes per storage block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4K => 144,
            DType::Q6K => 210,
            DType::F32 | DType::U32 | DType::I32 => 4,
        }
    }

    /// Bytes that `numel` values take (whole blocks; before the buffer's rounding to 4).
    pub fn storage_bytes(self, numel: usize) -> u64 {
        (numel.div_ceil(self.block_elements()) * self.block_bytes()) as u64
    }

    /// A frozen-weight format that only a matmul's second operand reads (not f32, u32
    /// or i32, which every op reads).
    pub fn is_weight_storage(self) -> bool {
        !matches!(self, DType::F32 | DType::U32 | DType::I32)
    }

    /// The name the CLI and GGUF use: `f32`, `f16`, `bf16`, `q8_0`, `q4_0`, `q4_k`, `q6_k`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4K => "q4_k",
            DType::Q6K => "q6_k",
            DType::U32 => "u32",
            DType::I32 => "i32",
        }
    }

    /// The frozen-weight formats, in the order the shader tables (`shaders::MATMUL_VARIANTS`,
    /// `shaders::EMBEDDING_VARIANTS`) list their variants.
    pub const WEIGHT_FORMATS: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4K,
        DType::Q6K,
    ];

    /// The weight format named `name` (case-insensitive; see [`DType::name`]).
    pub fn from_weight_name(name: &str) -> Option<DType> {
        DType::WEIGHT_FORMATS
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(name))
    }
}

/// A unique tensor identity, the key of [`crate::Gradients`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

static NEXT_TENSOR_ID: AtomicU64 = AtomicU64::new(1);

impl TensorId {
    fn new() -> Self {
        TensorId(NEXT_TENSOR_ID.fetch_add(1, Ordering::Relaxed))
    }
}

/// A GPU tensor; cloning shares it.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

pub(crate) struct TensorInner {
    pub id: TensorId,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub storage: Arc<PooledBuffer>, // numel * dtype bytes (rounded up to 4), shared by reshapes
    pub device: Device,
    pub op: Option<Op>, // how this tensor was computed, if it is in the autodiff graph
    pub requires_grad: bool, // a leaf whose gradient the user wants
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {:?}, {:?})",
            self.id(),
            self.shape(),
            self.dtype()
        )
    }
}

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A new, uninitialised tensor (every kernel writes all of its output).
    pub(crate) fn empty(device: &Device, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = dtype.storage_bytes(numel(shape));
        let limit = device.info().limits.max_buffer_size;
        if bytes > limit {
            return Err(Error::TooLarge {
                op: "alloc",
                shape: shape.to_vec(),
                bytes,
                limit,
                which: "max_buffer_size",
            });
        }
        device.check()?;
        let storage = device
            .inner
            .pool
            .take(bytes.max(4))
            .map_err(|r| Error::OutOfMemory {
                shape: shape.to_vec(),
                bytes,
                held: r.held,
                budget: r.budget,
                reason: r.reason,
            })?;
        Ok(Self::from_parts(
            device,
            shape.to_vec(),
            dtype,
            Arc::new(storage),
            None,
        ))
    }

    /// A new tensor for a kernel to write, refused before anything is allocated when one
    /// kernel binding could not hold it.
    pub(crate) fn empty_bindable(
        op: &'static str,
        device: &Device,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let bytes = dtype.storage_bytes(numel(shape));
        let limit = device.info().max_binding_bytes();
        if bytes > limit {
            return Err(Error::TooLarge {
                op,
                shape: shape.to_vec(),
                bytes,
                limit,
                which: "max_storage_buffer_binding_size; split the tensor",
            });
        }
        Self::empty(device, shape, dtype)
    }

    pub(crate) fn from_parts(
        device: &Device,
        shape: Vec<usize>,
        dtype: DType,
        storage: Arc<PooledBuffer>,
        op: Option<Op>,
    ) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            shape,
            dtype,
            storage,
            device: device.clone(),
            op,
            requires_grad: false,
        }))
    }

    /// Uploads f32 host data, row-major, as a tensor of `shape`. Fails with
    /// [`Error::HostLength`] when `data.len()` is not the shape's element count.
    ///
    /// ```no_run
    /// use hydralora_engine::{Device, Tensor};
    /// # fn main() -> hydralora_engine::Result<()> {
    /// let dev = Device::new()?;
    /// let x = Tensor::from_slice(&dev, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
    /// assert_eq!(x.shape(), &[2, 3]);
    /// let y = x.scale(2.0)?; // recorded, not yet run
    /// assert_eq!(y.to_vec_f32()?, [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]); // submits and waits
    /// # Ok(()) }
    /// ```
    pub fn from_slice(device: &Device, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Self::from_bytes(
            device,
            bytemuck::cast_slice(data),
            data.len(),
            shape,
            DType::F32,
        )
    }

    /// Uploads u32 host data (token ids, positions).
    pub fn from_u32(device: &Device, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        Self::from_bytes(
            device,
            bytemuck::cast_slice(data),
            data.len(),
            shape,
            DType::U32,
        )
    }

    /// Uploads i32 host data (labels, where -100 means "ignore").
    pub fn from_i32(device: &Device, data: &[i32], shape: &[usize]) -> Result<Tensor> {
        Self::from_bytes(
            device,
            bytemuck::cast_slice(data),
            data.len(),
            shape,
            DType::I32,
        )
    }

    fn from_bytes(
        device: &Device,
        bytes: &[u8],
        len: usize,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        if len != numel(shape) {
            return Err(Error::HostLength {
                shape: shape.to_vec(),
                got: len,
                want: numel(shape),
            });
        }
        let t = Self::empty(device, shape, dtype)?;
        device.upload(t.buffer(), bytes);
        Ok(t)
    }

    /// A tensor of zeros.
    pub fn zeros(device: &Device, shape: &[usize]) -> Result<Tensor> {
        Self::full(device, shape, 0.0)
    }

    /// A tensor filled with `value` (by a kernel: nothing crosses from the host).
    pub fn full(device: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
        let t = Self::empty_bindable("fill", device, shape, DType::F32)?;
        crate::ops::elementwise::fill(&t, value);
        Ok(t)
    }

    /// Uniform values in `[lo, hi)` from a seeded generator: the same seed gives the same
    /// tensor on every device.
    pub fn rand_uniform(
        device: &Device,
        shape: &[usize],
        lo: f32,
        hi: f32,
        seed: u64,
    ) -> Result<Tensor> {
        let mut rng = crate::rng::Rng::new(seed);
        let data: Vec<f32> = (0..numel(shape))
            .map(|_| lo + (hi - lo) * rng.next_f32())
            .collect();
        Self::from_slice(device, &data, shape)
    }

    /// Normal values with the given mean and standard deviation, seeded like [`Tensor::rand_uniform`].
    pub fn randn(
        device: &Device,
        shape: &[usize],
        mean: f32,
        std: f32,
        seed: u64,
    ) -> Result<Tensor> {
        let mut rng = crate::rng::Rng::new(seed);
        let data: Vec<f32> = (0..numel(shape))
            .map(|_| mean + std * rng.next_normal())
            .collect();
        Self::from_slice(device, &data, shape)
    }

    /// This tensor's identity (a new one for each op result, [`Tensor::into_param`] and
    /// [`Tensor::detach`]; clones share it).
    pub fn id(&self) -> TensorId {
        self.0.id
    }

    /// The dims, outermost first (row-major).
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }

    /// The size of dim `axis`. Panics when `axis >= rank`.
    pub fn dim(&self, axis: usize) -> usize {
        self.0.shape[axis]
    }

    /// Number of elements (1 for shape `[]`).
    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// The device holding the data.
    pub fn device(&self) -> &Device {
        &self.0.device
    }

    /// Bytes of this tensor's data.
    pub fn size_in_bytes(&self) -> u64 {
        self.dtype().storage_bytes(self.numel())
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.0.storage.buffer()
    }

    /// This tensor as a kernel binding.
    pub(crate) fn binding(&self) -> Binding<'_> {
        Binding {
            buffer: self.buffer(),
            bytes: self.size_in_bytes(),
        }
    }

    /// Whether this handle is the only one to its buffer and it is in no graph, so a kernel
    /// may write into it in place (a gradient being summed) without anyone seeing it change.
    pub(crate) fn is_exclusive(&self) -> bool {
        self.is_sole_handle() && self.0.op.is_none()
    }

    /// Whether this handle is the only one to this tensor and to its buffer (it may be in a
    /// graph, as its op's output).
    pub(crate) fn is_sole_handle(&self) -> bool {
        Arc::strong_count(&self.0) == 1 && Arc::strong_count(&self.0.storage) == 1
    }

    pub(crate) fn op(&self) -> Option<&Op> {
        self.0.op.as_ref()
    }

    /// A leaf that gradients are computed for ("a parameter").
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// Whether ops on this tensor are recorded: a parameter or something computed from one.
    pub fn tracks_grad(&self) -> bool {
        self.0.requires_grad || self.0.op.is_some()
    }

    /// The same data as a new leaf that requires gradients (a trainable parameter).
    pub fn into_param(self) -> Tensor {
        self.leaf(true)
    }

    /// The same data, cut off from the graph: no gradient flows through the result.
    pub fn detach(&self) -> Tensor {
        self.leaf(false)
    }

    /// The same data as a new leaf of the graph (a new id), a parameter when `requires_grad`.
    pub(crate) fn leaf(&self, requires_grad: bool) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            shape: self.0.shape.clone(),
            dtype: self.0.dtype,
            storage: self.0.storage.clone(),
            device: self.0.device.clone(),
            op: None,
            requires_grad,
        }))
    }

    /// Copies the data into a new buffer (a tensor that shares no storage with this one).
    pub fn deep_clone(&self) -> Result<Tensor> {
        let t = Self::empty(self.device(), self.shape(), self.dtype())?;
        self.device().copy(
            self.buffer(),
            0,
            t.buffer(),
            0,
            crate::device::align_up(self.size_in_bytes(), 4),
        );
        Ok(t)
    }

    /// Replaces this tensor's data with `src`'s, in place (same shape and dtype). For
    /// optimizers and loading; never recorded in the graph.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() || src.dtype() != self.dtype() {
            return Err(Error::ShapeMismatch {
                op: "assign",
                lhs: self.shape().to_vec(),
                rhs: src.shape().to_vec(),
                why: "assign needs the same shape and dtype".into(),
            });
        }
        self.expect_same_device("assign", src)?;
        self.device().copy(
            src.buffer(),
            0,
            self.buffer(),
            0,
            crate::device::align_up(self.size_in_bytes(), 4),
        );
        Ok(())
    }

    /// Overwrites this tensor's data with host values, in place, ordered after pending work.
    pub fn write_f32(&self, data: &[f32]) -> Result<()> {
        self.expect_dtype("write_f32", DType::F32, "f32")?;
        if data.len() != self.numel() {
            return Err(Error::HostLength {
                shape: self.shape().to_vec(),
                got: data.len(),
                want: self.numel(),
            });
        }
        self.device()
            .upload(self.buffer(), bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copies an f32 tensor to the host, row-major (submits pending work and waits for it).
    /// Errors: [`Error::DType`] for another element type; a device fault recorded since the
    /// last readback ([`Error::Device`], [`Error::DeviceLost`], [`Error::OutOfMemory`]).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        self.expect_dtype("to_vec_f32", DType::F32, "f32")?;
        Ok(bytemuck::cast_slice(&self.read_bytes()?).to_vec())
    }

    /// Copies a u32 tensor to the host.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.expect_dtype("to_vec_u32", DType::U32, "u32")?;
        Ok(bytemuck::cast_slice(&self.read_bytes()?).to_vec())
    }

    /// Copies an i32 tensor to the host.
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        self.expect_dtype("to_vec_i32", DType::I32, "i32")?;
        Ok(bytemuck::cast_slice(&self.read_bytes()?).to_vec())
    }

    /// The single value of a one-element f32 tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::InvalidArgument {
                op: "to_scalar",
                shape: self.shape().to_vec(),
                why: "needs exactly one element".into(),
            });
        }
        Ok(self.to_vec_f32()?[0])
    }

    /// [`Tensor::to_vec_f32`] for async callers, and the only readback a browser allows
    /// (WebGPU maps a buffer only between event-loop turns).
    pub async fn to_vec_f32_async(&self) -> Result<Vec<f32>> {
        self.expect_dtype("to_vec_f32_async", DType::F32, "f32")?;
        Ok(bytemuck::pod_collect_to_vec(
            &self.read_bytes_async().await?,
        ))
    }

    /// [`Tensor::to_vec_u32`] for async callers (see [`Tensor::to_vec_f32_async`]).
    pub async fn to_vec_u32_async(&self) -> Result<Vec<u32>> {
        self.expect_dtype("to_vec_u32_async", DType::U32, "u32")?;
        Ok(bytemuck::pod_collect_to_vec(
            &self.read_bytes_async().await?,
        ))
    }

    async fn read_bytes_async(&self) -> Result<Vec<u8>> {
        let bytes = self.size_in_bytes();
        if bytes == 0 {
            return Ok(Vec::new());
        }
        self.device().read_bytes_async(self.buffer(), bytes).await
    }

    fn read_bytes(&self) -> Result<Vec<u8>> {
        let bytes = self.size_in_bytes();
        if bytes == 0 {
            return Ok(Vec::new());
        }
        self.device().read_bytes(self.buffer(), bytes)
    }

    pub(crate) fn expect_dtype(
        &self,
        op: &'static str,
        dtype: DType,
        name: &'static str,
    ) -> Result<()> {
        if self.dtype() != dtype {
            return Err(Error::DType {
                op,
                shape: self.shape().to_vec(),
                got: self.dtype(),
                expected: name,
            });
        }
        Ok(())
    }

    pub(crate) fn expect_same_device(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if !self.device().same_as(other.device()) {
            return Err(Error::DeviceMismatch {
                op,
                lhs: self.shape().to_vec(),
                rhs: other.shape().to_vec(),
            });
        }
        Ok(())
    }

    /// Fails when this tensor is larger than one kernel binding may be.
    pub(crate) fn expect_bindable(&self, op: &'static str) -> Result<()> {
        let limit = self.device().info().max_binding_bytes();
        if self.size_in_bytes() > limit {
            return Err(Error::TooLarge {
                op,
                shape: self.shape().to_vec(),
                bytes: self.size_in_bytes(),
                limit,
                which: "max_storage_buffer_binding_size; split the tensor",
            });
        }
        Ok(())
    }

    /// Wraps a freshly computed result, recording `op` when any input tracks gradients.
    pub(crate) fn with_op(self, op: impl FnOnce() -> Op, inputs: &[&Tensor]) -> Tensor {
        if !autograd::is_recording() || !inputs.iter().any(|t| t.tracks_grad()) {
            return self;
        }
        self.recorded(op())
    }

    /// This result as computed by `op` (a new tensor of the same buffer when others hold it).
    pub(crate) fn recorded(self, op: Op) -> Tensor {
        let inner = Arc::try_unwrap(self.0).unwrap_or_else(|arc| TensorInner {
            id: TensorId::new(),
            shape: arc.shape.clone(),
            dtype: arc.dtype,
            storage: arc.storage.clone(),
            device: arc.device.clone(),
            op: None,
            requires_grad: false,
        });
        Tensor(Arc::new(TensorInner {
            op: Some(op),
            ..inner
        }))
    }
}
