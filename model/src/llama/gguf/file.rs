//! The GGUF container, read over a memory map: header, metadata, tensor infos, and
//! bounds-checked slices of the tensors' bytes.
//!
//! Layout (little-endian; GGUF v2 and v3, whose counts are u64):
//! `"GGUF"`, version u32, tensor count u64, metadata count u64, the metadata key/values
//! (key string, value type u32, value), the tensor infos (name string, n_dims u32, dims u64
//! each with `ne0` the row length, ggml type u32, offset u64 into the data section), then the
//! data section at the next multiple of `general.alignment` (32 when absent). A string is a
//! u64 length and that many UTF-8 bytes.
//!
//! Nothing read from the file is trusted before it is checked: every count and length against
//! the bytes that remain (so no allocation is larger than the file could fill), every tensor's
//! dimensions, byte size and offset against the file's length and the alignment. Each error
//! names the file, the key or tensor, and what was wrong.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{ModelError, Result};

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// The data section's alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;

/// A tensor type this crate reads, with ggml's block layout: `block_len` values stored in
/// `block_bytes` bytes, blocks running along rows (`ne0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16: the top half of an f32.
    BF16,
    /// 32 values: an f16 scale and 32 i8.
    Q8_0,
    /// 32 values: an f16 scale and 32 4-bit values (offset 8).
    Q4_0,
    /// 256 values: f16 scale and min, 12 bytes of 6-bit sub-block scales and mins, 128 bytes
    /// of 4-bit values.
    Q4K,
    /// 256 values: 128 bytes of low 4 bits, 64 of high 2 bits, 16 i8 sub-block scales, an
    /// f16 scale.
    Q6K,
}

/// The tensor types [`GgmlType`] covers, in words for error messages.
pub const READ_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K";

impl GgmlType {
    /// The type of ggml's type id `id`; an error names a ggml type we do not read, or says the
    /// id is no ggml type at all.
    pub fn from_id(id: u32) -> std::result::Result<Self, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => {
                return Err(match ggml_type_name(id) {
                    Some(name) => format!(
                        "has ggml type {name} ({id}), which is not read here (read: {READ_TYPES})"
                    ),
                    None => format!("has type id {id}, which is no ggml type"),
                })
            }
        })
    }

    /// ggml's id of the type.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// ggml's name of the type, e.g. `Q4_K`.
    pub fn name(self) -> &'static str {
        ggml_type_name(self.id()).unwrap_or("?")
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q8_0 | GgmlType::Q4_0 => 32,
            GgmlType::Q4K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4K => 144,
            GgmlType::Q6K => 210,
        }
    }

    /// The engine's name of the format.
    pub fn dtype(self) -> hydralora_engine::DType {
        use hydralora_engine::DType;
        match self {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            GgmlType::Q8_0 => DType::Q8_0,
            GgmlType::Q4_0 => DType::Q4_0,
            GgmlType::Q4K => DType::Q4K,
            GgmlType::Q6K => DType::Q6K,
        }
    }

    /// Whether the type is one of the block-quantized ones.
    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// ggml's name of every type id it has had (ids of removed types are `None`).
fn ggml_type_name(id: u32) -> Option<&'static str> {
    const NAMES: [&str; 40] = [
        "F32", "F16", "Q4_0", "Q4_1", "", "", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
        "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
        "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "", "", "", "TQ1_0",
        "TQ2_0", "", "", "", "MXFP4",
    ];
    NAMES
        .get(id as usize)
        .copied()
        .filter(|name| !name.is_empty())
}

/// One metadata value. Arrays hold values of one type, never arrays.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 7.
    Bool(bool),
    /// GGUF type 8.
    String(String),
    /// GGUF type 9: values of one (non-array) type.
    Array(Vec<MetaValue>),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 12.
    F64(f64),
}

impl MetaValue {
    /// The value as a non-negative integer, if it is one of the integer types.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is an f32 or f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::F32(_) => "f32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F64(_) => "f64",
        }
    }
}

/// Where a tensor lies and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensor {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml's dimensions, fastest first: `dims[0]` is the row length (`ne0`).
    pub dims: Vec<usize>,
    /// The stored type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data from the start of the file (checked: the data lies inside it).
    pub start: usize,
    /// Bytes of data.
    pub bytes: usize,
}

impl GgufTensor {
    /// The shape in row-major order, slowest first (as safetensors and the engine write it):
    /// `dims` reversed, so a `[ne0 = in, ne1 = out]` matrix is `[out, in]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether the tensor holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One memory-mapped GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    /// The whole file.
    mmap: Mmap,
    version: u32,
    /// The metadata, by key.
    metadata: BTreeMap<String, MetaValue>,
    /// The tensor infos, in file order.
    tensors: Vec<GgufTensor>,
    /// Tensor name -> index into `tensors`.
    by_name: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps `path` and reads its header, metadata and tensor infos, checking every tensor's
    /// data against the file. Errors name the file and what was wrong.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| ModelError::io("open", &path, e))?;
        // SAFETY: the map is read-only. As with any memory map, the file must not be truncated
        // or rewritten while it is open.
        let mmap =
            unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io("memory-map", &path, e))?;
        let header = parse(&mmap).map_err(|why| ModelError::Gguf {
            file: path.clone(),
            why,
        })?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path,
            mmap,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            by_name,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// The value of metadata `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    /// The tensor `name`, if the file holds it.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The stored bytes of `tensor` (checked at open to lie inside the file).
    pub fn data(&self, tensor: &GgufTensor) -> Result<&[u8]> {
        self.mmap
            .get(tensor.start..tensor.start + tensor.bytes)
            .ok_or_else(|| self.error(format!("tensor `{}` lies outside the file", tensor.name)))
    }

    /// An error about this file.
    pub fn error(&self, why: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            file: self.path.clone(),
            why: why.into(),
        }
    }
}

/// What [`parse`] reads.
struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensor>,
}

/// The smallest metadata key/value: an empty key (8), a type (4) and a u8.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// The smallest tensor info: an empty name (8), n_dims (4), one dim (8), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;

/// Reads and checks everything before the data section of `bytes`, a whole GGUF file.
fn parse(bytes: &[u8]) -> std::result::Result<Header, String> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.take(4, "the magic number")?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "does not start with \"GGUF\" (found {magic:?}): not a GGUF file"
        ));
    }
    let version = r.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => return Err("is GGUF version 1 (32-bit counts), which is not read here".into()),
        v if v.swap_bytes() <= 3 => {
            return Err(format!(
                "has version {v}: a big-endian GGUF file, which is not read here"
            ))
        }
        v => return Err(format!("has version {v}, not 2 or 3")),
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    let kv_count = r.capacity_for(kv_count, MIN_KV_BYTES, "metadata key/values")?;

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string().map_err(|e| format!("metadata key {i}: {e}"))?;
        let value = r
            .value(0)
            .map_err(|e| format!("metadata `{}`: {e}", shown(&key)))?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata `{}` is given twice", shown(&key)));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(other) => {
            return Err(format!(
                "metadata `general.alignment` is {}, expected a u32 power of two",
                shown_value(other)
            ))
        }
    };

    let tensor_count = r.capacity_for(tensor_count, MIN_TENSOR_INFO_BYTES, "tensor infos")?;
    let mut infos = Vec::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let info = r
            .tensor_info()
            .map_err(|e| format!("tensor info {i}: {e}"))?;
        infos.push(info);
    }
    let data_start = (r.pos as u64).next_multiple_of(alignment);
    let tensors = infos
        .into_iter()
        .map(|info| info.place(data_start, alignment, bytes.len() as u64))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut names = std::collections::HashSet::with_capacity(tensors.len());
    if let Some(t) = tensors.iter().find(|t| !names.insert(t.name.as_str())) {
        return Err(format!("tensor `{}` is given twice", shown(&t.name)));
    }
    Ok(Header {
        version,
        metadata,
        tensors,
    })
}

/// A tensor info as read, before its data is placed in the file.
struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: std::result::Result<GgmlType, String>,
    offset: u64,
}

impl TensorInfo {
    /// Checks the dimensions, type, size and offset against a file of `file_len` bytes whose
    /// data section starts at `data_start`.
    fn place(
        self,
        data_start: u64,
        alignment: u64,
        file_len: u64,
    ) -> std::result::Result<GgufTensor, String> {
        let name = self.name;
        let err = |why: String| format!("tensor `{}` {why}", shown(&name));
        let ggml_type = self.ggml_type.map_err(&err)?;
        // ggml's own limit: the element count fits an i64.
        let count = self
            .dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| err(format!("has dimensions {:?}, too many values", self.dims)))?;
        if self.dims.contains(&0) {
            return Err(err(format!(
                "has dimensions {:?}, one of them 0",
                self.dims
            )));
        }
        let dims = self
            .dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map_err(|_| err(format!("has dimensions {:?}, too large here", self.dims)))?;
        let block = ggml_type.block_len() as u64;
        if self.dims[0] % block != 0 {
            return Err(err(format!(
                "is {ggml_type} with rows of {} values, not a multiple of its block of {block}",
                self.dims[0]
            )));
        }
        let size = (count / block)
            .checked_mul(ggml_type.block_bytes() as u64)
            .ok_or_else(|| err(format!("has dimensions {:?}, too many bytes", self.dims)))?;
        if self.offset % alignment != 0 {
            return Err(err(format!(
                "has offset {}, not a multiple of the alignment {alignment}",
                self.offset
            )));
        }
        let start = data_start.checked_add(self.offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => Ok(GgufTensor {
                name,
                dims,
                ggml_type,
                start: start as usize,
                bytes: size as usize,
            }),
            _ => Err(err(format!(
                "has {size} bytes at offset {} of the data section (which starts at byte \
                 {data_start}), past the end of the {file_len}-byte file",
                self.offset
            ))),
        }
    }
}

/// A cursor over the file's bytes; every read checks that the bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let taken = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(taken)
            }
            None => Err(format!(
                "the file ends (at byte {}) inside {what}, which needs {n} bytes from byte {}",
                self.bytes.len(),
                self.pos
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// `count` items of at least `min_bytes` each must fit in the bytes left: a count that
    /// could not is refused before anything is allocated for it.
    fn capacity_for(
        &self,
        count: u64,
        min_bytes: usize,
        what: &str,
    ) -> std::result::Result<usize, String> {
        let fits = (self.remaining() / min_bytes) as u64;
        if count > fits {
            return Err(format!(
                "claims {count} {what}, but the {} bytes left hold at most {fits}",
                self.remaining()
            ));
        }
        Ok(count as usize)
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len = self.u64("a string's length")?;
        if len > self.remaining() as u64 {
            return Err(format!(
                "a string of {len} bytes at byte {} runs past the end of the file",
                self.pos
            ));
        }
        let bytes = self.take(len as usize, "a string")?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("a string is not UTF-8: {e}"))
    }

    /// A value of the type read first; `depth` 1 inside an array.
    fn value(&mut self, depth: usize) -> std::result::Result<MetaValue, String> {
        let kind = self.u32("a value's type")?;
        self.value_of(kind, depth)
    }

    fn value_of(&mut self, kind: u32, depth: usize) -> std::result::Result<MetaValue, String> {
        Ok(match kind {
            0 => MetaValue::U8(u8::from_le_bytes(self.array("a u8")?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array("an i8")?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array("a u16")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array("an i16")?)),
            4 => MetaValue::U32(self.u32("a u32")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array("an i32")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array("an f32")?)),
            7 => match self.array::<1>("a bool")?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("a bool is {b}, not 0 or 1")),
            },
            8 => MetaValue::String(self.string()?),
            9 if depth > 0 => return Err("holds an array of arrays, which is not read here".into()),
            9 => {
                let item = self.u32("an array's item type")?;
                let len = self.u64("an array's length")?;
                let min_bytes = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => return Err("holds an array of arrays, which is not read here".into()),
                    other => return Err(format!("holds an array of unknown type {other}")),
                };
                let len = self.capacity_for(len, min_bytes, "array items")?;
                let mut values = Vec::with_capacity(len);
                for i in 0..len {
                    values.push(
                        self.value_of(item, depth + 1)
                            .map_err(|e| format!("item {i}: {e}"))?,
                    );
                }
                MetaValue::Array(values)
            }
            10 => MetaValue::U64(self.u64("a u64")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array("an i64")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array("an f64")?)),
            other => return Err(format!("has unknown value type {other}")),
        })
    }

    fn tensor_info(&mut self) -> std::result::Result<TensorInfo, String> {
        let name = self.string().map_err(|e| format!("its name: {e}"))?;
        let in_tensor = |e: String| format!("`{}`: {e}", shown(&name));
        let n_dims = self.u32("the number of dimensions").map_err(in_tensor)?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(in_tensor(format!(
                "has {n_dims} dimensions, not 1 to {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64("a dimension").map_err(in_tensor)?);
        }
        let ggml_type = GgmlType::from_id(self.u32("the type").map_err(in_tensor)?);
        let offset = self.u64("the offset").map_err(in_tensor)?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}

/// A name from the file as an error message shows it: control characters escaped, at most
/// 80 characters.
pub fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(80).flat_map(char::escape_debug).collect();
    if name.chars().nth(80).is_some() {
        out.push('…');
    }
    out
}

/// A metadata value as an error message shows it: arrays by their length, strings cut.
pub fn shown_value(value: &MetaValue) -> String {
    match value {
        MetaValue::Array(items) => format!("an array of {} items", items.len()),
        MetaValue::String(s) => format!("the string \"{}\"", shown(s)),
        other => format!("{other:?}"),
    }
}
