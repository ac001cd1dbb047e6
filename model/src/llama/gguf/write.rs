//! Writing GGUF files: metadata and tensors in the layout [`file`](super::file) reads (GGUF v3,
//! little-endian), written to a temporary file that is renamed into place, so a reader never
//! sees half a file.
//!
//! Everything is checked before the first byte is written: keys and tensor names given once,
//! array items of one non-array type, at most four dimensions, none 0, rows whole blocks of
//! the tensor's type, data exactly the size its shape and type need. Tensors are written in
//! the order given, each at the next multiple of the alignment (`general.alignment`, 32 when
//! absent), as llama.cpp's own writer does; the same input always gives the same bytes.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;

use crate::error::{ModelError, Result};
use crate::llama::gguf::file::{
    shown, GgmlType, MetaValue, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS,
};
use crate::llama::weights::write_atomically;

/// The GGUF version written.
pub const WRITE_VERSION: u32 = 3;

/// One tensor to write.
#[derive(Clone, Debug)]
pub struct TensorToWrite<'a> {
    /// Its GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Its shape in row-major order, slowest first (`[out, in]` for a matrix); the file
    /// stores it reversed, `ne0` first.
    pub shape: Vec<usize>,
    /// The stored type.
    pub ggml_type: GgmlType,
    /// The stored bytes: whole blocks of `ggml_type`, rows in order.
    pub bytes: Cow<'a, [u8]>,
}

impl<'a> TensorToWrite<'a> {
    /// `values` (row-major, `shape`) stored as `ggml_type`, quantized on the host by the
    /// engine's quantizers when it is a block type.
    pub fn encode(
        name: impl Into<String>,
        shape: &[usize],
        ggml_type: GgmlType,
        values: &[f32],
    ) -> Result<Self> {
        let name = name.into();
        let row_len = shape.last().copied().unwrap_or(1);
        let bytes =
            hydralora_engine::quant::quantize(ggml_type.dtype(), values, row_len).map_err(|e| {
                ModelError::Input(format!(
                    "tensor `{name}` cannot be stored as {ggml_type}: {e}"
                ))
            })?;
        Ok(TensorToWrite {
            name,
            shape: shape.to_vec(),
            ggml_type,
            bytes: Cow::Owned(bytes),
        })
    }
}

/// Writes a GGUF file at `path`: `metadata` in the order given, then `tensors`. Fails, writing
/// nothing, when anything is inconsistent (see the module documentation); the error names the
/// file and the key or tensor.
pub fn write_gguf(
    path: impl AsRef<Path>,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorToWrite],
) -> Result<()> {
    let path = path.as_ref();
    let error = |why: String| ModelError::Gguf {
        file: path.to_path_buf(),
        why,
    };
    let alignment = check_metadata(metadata).map_err(error)?;
    let offsets = check_tensors(tensors, alignment).map_err(error)?;
    write_atomically(path, |out| {
        out.write_all(GGUF_MAGIC)?;
        out.write_all(&WRITE_VERSION.to_le_bytes())?;
        out.write_all(&(tensors.len() as u64).to_le_bytes())?;
        out.write_all(&(metadata.len() as u64).to_le_bytes())?;
        for (key, value) in metadata {
            write_string(out, key)?;
            out.write_all(&value_type(value).to_le_bytes())?;
            write_value(out, value)?;
        }
        let mut written = header_bytes(metadata, tensors);
        for (t, offset) in tensors.iter().zip(&offsets) {
            write_string(out, &t.name)?;
            out.write_all(&(t.shape.len() as u32).to_le_bytes())?;
            for &d in t.shape.iter().rev() {
                out.write_all(&(d as u64).to_le_bytes())?;
            }
            out.write_all(&t.ggml_type.id().to_le_bytes())?;
            out.write_all(&offset.to_le_bytes())?;
        }
        let data_start = written.next_multiple_of(alignment);
        pad(out, data_start - written)?;
        written = 0;
        for (t, &offset) in tensors.iter().zip(&offsets) {
            pad(out, offset - written)?;
            out.write_all(&t.bytes)?;
            written = offset + t.bytes.len() as u64;
        }
        pad(out, written.next_multiple_of(alignment) - written)
    })
}

/// The alignment the metadata asks for; checks keys are unique and arrays are flat and of one
/// type.
fn check_metadata(metadata: &[(String, MetaValue)]) -> std::result::Result<u64, String> {
    let mut keys = HashSet::with_capacity(metadata.len());
    for (key, value) in metadata {
        if !keys.insert(key.as_str()) {
            return Err(format!("metadata `{}` is given twice", shown(key)));
        }
        if let MetaValue::Array(items) = value {
            let first = items.first().map(value_type);
            if items
                .iter()
                .any(|v| matches!(v, MetaValue::Array(_)) || Some(value_type(v)) != first)
            {
                return Err(format!(
                    "metadata `{}` is an array whose items are not all of one non-array type",
                    shown(key)
                ));
            }
        }
    }
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, MetaValue::U32(a))) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(_) => Err("metadata `general.alignment` must be a u32 power of two".into()),
    }
}

/// Each tensor's offset in the data section; checks names, dimensions and byte counts.
fn check_tensors(
    tensors: &[TensorToWrite],
    alignment: u64,
) -> std::result::Result<Vec<u64>, String> {
    let mut names = HashSet::with_capacity(tensors.len());
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut next = 0u64;
    for t in tensors {
        let err = |why: String| format!("tensor `{}` {why}", shown(&t.name));
        if !names.insert(t.name.as_str()) {
            return Err(err("is given twice".into()));
        }
        if t.shape.is_empty() || t.shape.len() > MAX_DIMS || t.shape.contains(&0) {
            return Err(err(format!(
                "has shape {:?}: 1 to {MAX_DIMS} dimensions, none 0",
                t.shape
            )));
        }
        let row_len = *t.shape.last().expect("not empty");
        let block = t.ggml_type.block_len();
        if row_len % block != 0 {
            return Err(err(format!(
                "is {} with rows of {row_len} values, not a multiple of its block of {block}",
                t.ggml_type
            )));
        }
        let numel: usize = t.shape.iter().product();
        let want = numel / block * t.ggml_type.block_bytes();
        if t.bytes.len() != want {
            return Err(err(format!(
                "has {} bytes, but {numel} values of {} take {want}",
                t.bytes.len(),
                t.ggml_type
            )));
        }
        offsets.push(next);
        next = (next + want as u64).next_multiple_of(alignment);
    }
    Ok(offsets)
}

/// Bytes before the data section's padding: magic, version, counts, metadata, tensor infos.
fn header_bytes(metadata: &[(String, MetaValue)], tensors: &[TensorToWrite]) -> u64 {
    let string = |s: &str| 8 + s.len() as u64;
    let kvs: u64 = metadata
        .iter()
        .map(|(k, v)| string(k) + 4 + value_bytes(v))
        .sum();
    let infos: u64 = tensors
        .iter()
        .map(|t| string(&t.name) + 4 + 8 * t.shape.len() as u64 + 4 + 8)
        .sum();
    4 + 4 + 8 + 8 + kvs + infos
}

/// GGUF's id of a value's type.
fn value_type(value: &MetaValue) -> u32 {
    match value {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

/// The bytes [`write_value`] writes for `value`.
fn value_bytes(value: &MetaValue) -> u64 {
    match value {
        MetaValue::U8(_) | MetaValue::I8(_) | MetaValue::Bool(_) => 1,
        MetaValue::U16(_) | MetaValue::I16(_) => 2,
        MetaValue::U32(_) | MetaValue::I32(_) | MetaValue::F32(_) => 4,
        MetaValue::U64(_) | MetaValue::I64(_) | MetaValue::F64(_) => 8,
        MetaValue::String(s) => 8 + s.len() as u64,
        MetaValue::Array(items) => 4 + 8 + items.iter().map(value_bytes).sum::<u64>(),
    }
}

/// A value without its type id (an array: item type, length, items).
fn write_value(out: &mut impl Write, value: &MetaValue) -> io::Result<()> {
    match value {
        MetaValue::U8(v) => out.write_all(&v.to_le_bytes()),
        MetaValue::I8(v) => out.write_all(&v.to_le_bytes()),
        MetaValue::U16(v) => out.write_all(&v.to_le_bytes()),
        MetaValue::I16(v) => out.write_all(&v.to_le_bytes()),
        MetaValue::U32(v) => out.write_all(&v.to_le_bytes()),
        MetaValue::I32(v) => out.write_all(&v.to_le_bytes()),
        MetaValue::F32(v) => out.write_all(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.write_all(&[u8::from(*v)]),
        MetaValue::String(s) => write_string(out, s),
        MetaValue::U64(v) => out.write_all(&v.to_le_bytes()),
        MetaValue::I64(v) => out.write_all(&v.to_le_bytes()),
        MetaValue::F64(v) => out.write_all(&v.to_le_bytes()),
        MetaValue::Array(items) => {
            // An empty array's item type says nothing; any valid one will do.
            let item_type = items.first().map_or(8, value_type);
            out.write_all(&item_type.to_le_bytes())?;
            out.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|item| write_value(out, item))
        }
    }
}

fn write_string(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn pad(out: &mut impl Write, n: u64) -> io::Result<()> {
    out.write_all(&vec![0u8; n as usize])
}

/// A string metadata entry.
pub fn meta_string(key: &str, value: impl Into<String>) -> (String, MetaValue) {
    (key.to_string(), MetaValue::String(value.into()))
}

/// A u32 metadata entry.
pub fn meta_u32(key: &str, value: u32) -> (String, MetaValue) {
    (key.to_string(), MetaValue::U32(value))
}

/// An f32 metadata entry.
pub fn meta_f32(key: &str, value: f32) -> (String, MetaValue) {
    (key.to_string(), MetaValue::F32(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::gguf::file::GgufFile;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hydralora-gguf-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Every value type, arrays, three tensor types and odd sizes (padding between tensors)
    /// come back from the reader as written.
    #[test]
    fn round_trips_through_the_reader() {
        let metadata = vec![
            meta_string("general.architecture", "llama"),
            ("a.u8".into(), MetaValue::U8(7)),
            ("a.i8".into(), MetaValue::I8(-7)),
            ("a.u16".into(), MetaValue::U16(700)),
            ("a.i16".into(), MetaValue::I16(-700)),
            meta_u32("a.u32", 70_000),
            ("a.i32".into(), MetaValue::I32(-70_000)),
            meta_f32("a.f32", 0.125),
            ("a.bool".into(), MetaValue::Bool(true)),
            ("a.u64".into(), MetaValue::U64(1 << 40)),
            ("a.i64".into(), MetaValue::I64(-(1 << 40))),
            ("a.f64".into(), MetaValue::F64(-2.5e-300)),
            (
                "a.strings".into(),
                MetaValue::Array(vec![
                    MetaValue::String("Ġa".into()),
                    MetaValue::String("".into()),
                ]),
            ),
            (
                "a.ints".into(),
                MetaValue::Array((0..5).map(MetaValue::I32).collect()),
            ),
        ];
        let odd: Vec<f32> = (0..3 * 5).map(|i| i as f32 * 0.5 - 3.0).collect();
        let wide: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let tensors = vec![
            TensorToWrite::encode("odd", &[3, 5], GgmlType::F32, &odd).unwrap(),
            TensorToWrite::encode("half", &[3, 5], GgmlType::F16, &odd).unwrap(),
            TensorToWrite::encode("blocks", &[2, 64], GgmlType::Q8_0, &wide).unwrap(),
            TensorToWrite::encode("vector", &[1], GgmlType::F32, &[42.0]).unwrap(),
        ];
        let path = temp_path("round-trip.gguf");
        write_gguf(&path, &metadata, &tensors).unwrap();

        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.version(), WRITE_VERSION);
        assert_eq!(file.metadata().len(), metadata.len());
        for (key, value) in &metadata {
            assert_eq!(file.get(key), Some(value), "{key}");
        }
        assert_eq!(file.tensors().len(), tensors.len());
        for (read, written) in file.tensors().iter().zip(&tensors) {
            assert_eq!(read.name, written.name);
            assert_eq!(read.shape(), written.shape);
            assert_eq!(read.ggml_type, written.ggml_type);
            assert_eq!(read.start % DEFAULT_ALIGNMENT as usize, 0);
            assert_eq!(file.data(read).unwrap(), &written.bytes[..]);
        }
        let values = |name: &str| {
            let t = file.tensor(name).unwrap();
            crate::llama::gguf::to_f32(t.ggml_type, file.data(t).unwrap()).unwrap()
        };
        assert_eq!(values("odd"), odd);
        assert_eq!(values("half"), odd, "these values are exact in f16");
        let q8 = values("blocks");
        let err = q8
            .iter()
            .zip(&wide)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1.0 / 127.0, "q8_0 error {err}");
        // Whole: the file ends at an aligned offset after the last tensor.
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len % DEFAULT_ALIGNMENT, 0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_same_input_gives_the_same_bytes() {
        let tensors = vec![TensorToWrite::encode("t", &[2, 3], GgmlType::F32, &[1.0; 6]).unwrap()];
        let metadata = vec![meta_string("general.architecture", "llama")];
        let (a, b) = (temp_path("a.gguf"), temp_path("b.gguf"));
        write_gguf(&a, &metadata, &tensors).unwrap();
        write_gguf(&b, &metadata, &tensors).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        std::fs::remove_file(&a).unwrap();
        std::fs::remove_file(&b).unwrap();
    }

    /// Inconsistent input is refused, the error names the key or tensor, and nothing is
    /// written (a file already there is left as it was).
    #[test]
    fn inconsistent_input_is_refused_and_nothing_is_written() {
        let path = temp_path("refused.gguf");
        std::fs::write(&path, b"before").unwrap();
        let good = || TensorToWrite::encode("t", &[2, 3], GgmlType::F32, &[1.0; 6]).unwrap();
        type Case<'a> = (Vec<(String, MetaValue)>, Vec<TensorToWrite<'a>>, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![meta_u32("k", 1), meta_u32("k", 2)],
                vec![],
                "`k` is given twice",
            ),
            (
                vec![(
                    "mixed".into(),
                    MetaValue::Array(vec![MetaValue::U32(1), MetaValue::I32(1)]),
                )],
                vec![],
                "`mixed` is an array",
            ),
            (vec![], vec![good(), good()], "`t` is given twice"),
            (
                vec![],
                vec![TensorToWrite {
                    bytes: Cow::Owned(vec![0; 20]),
                    ..good()
                }],
                "has 20 bytes, but 6 values of F32 take 24",
            ),
            (
                vec![],
                vec![TensorToWrite {
                    ggml_type: GgmlType::Q8_0,
                    ..good()
                }],
                "not a multiple of its block of 32",
            ),
            (
                vec![],
                vec![TensorToWrite {
                    shape: vec![2, 0, 3],
                    ..good()
                }],
                "none 0",
            ),
            (
                vec![meta_u32("general.alignment", 24)],
                vec![],
                "power of two",
            ),
        ];
        for (metadata, tensors, expected) in cases {
            let err = write_gguf(&path, &metadata, &tensors)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}\nexpected: {expected}");
            assert_eq!(std::fs::read(&path).unwrap(), b"before");
        }
        std::fs::remove_file(&path).unwrap();
    }

    /// A non-default alignment is honoured, and read back.
    #[test]
    fn custom_alignment() {
        let path = temp_path("aligned.gguf");
        let tensors = vec![
            TensorToWrite::encode("a", &[3], GgmlType::F32, &[1.0, 2.0, 3.0]).unwrap(),
            TensorToWrite::encode("b", &[1], GgmlType::F32, &[4.0]).unwrap(),
        ];
        write_gguf(&path, &[meta_u32("general.alignment", 64)], &tensors).unwrap();
        let file = GgufFile::open(&path).unwrap();
        for t in file.tensors() {
            assert_eq!(t.start % 64, 0, "{}", t.name);
        }
        assert_eq!(file.data(&file.tensors()[1]).unwrap(), 4.0f32.to_le_bytes());
        std::fs::remove_file(&path).unwrap();
    }
}
