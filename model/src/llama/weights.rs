//! Reading and writing the safetensors weight files of Hugging Face model folders, on the host.
//!
//! Files are memory-mapped and only the requested tensor is converted: F32, F16 and BF16 are read
//! as f32, I32 (the fixtures' token ids) as i32. A model's weights are a single `model.safetensors` or
//! a set of shards listed by `model.safetensors.index.json`. Writes go to a temporary file in the
//! target folder that is fsynced and renamed over the target, so a failed write leaves any
//! previous file untouched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::SafeTensors;
use serde_json::Value;

pub use safetensors::Dtype;

use hydralora_engine::DType;

use crate::error::{ModelError, Result};
use crate::llama::config::{read_json_object, LlamaConfig, CONFIG_FILE};

/// The name of a model folder's weights file, when the weights are one file.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The name of the index of weights sharded over several files.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// The dtypes [`WeightFile::read_f32`] converts.
const FLOAT_DTYPES: &str = "F32, F16, BF16";

/// One tensor as a file stores it: its format and its little-endian, row-major bytes
/// (for a block format, whole blocks along each row, as [`hydralora_engine::quant`] says).
#[derive(Clone, Debug)]
pub struct StoredTensor {
    /// The storage format.
    pub dtype: DType,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl StoredTensor {
    /// f32 values as stored tensor.
    pub fn f32(values: &[f32]) -> StoredTensor {
        StoredTensor {
            dtype: DType::F32,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values widened to f32 (`numel` of them).
    pub fn to_f32(&self, numel: usize) -> Result<Vec<f32>> {
        Ok(hydralora_engine::quant::dequantize(
            self.dtype,
            &self.bytes,
            numel,
        )?)
    }
}

/// A tensor name with its shape, e.g. `("model.norm.weight", vec![64])`.
pub type TensorShape = (String, Vec<usize>);

/// A safetensors file's bytes: memory-mapped from disk, or handed over in memory (a file a
/// browser page fetched or a user dropped).
#[derive(Debug)]
enum FileBytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// One safetensors file, memory-mapped (or in memory).
#[derive(Debug)]
pub struct WeightFile {
    path: PathBuf,
    /// The whole file: 8-byte header length, JSON header, then the tensors' bytes.
    mmap: FileBytes,
    /// Byte offset of the data section in `mmap` (8 + header length).
    data_start: usize,
    /// Each tensor's dtype, shape and byte range inside the data section.
    tensors: HashMap<String, TensorInfo>,
    /// The header's `__metadata__` (e.g. `{"format": "pt"}`); empty if none.
    metadata: HashMap<String, String>,
}

impl WeightFile {
    /// Maps `path` and parses its header; a damaged header is an error naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| ModelError::io("open", &path, e))?;
        // SAFETY: the map is read-only. As with any memory map, the file must not be truncated
        // or rewritten while it is open; this crate's own writers replace files by renaming a new
        // file over them, which leaves the mapped (old) file intact.
        let mmap =
            unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io("memory-map", &path, e))?;
        Self::parse(path, FileBytes::Mapped(mmap))
    }

    /// A safetensors file already in memory; `name` stands for its path in errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.into(), FileBytes::Owned(bytes))
    }

    fn parse(path: PathBuf, mmap: FileBytes) -> Result<Self> {
        let (header_len, header) =
            SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
                file: path.clone(),
                why: e.to_string(),
            })?;
        let tensors = header
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(WeightFile {
            path,
            mmap,
            data_start: 8 + header_len,
            tensors,
            metadata,
        })
    }

    /// The whole file's bytes.
    pub fn file_bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The shape of `name`, if the file holds it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|info| info.shape.as_slice())
    }

    /// The stored dtype of `name`, if the file holds it.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.tensors.get(name).map(|info| info.dtype)
    }

    /// The header's `__metadata__` entries.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Reads a F32, F16 or BF16 tensor as f32: its shape and its row-major values.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.info(name)?;
        let bytes = self.bytes(name, info)?;
        let values = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => return Err(self.unsupported(name, other, FLOAT_DTYPES)),
        };
        Ok((info.shape.clone(), values))
    }

    /// Reads a float tensor as f32 after checking its shape; errors name the tensor, the file
    /// and both shapes.
    pub fn expect_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        self.expect_f32_shape(name, expected)?;
        Ok(self.read_f32(name)?.1)
    }

    /// A float tensor's bytes as stored (F32, F16 or BF16), after checking its shape: what
    /// [`crate::Llama::load_as`] uploads as it is when the weight's format is kept.
    pub fn expect_stored(&self, name: &str, expected: &[usize]) -> Result<StoredTensor> {
        self.expect_f32_shape(name, expected)?;
        let info = self.info(name)?;
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => return Err(self.unsupported(name, other, FLOAT_DTYPES)),
        };
        Ok(StoredTensor {
            dtype,
            bytes: self.bytes(name, info)?.to_vec(),
        })
    }

    fn expect_f32_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let found = &self.info(name)?.shape;
        if found != expected {
            return Err(ModelError::TensorShape {
                tensor: name.to_string(),
                file: self.path.clone(),
                expected: expected.to_vec(),
                found: found.clone(),
            });
        }
        Ok(())
    }

    /// Reads an I32 tensor (e.g. the fixtures' `input_ids` and `labels`): its shape and values.
    pub fn read_i32(&self, name: &str) -> Result<(Vec<usize>, Vec<i32>)> {
        let info = self.info(name)?;
        if info.dtype != Dtype::I32 {
            return Err(self.unsupported(name, info.dtype, "I32"));
        }
        let values = self
            .bytes(name, info)?
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((info.shape.clone(), values))
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: name.to_string(),
                file: self.path.clone(),
                expected: None,
            })
    }

    /// The stored bytes of one tensor. `read_metadata` already checked that every tensor's range
    /// lies inside the file; the checked `get` only keeps this function panic-free.
    fn bytes(&self, name: &str, info: &TensorInfo) -> Result<&[u8]> {
        let (start, end) = info.data_offsets;
        self.mmap
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| ModelError::Safetensors {
                file: self.path.clone(),
                why: format!("the data of tensor `{name}` lies outside the file"),
            })
    }

    fn unsupported(&self, name: &str, dtype: Dtype, supported: &'static str) -> ModelError {
        ModelError::UnsupportedDType {
            tensor: name.to_string(),
            file: self.path.clone(),
            dtype: dtype.to_string(),
            supported,
        }
    }
}

/// A model's weight files: one safetensors file, or the shards its index lists.
#[derive(Debug)]
pub struct ModelWeights {
    /// What lists the tensors: the single file, or the index of the shards.
    /// Named in "missing tensor" errors.
    source: PathBuf,
    /// The opened files (one, or one per shard).
    files: Vec<WeightFile>,
    /// Tensor name -> index into `files`.
    locations: BTreeMap<String, usize>,
}

impl ModelWeights {
    /// Opens a model's weight files. `path` may be a model folder (holding `model.safetensors` or
    /// `model.safetensors.index.json`, looked for in that order as `transformers` does),
    /// a `.safetensors` file, or an index `.json` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let single = path.join(WEIGHTS_FILE);
            let index = path.join(WEIGHTS_INDEX_FILE);
            if single.is_file() {
                Self::open_single(&single)
            } else if index.is_file() {
                Self::open_sharded(&index)
            } else {
                Err(ModelError::io(
                    "find `model.safetensors` or `model.safetensors.index.json` in",
                    path,
                    io::ErrorKind::NotFound.into(),
                ))
            }
        } else if path.extension().is_some_and(|ext| ext == "json") {
            Self::open_sharded(path)
        } else {
            Self::open_single(path)
        }
    }

    fn open_single(path: &Path) -> Result<Self> {
        Ok(Self::from_file(WeightFile::open(path)?))
    }

    /// The weights of one file already opened (e.g. [`WeightFile::from_bytes`]).
    pub fn from_file(file: WeightFile) -> Self {
        let path = file.path.clone();
        let locations = file.tensors.keys().map(|name| (name.clone(), 0)).collect();
        ModelWeights {
            source: path,
            files: vec![file],
            locations,
        }
    }

    /// Opens the shards named by an index's `weight_map` (`{tensor name: shard file name}`),
    /// checking that each shard holds exactly the tensors the index assigns to it.
    fn open_sharded(index_path: &Path) -> Result<Self> {
        let index_error = |why: String| ModelError::Index {
            file: index_path.to_path_buf(),
            why,
        };
        let index = read_json_object(index_path)?;
        let weight_map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| index_error("has no `weight_map` object".into()))?;
        let folder = index_path.parent().unwrap_or(Path::new("."));

        let mut files = Vec::new();
        let mut shard_ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut locations = BTreeMap::new();
        for (tensor, shard) in weight_map {
            let shard = shard.as_str().ok_or_else(|| {
                index_error(format!(
                    "weight_map[`{tensor}`] is {shard}, expected a file name"
                ))
            })?;
            if !is_plain_file_name(shard) {
                return Err(index_error(format!(
                    "weight_map[`{tensor}`] = `{shard}` is not a file name in the index's folder"
                )));
            }
            let id = match shard_ids.get(shard) {
                Some(&id) => id,
                None => {
                    files.push(WeightFile::open(folder.join(shard))?);
                    shard_ids.insert(shard, files.len() - 1);
                    files.len() - 1
                }
            };
            if !files[id].contains(tensor) {
                return Err(ModelError::MissingTensor {
                    tensor: tensor.clone(),
                    file: files[id].path.clone(),
                    expected: None,
                });
            }
            locations.insert(tensor.clone(), id);
        }
        for (id, file) in files.iter().enumerate() {
            if let Some(stray) = file
                .names()
                .into_iter()
                .find(|n| locations.get(*n) != Some(&id))
            {
                return Err(index_error(format!(
                    "shard `{}` holds tensor `{stray}`, which the weight_map does not assign to it",
                    file.path.display()
                )));
            }
        }
        Ok(ModelWeights {
            source: index_path.to_path_buf(),
            files,
            locations,
        })
    }

    /// The file that lists the tensors (`model.safetensors` or the index).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The opened safetensors files.
    pub fn files(&self) -> &[WeightFile] {
        &self.files
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locations.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.locations.len()
    }

    /// Whether the files hold no tensor.
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }

    /// Whether the files hold `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.locations.contains_key(name)
    }

    /// The file holding `name`, if any.
    pub fn file_of(&self, name: &str) -> Option<&WeightFile> {
        self.locations.get(name).and_then(|&id| self.files.get(id))
    }

    /// The shape of `name`, if the files hold it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.file_of(name)?.shape(name)
    }

    /// The stored dtype of `name`, if the files hold it.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.file_of(name)?.dtype(name)
    }

    /// Reads a float tensor as f32; see [`WeightFile::read_f32`].
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.locate(name, None)?.read_f32(name)
    }

    /// Reads a float tensor as f32 after checking its shape; see [`WeightFile::expect_f32`].
    pub fn expect_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        self.locate(name, Some(expected))?
            .expect_f32(name, expected)
    }

    /// A float tensor's stored bytes after checking its shape; see
    /// [`WeightFile::expect_stored`].
    pub fn expect_stored(&self, name: &str, expected: &[usize]) -> Result<StoredTensor> {
        self.locate(name, Some(expected))?
            .expect_stored(name, expected)
    }

    /// The float format most of the weights are stored in (F32 when none is F16 or BF16):
    /// the frozen weights' format when the user names none.
    pub fn main_float_format(&self) -> DType {
        let mut counts = [0usize; 3];
        for name in self.names() {
            match self.dtype(name) {
                Some(Dtype::F32) => counts[0] += 1,
                Some(Dtype::F16) => counts[1] += 1,
                Some(Dtype::BF16) => counts[2] += 1,
                _ => {}
            }
        }
        let most = (0..3).max_by_key(|&i| (counts[i], i == 0)).unwrap_or(0);
        [DType::F32, DType::F16, DType::BF16][most]
    }

    /// Reads an I32 tensor; see [`WeightFile::read_i32`].
    pub fn read_i32(&self, name: &str) -> Result<(Vec<usize>, Vec<i32>)> {
        self.locate(name, None)?.read_i32(name)
    }

    /// Checks that the files hold exactly the tensors a LLaMA with `config` needs (see
    /// [`llama_tensor_shapes`]) with the right shapes. Reports the first missing or mis-shaped
    /// tensor, in model order, then the first unexpected one. `rotary_emb.inv_freq` buffers are
    /// ignored, and a tied model may still carry `lm_head.weight`.
    pub fn check_llama(&self, config: &LlamaConfig) -> Result<()> {
        let present = self
            .locations
            .iter()
            .filter_map(|(name, &id)| {
                let file = self.files.get(id)?;
                Some((name.as_str(), (file.shape(name)?, file.path())))
            })
            .collect();
        check_llama_tensors(config, &present, &self.source)
    }

    fn locate(&self, name: &str, expected: Option<&[usize]>) -> Result<&WeightFile> {
        self.file_of(name).ok_or_else(|| ModelError::MissingTensor {
            tensor: name.to_string(),
            file: self.source.clone(),
            expected: expected.map(<[usize]>::to_vec),
        })
    }
}

/// The tensors of a `LlamaForCausalLM` model folder with their shapes, in model order
/// (`H` hidden, `I` intermediate, `V` vocab, `nh`/`nkv` query/key-value heads, `hd` head width):
///
/// - `model.embed_tokens.weight` `[V, H]`
/// - per layer `i`: `model.layers.{i}.input_layernorm.weight` `[H]`,
///   `self_attn.q_proj.weight` `[nh*hd, H]`, `self_attn.k_proj.weight` and `v_proj` `[nkv*hd, H]`,
///   `self_attn.o_proj.weight` `[H, nh*hd]`, `post_attention_layernorm.weight` `[H]`,
///   `mlp.gate_proj.weight` and `up_proj` `[I, H]`, `mlp.down_proj.weight` `[H, I]`
/// - `model.norm.weight` `[H]`
/// - `lm_head.weight` `[V, H]`, unless `tie_word_embeddings`
pub fn llama_tensor_shapes(config: &LlamaConfig) -> Vec<TensorShape> {
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let (q, kv) = (config.q_dim(), config.kv_dim());
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for layer in 0..config.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        shapes.extend([
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
        ]);
    }
    shapes.push(("model.norm.weight".to_string(), vec![h]));
    if !config.tie_word_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    shapes
}

/// The tensors present: name -> (shape, file holding it).
pub(crate) type Present<'a> = BTreeMap<&'a str, (&'a [usize], &'a Path)>;

/// Compares `present` with [`llama_tensor_shapes`]; `source` is named for missing tensors.
pub(crate) fn check_llama_tensors(
    config: &LlamaConfig,
    present: &Present,
    source: &Path,
) -> Result<()> {
    // A config claiming more layers than the files could hold (9 tensors each): check
    // only one layer more than it could hold, which reports the same first missing or
    // mis-shaped tensor without listing (allocating) every claimed one.
    let most = present.len() / 9 + 1;
    if config.num_hidden_layers > most {
        let capped = LlamaConfig {
            num_hidden_layers: most,
            ..config.clone()
        };
        return check_llama_tensors(&capped, present, source);
    }
    let expected = llama_tensor_shapes(config);
    for (name, shape) in &expected {
        match present.get(name.as_str()) {
            None => {
                return Err(ModelError::MissingTensor {
                    tensor: name.clone(),
                    file: source.to_path_buf(),
                    expected: Some(shape.clone()),
                })
            }
            Some((found, file)) if *found != shape.as_slice() => {
                return Err(ModelError::TensorShape {
                    tensor: name.clone(),
                    file: file.to_path_buf(),
                    expected: shape.clone(),
                    found: found.to_vec(),
                })
            }
            Some(_) => {}
        }
    }
    let known: HashSet<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
    // A tied model's weights may still carry a copy of the embedding as `lm_head.weight`.
    let tied_head = (
        "lm_head.weight",
        vec![config.vocab_size, config.hidden_size],
    );
    for (&name, &(shape, file)) in present {
        let allowed = known.contains(name)
            || is_rotary_buffer(name)
            || (config.tie_word_embeddings && name == tied_head.0 && shape == tied_head.1);
        if !allowed {
            return Err(ModelError::UnexpectedTensor {
                tensor: name.to_string(),
                file: file.to_path_buf(),
                shape: shape.to_vec(),
            });
        }
    }
    Ok(())
}

/// Old weight files store each layer's RoPE table, `...rotary_emb.inv_freq`; it is recomputed.
fn is_rotary_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Whether `name` is one plain file name (no folder, no `..`).
fn is_plain_file_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    )
}

/// Writes f32 tensors `(name, shape, row-major data)` as a safetensors file, atomically.
///
/// The header's `__metadata__` gets `"format": "pt"` (which `transformers` requires) plus the
/// given entries. Tensors are stored in name order, as the safetensors crate does. Errors: a
/// duplicate name, or data whose length is not the product of its shape, name the tensor and
/// the file; nothing is written then.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: &[(&str, &str)],
) -> Result<()> {
    let path = path.as_ref();
    let (header, sorted) = sorted_with_header(path, tensors, metadata)?;
    write_atomically(path, |out| write_parts(out, &header, &sorted))
}

/// The bytes [`write_safetensors`] writes, in memory (`name` stands for the file in errors).
pub fn safetensors_bytes(
    name: impl AsRef<Path>,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let name = name.as_ref();
    let (header, sorted) = sorted_with_header(name, tensors, metadata)?;
    let mut out = Vec::new();
    write_parts(&mut out, &header, &sorted).map_err(|e| ModelError::io("write", name, e))?;
    Ok(out)
}

type NamedF32<'a> = (String, Vec<usize>, &'a [f32]);

/// The tensors in file order (by name) and the header that lists them.
fn sorted_with_header<'t, 'a>(
    path: &Path,
    tensors: &'t [NamedF32<'a>],
    metadata: &[(&str, &str)],
) -> Result<(Vec<u8>, Vec<&'t NamedF32<'a>>)> {
    let mut sorted: Vec<&NamedF32> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let header = safetensors_header(path, &sorted, metadata)?;
    Ok((header, sorted))
}

fn write_parts(out: &mut impl Write, header: &[u8], sorted: &[&NamedF32]) -> io::Result<()> {
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header)?;
    for (_, _, data) in sorted {
        write_f32_le(out, data)?;
    }
    Ok(())
}

/// The JSON header of a safetensors file of f32 tensors (`sorted` by name, in file order),
/// padded with spaces to a multiple of 8 bytes so that the data section is aligned.
fn safetensors_header(
    path: &Path,
    sorted: &[&(String, Vec<usize>, &[f32])],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let invalid = |tensor: &str, why: String| ModelError::InvalidTensor {
        tensor: tensor.to_string(),
        file: path.to_path_buf(),
        why,
    };
    let mut infos = Vec::with_capacity(sorted.len());
    let mut offset = 0usize;
    for (i, (name, shape, data)) in sorted.iter().enumerate() {
        if i > 0 && sorted[i - 1].0 == *name {
            return Err(invalid(name, "the name is given twice".into()));
        }
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if elements != Some(data.len()) {
            let holds = elements.map_or("too many".to_string(), |n| n.to_string());
            return Err(invalid(
                name,
                format!(
                    "it has {} values but shape {shape:?} holds {holds}",
                    data.len()
                ),
            ));
        }
        let end = offset + data.len() * 4;
        infos.push((
            name.clone(),
            TensorInfo {
                dtype: Dtype::F32,
                shape: shape.clone(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }

    let mut entries: HashMap<String, String> = HashMap::from([("format".into(), "pt".into())]);
    entries.extend(metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let header = Metadata::new(Some(entries), infos).map_err(|e| ModelError::Safetensors {
        file: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut bytes = serde_json::to_vec(&header).map_err(|e| ModelError::Safetensors {
        file: path.to_path_buf(),
        why: e.to_string(),
    })?;
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    Ok(bytes)
}

/// Writes f32 values little-endian, converting a block at a time.
fn write_f32_le(out: &mut impl Write, data: &[f32]) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(64 * 1024);
    for block in data.chunks(16 * 1024) {
        buffer.clear();
        buffer.extend(block.iter().flat_map(|x| x.to_le_bytes()));
        out.write_all(&buffer)?;
    }
    Ok(())
}

/// Writes a LLaMA model folder that `transformers` loads with `from_pretrained(dir)`:
/// `dir/model.safetensors` (f32) and `dir/config.json`, each written atomically; `dir` is
/// created if needed. The config is validated and the tensors are checked against it (see
/// [`ModelWeights::check_llama`]) before anything is written.
pub fn save_model_folder(
    dir: impl AsRef<Path>,
    config: &LlamaConfig,
    tensors: &[(String, Vec<usize>, &[f32])],
) -> Result<()> {
    let dir = dir.as_ref();
    let weights_path = dir.join(WEIGHTS_FILE);
    config.validate()?;
    let present: Present = tensors
        .iter()
        .map(|(name, shape, _)| (name.as_str(), (shape.as_slice(), weights_path.as_path())))
        .collect();
    check_llama_tensors(config, &present, &weights_path)?;

    fs::create_dir_all(dir).map_err(|e| ModelError::io("create the folder", dir, e))?;
    write_safetensors(&weights_path, tensors, &[])?;
    let config_text = config.to_json_string();
    write_atomically(dir.join(CONFIG_FILE), |out| {
        out.write_all(config_text.as_bytes())
    })
}

/// Distinguishes the temporary files of concurrent writes from one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` atomically: `write` fills a temporary file in the same folder, which is
/// flushed, fsynced and renamed over `path` (then the folder is fsynced, on Unix). If anything
/// fails the temporary file is removed and a previous `path` is left as it was.
pub fn write_atomically(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<()> {
    let path = path.as_ref();
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        ModelError::io(
            "write",
            path,
            io::Error::other("the path does not name a file"),
        )
    })?;
    let mut temp = TempFile {
        armed: true,
        path: folder.join(format!(
            ".{}.tmp.{}.{}",
            file_name.to_string_lossy(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        )),
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.path)
        .map_err(|e| ModelError::io("create", &temp.path, e))?;

    let mut out = BufWriter::new(file);
    write(&mut out).map_err(|e| ModelError::io("write", &temp.path, e))?;
    let file = out
        .into_inner()
        .map_err(|e| ModelError::io("write", &temp.path, e.into_error()))?;
    file.sync_all()
        .map_err(|e| ModelError::io("sync", &temp.path, e))?;
    drop(file);

    fs::rename(&temp.path, path)
        .map_err(|e| ModelError::io("rename a temporary file to", path, e))?;
    temp.armed = false; // renamed: nothing left to clean up
    sync_folder(folder)
}

/// Makes a rename in `folder` durable.
#[cfg(unix)]
fn sync_folder(folder: &Path) -> Result<()> {
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| ModelError::io("sync the folder", folder, e))
}

#[cfg(not(unix))]
fn sync_folder(_folder: &Path) -> Result<()> {
    Ok(())
}

/// A temporary file that is removed when dropped while still armed (on every error path of
/// `write_atomically`).
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the error being reported matters more than a failed cleanup.
            let _ = fs::remove_file(&self.path);
        }
    }
}
