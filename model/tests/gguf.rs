//! The GGUF reader on the host: llama.cpp's fixture files (`../shared/fixtures-gguf`, or
//! `$HYDRALORA_GGUF_FIXTURES`), files written by the `gguf` Python package (the corpus in
//! `tests/fuzz-corpus/gguf/`), and hostile files, each refused with its own message.

use std::path::{Path, PathBuf};

use hydralora_model::llama::gguf::{GgmlType, GgufFile, GgufModel, MetaValue};
use hydralora_model::llama::load_codec;
use hydralora_model::verify::{find_cases, gguf_fixtures_root};
use hydralora_model::Tokenizer;

fn fixtures() -> PathBuf {
    gguf_fixtures_root(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures-gguf"
    ))
}

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus/gguf")
        .join(name)
}

// ---------------------------------------------------------------------------------------------
// Files llama.cpp and the gguf package wrote
// ---------------------------------------------------------------------------------------------

/// The fixtures README: 2 layers, hidden 256, intermediate 512, 2 heads / 1 KV head, vocab 512,
/// rope θ 5e5, untied; the transformers config had rms_norm_eps 1e-5 and 256 positions.
#[test]
fn fixture_hyper_parameters_are_the_readme_s() {
    let cases = find_cases(&fixtures()).expect("GGUF fixture cases");
    assert!(cases.len() >= 5, "{cases:?}");
    for case in cases {
        let model = GgufModel::open(case.join("model.gguf"))
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let c = model.config();
        assert_eq!(model.file().version(), 3);
        assert_eq!(
            (c.num_hidden_layers, c.hidden_size, c.intermediate_size),
            (2, 256, 512)
        );
        assert_eq!((c.num_attention_heads, c.num_key_value_heads), (2, 1));
        assert_eq!((c.vocab_size, c.head_dim()), (512, 128));
        assert_eq!((c.rope_theta, c.rms_norm_eps), (5e5, 1e-5));
        assert_eq!(c.max_position_embeddings, 256);
        assert!(!c.tie_word_embeddings);
        assert_eq!(
            (c.bos_token_id, c.eos_token_ids.as_slice()),
            (Some(1), &[2][..])
        );
        assert!(c.rope_scaling.is_none());
    }
}

/// Each fixture's tensor types are those its `fixture.json` lists.
#[test]
fn fixture_tensor_types_are_the_ones_listed() {
    for case in find_cases(&fixtures()).unwrap() {
        let text = std::fs::read_to_string(case.join("fixture.json")).unwrap();
        let listed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut listed: Vec<String> = listed["tensor_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        listed.sort();
        let file = GgufFile::open(case.join("model.gguf")).unwrap();
        let mut found: Vec<String> = file
            .tensors()
            .iter()
            .map(|t| t.ggml_type.name().to_string())
            .collect();
        found.sort();
        found.dedup();
        assert_eq!(found, listed, "{}", case.display());
    }
}

/// The tokenizer built from the GGUF's vocabulary encodes and decodes as the `tokenizer.json`
/// beside it (the Hugging Face tokenizer the GGUF was converted from).
#[test]
fn vocabulary_tokenizer_matches_the_hugging_face_one() {
    let case = find_cases(&fixtures()).unwrap().remove(0);
    let model = GgufModel::open(case.join("model.gguf")).unwrap();
    let from_gguf = load_codec(case.join("model.gguf"), model.config()).unwrap();
    let hf = Tokenizer::from_file(case.join("tokenizer.json"), Some(1)).unwrap();
    let texts = [
        "the quick brown fox jumps over the lazy dog",
        "  Leading spaces, punctuation!? and numbers 12345 67",
        "tabs\tand\nnew lines\r\n",
        "unicode: é, ü, 日本語, emoji 🦀",
        "</s> a control token in text <s>",
        "",
    ];
    for text in texts {
        let ids = hf.encode(text, false).unwrap();
        assert_eq!(from_gguf.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(from_gguf.decode(&ids).unwrap(), hf.decode(&ids).unwrap());
    }
    assert_eq!((from_gguf.bos_id(), from_gguf.eos_id()), (Some(1), Some(2)));
    assert_eq!(from_gguf.vocab_size(), 512);
}

/// Every tensor of a file the `gguf` package wrote, one of each type we read, read as the
/// package's `gguf.quants.dequantize` reads it (`tests/gguf-all-types.json`).
#[test]
fn every_type_reads_as_the_gguf_package_reads_it() {
    let file = GgufFile::open(corpus("valid-all-types.gguf")).unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gguf-all-types.json"),
    )
    .unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut types = Vec::new();
    for tensor in file.tensors() {
        let reference = &expected[&tensor.name];
        let shape: Vec<usize> = serde_json::from_value(reference["shape"].clone()).unwrap();
        let values: Vec<f32> = serde_json::from_value(reference["values"].clone()).unwrap();
        assert_eq!(tensor.shape(), shape, "{}", tensor.name);
        let got =
            hydralora_model::llama::gguf::to_f32(tensor.ggml_type, file.data(tensor).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", tensor.name));
        assert_eq!(got, values, "{}", tensor.name);
        types.push(tensor.ggml_type);
    }
    for t in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ] {
        assert!(types.contains(&t), "{t} not covered");
    }
    // Metadata of every scalar type.
    let get = |k: &str| file.get(k).unwrap().clone();
    assert_eq!(get("test.u8"), MetaValue::U8(7));
    assert_eq!(get("test.i8"), MetaValue::I8(-7));
    assert_eq!(get("test.u16"), MetaValue::U16(700));
    assert_eq!(get("test.i16"), MetaValue::I16(-700));
    assert_eq!(get("test.u64"), MetaValue::U64(1 << 40));
    assert_eq!(get("test.i64"), MetaValue::I64(-(1 << 40)));
    assert_eq!(get("test.f64"), MetaValue::F64(0.1));
    assert_eq!(get("test.bool"), MetaValue::Bool(true));
    assert_eq!(
        get("test.floats"),
        MetaValue::Array(vec![MetaValue::F32(0.5), MetaValue::F32(1.5)])
    );
}

/// A tied model (no `output.weight`) and a quantized one, written by the gguf package.
#[test]
fn small_models_written_by_the_gguf_package_open() {
    let tied = GgufModel::open(corpus("valid-tiny-q8-0-tied.gguf")).unwrap();
    assert!(tied.config().tie_word_embeddings);
    let untied = GgufModel::open(corpus("valid-tiny-f32.gguf")).unwrap();
    assert!(!untied.config().tie_word_embeddings);
    assert_eq!(untied.config().hidden_size, 32);
}

// ---------------------------------------------------------------------------------------------
// Hostile files: each refused with a message naming the file, the key or tensor, and what
// was wrong
// ---------------------------------------------------------------------------------------------

/// One tensor of a [`Builder`]: name, dims, ggml type id, an offset overriding the honest
/// one, data bytes.
type TensorEntry = (String, Vec<u64>, u32, Option<u64>, usize);

/// A GGUF file written byte by byte, to make every lie.
#[derive(Clone)]
struct Builder {
    version: u32,
    /// Overrides of the counts the header states.
    tensor_count: Option<u64>,
    kv_count: Option<u64>,
    /// Encoded key/values.
    kvs: Vec<Vec<u8>>,
    tensors: Vec<TensorEntry>,
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

fn kv_u32(key: &str, v: u32) -> Vec<u8> {
    let mut b = string(key);
    b.extend(4u32.to_le_bytes());
    b.extend(v.to_le_bytes());
    b
}

fn kv_f32(key: &str, v: f32) -> Vec<u8> {
    let mut b = string(key);
    b.extend(6u32.to_le_bytes());
    b.extend(v.to_le_bytes());
    b
}

fn kv_str(key: &str, v: &str) -> Vec<u8> {
    let mut b = string(key);
    b.extend(8u32.to_le_bytes());
    b.extend(string(v));
    b
}

impl Builder {
    /// A one-layer LLaMA (hidden 32, 2 heads, vocab 8), F32, without a vocabulary.
    fn llama() -> Self {
        let mut b = Builder {
            version: 3,
            tensor_count: None,
            kv_count: None,
            kvs: vec![
                kv_str("general.architecture", "llama"),
                kv_u32("llama.block_count", 1),
                kv_u32("llama.embedding_length", 32),
                kv_u32("llama.feed_forward_length", 64),
                kv_u32("llama.attention.head_count", 2),
                kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
                kv_u32("llama.vocab_size", 8),
            ],
            tensors: Vec::new(),
        };
        let (h, i, v) = (32, 64, 8);
        b.tensor("token_embd.weight", &[h, v], 0);
        for (name, dims) in [
            ("attn_norm", vec![h]),
            ("attn_q", vec![h, h]),
            ("attn_k", vec![h, h]),
            ("attn_v", vec![h, h]),
            ("attn_output", vec![h, h]),
            ("ffn_norm", vec![h]),
            ("ffn_gate", vec![h, i]),
            ("ffn_up", vec![h, i]),
            ("ffn_down", vec![i, h]),
        ] {
            b.tensor(&format!("blk.0.{name}.weight"), &dims, 0);
        }
        b.tensor("output_norm.weight", &[h], 0);
        b
    }

    /// Adds an honest tensor of `ggml_type` (its bytes as F32/Q8_0 would take).
    fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32) -> &mut Self {
        let count: u64 = dims.iter().product();
        let bytes = match ggml_type {
            8 => count / 32 * 34,
            _ => count * 4,
        };
        self.tensors
            .push((name.into(), dims.to_vec(), ggml_type, None, bytes as usize));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(
            self.tensor_count
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        out.extend(self.kv_count.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            out.extend(kv);
        }
        let mut offset = 0u64;
        for (name, dims, ggml_type, lie, bytes) in &self.tensors {
            out.extend(string(name));
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ggml_type.to_le_bytes());
            out.extend(lie.unwrap_or(offset).to_le_bytes());
            offset += (*bytes as u64).next_multiple_of(32);
        }
        out.resize(out.len().next_multiple_of(32), 0);
        for (_, _, _, _, bytes) in &self.tensors {
            let start = out.len();
            out.extend((0..*bytes).map(|i| if i % 4 == 3 { 0x3c } else { 0 }));
            out.resize(start + bytes.next_multiple_of(32), 0);
        }
        out
    }
}

/// The error of opening `bytes` as a GGUF LLaMA, with the file's path replaced by `<file>`.
fn error_of(bytes: &[u8]) -> String {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).unwrap();
    match GgufModel::open(&path) {
        Ok(_) => panic!("opened without error"),
        Err(e) => e.to_string().replace(&path.display().to_string(), "<file>"),
    }
}

fn assert_error(bytes: &[u8], parts: &[&str]) {
    let message = error_of(bytes);
    assert!(
        message.starts_with("GGUF file `<file>`") || message.contains("`<file>`"),
        "does not name the file: {message}"
    );
    for part in parts {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

#[test]
fn the_honest_builder_file_opens() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, Builder::llama().bytes()).unwrap();
    let model = GgufModel::open(&path).unwrap();
    assert!(model.config().tie_word_embeddings);
    assert_eq!(model.config().rms_norm_eps, 1e-5);
}

#[test]
fn truncated_files_are_refused() {
    let bytes = Builder::llama().bytes();
    assert_error(
        &bytes[..3],
        &["the file ends (at byte 3) inside the magic number"],
    );
    assert_error(
        &bytes[..30],
        &["claims 7 metadata key/values, but the 6 bytes left hold at most 0"],
    );
    // Cut inside the last metadata value.
    let builder = Builder::llama();
    let kv_end = 24 + builder.kvs.iter().map(Vec::len).sum::<usize>();
    let cut = format!("the file ends (at byte {}) inside a u32", kv_end - 2);
    assert_error(&bytes[..kv_end - 2], &["metadata `llama.vocab_size`", &cut]);
    // Cut inside the tensor infos.
    assert_error(
        &bytes[..kv_end + 100],
        &["claims 11 tensor infos, but the 100 bytes left hold at most 3"],
    );
    assert_error(
        &bytes[..kv_end + 400],
        &["tensor info ", "the file ends (at byte"],
    );
    // Cut inside the tensor data: the last tensor lies past the end.
    assert_error(
        &bytes[..bytes.len() - 40],
        &["tensor `output_norm.weight`", "past the end of the"],
    );
    assert_error(&[], &["the file ends (at byte 0)"]);
}

#[test]
fn wrong_magic_and_versions_are_refused() {
    assert_error(b"GGML\x03\0\0\0", &["does not start with \"GGUF\""]);
    let mut b = Builder::llama();
    b.version = 1;
    assert_error(&b.bytes(), &["version 1"]);
    b.version = 3u32.swap_bytes();
    assert_error(&b.bytes(), &["big-endian"]);
    b.version = 4;
    assert_error(&b.bytes(), &["has version 4, not 2 or 3"]);
}

#[test]
fn lying_counts_and_lengths_are_refused_before_allocating() {
    let mut b = Builder::llama();
    b.tensor_count = Some(u64::MAX);
    assert_error(&b.bytes(), &["claims 18446744073709551615 tensor infos"]);
    let mut b = Builder::llama();
    b.kv_count = Some(1 << 40);
    assert_error(&b.bytes(), &["claims 1099511627776 metadata key/values"]);
    // A string longer than the file.
    let mut b = Builder::llama();
    let mut kv = string("general.name");
    kv.extend(8u32.to_le_bytes());
    kv.extend((1u64 << 50).to_le_bytes());
    b.kvs.push(kv);
    assert_error(
        &b.bytes(),
        &[
            "metadata `general.name`",
            "a string of 1125899906842624 bytes",
        ],
    );
    // An array longer than the file.
    let mut b = Builder::llama();
    let mut kv = string("tokenizer.ggml.tokens");
    kv.extend(9u32.to_le_bytes());
    kv.extend(8u32.to_le_bytes());
    kv.extend(u64::MAX.to_le_bytes());
    b.kvs.push(kv);
    assert_error(
        &b.bytes(),
        &[
            "metadata `tokenizer.ggml.tokens`",
            "claims 18446744073709551615 array items",
        ],
    );
}

#[test]
fn lying_offsets_and_sizes_are_refused() {
    let mut b = Builder::llama();
    b.tensors[1].3 = Some(1 << 40);
    assert_error(
        &b.bytes(),
        &[
            "tensor `blk.0.attn_norm.weight`",
            "at offset 1099511627776",
            "past the end",
        ],
    );
    let mut b = Builder::llama();
    b.tensors[1].3 = Some(u64::MAX - 31);
    assert_error(
        &b.bytes(),
        &["tensor `blk.0.attn_norm.weight`", "past the end"],
    );
    let mut b = Builder::llama();
    b.tensors[2].3 = Some(4);
    assert_error(
        &b.bytes(),
        &[
            "tensor `blk.0.attn_q.weight`",
            "offset 4, not a multiple of the alignment 32",
        ],
    );
}

#[test]
fn unknown_and_unread_types_are_named() {
    let mut b = Builder::llama();
    b.tensors[2].2 = 99;
    assert_error(
        &b.bytes(),
        &[
            "tensor `blk.0.attn_q.weight`",
            "type id 99, which is no ggml type",
        ],
    );
    b.tensors[2].2 = 16;
    assert_error(
        &b.bytes(),
        &[
            "tensor `blk.0.attn_q.weight`",
            "ggml type IQ2_XXS (16), which is not read here",
            "Q4_K",
        ],
    );
    b.tensors[2].2 = 3;
    assert_error(&b.bytes(), &["Q4_1 (3)"]);
    let mut b = Builder::llama();
    let mut kv = string("general.odd");
    kv.extend(13u32.to_le_bytes());
    b.kvs.push(kv);
    assert_error(
        &b.bytes(),
        &["metadata `general.odd`", "unknown value type 13"],
    );
}

#[test]
fn absurd_dimensions_are_refused() {
    let mut b = Builder::llama();
    b.tensors[2].1 = vec![1 << 62, 1 << 62];
    assert_error(
        &b.bytes(),
        &["tensor `blk.0.attn_q.weight`", "too many values"],
    );
    b.tensors[2].1 = vec![1 << 40, 1 << 20];
    assert_error(
        &b.bytes(),
        &["tensor `blk.0.attn_q.weight`", "past the end"],
    );
    b.tensors[2].1 = vec![32, 0];
    assert_error(&b.bytes(), &["one of them 0"]);
    b.tensors[2].1 = vec![1, 1, 1, 1, 1];
    assert_error(&b.bytes(), &["has 5 dimensions, not 1 to 4"]);
    // Q8_0 rows must be whole blocks of 32.
    let mut b = Builder::llama();
    b.tensors[2].1 = vec![33, 32];
    b.tensors[2].2 = 8;
    assert_error(
        &b.bytes(),
        &["is Q8_0 with rows of 33 values, not a multiple of its block of 32"],
    );
}

#[test]
fn duplicates_and_bad_alignment_are_refused() {
    let mut b = Builder::llama();
    b.kvs.push(kv_u32("llama.block_count", 1));
    assert_error(&b.bytes(), &["metadata `llama.block_count` is given twice"]);
    let mut b = Builder::llama();
    b.tensor("output_norm.weight", &[32], 0);
    assert_error(&b.bytes(), &["tensor `output_norm.weight` is given twice"]);
    let mut b = Builder::llama();
    b.kvs.push(kv_u32("general.alignment", 48));
    assert_error(&b.bytes(), &["`general.alignment`", "power of two"]);
}

#[test]
fn nested_arrays_and_bad_bools_are_refused() {
    let mut b = Builder::llama();
    let mut kv = string("general.nested");
    kv.extend(9u32.to_le_bytes());
    kv.extend(9u32.to_le_bytes());
    kv.extend(1u64.to_le_bytes());
    b.kvs.push(kv);
    assert_error(
        &b.bytes(),
        &["metadata `general.nested`", "array of arrays"],
    );
    let mut b = Builder::llama();
    let mut kv = string("general.flag");
    kv.extend(7u32.to_le_bytes());
    kv.push(2);
    b.kvs.push(kv);
    assert_error(&b.bytes(), &["metadata `general.flag`", "a bool is 2"]);
}

#[test]
fn other_architectures_and_bad_hyper_parameters_are_named() {
    let mut b = Builder::llama();
    b.kvs[0] = kv_str("general.architecture", "qwen2");
    assert_error(&b.bytes(), &["holds a `qwen2` model", "only `llama`"]);
    let mut b = Builder::llama();
    b.kvs.remove(0);
    assert_error(&b.bytes(), &["metadata `general.architecture` is missing"]);
    let mut b = Builder::llama();
    b.kvs.remove(1);
    assert_error(&b.bytes(), &["metadata `llama.block_count` is missing"]);
    let mut b = Builder::llama();
    b.kvs[4] = kv_str("llama.attention.head_count", "2");
    assert_error(&b.bytes(), &["metadata `llama.attention.head_count` is the string \"2\", expected a non-negative integer"]);
    let mut b = Builder::llama();
    b.kvs[4] = kv_u32("llama.attention.head_count", 3);
    assert_error(
        &b.bytes(),
        &[
            "hyper-parameters do not fit together",
            "num_attention_heads",
        ],
    );
    let mut b = Builder::llama();
    b.kvs.push(kv_u32("llama.expert_count", 8));
    assert_error(&b.bytes(), &["mixture-of-experts"]);
    let mut b = Builder::llama();
    b.kvs[1] = kv_u32("llama.block_count", u32::MAX);
    assert_error(&b.bytes(), &["tensor `blk.1.attn_norm.weight` is missing"]);
}

#[test]
fn tensors_that_do_not_fit_the_hyper_parameters_are_named() {
    let mut b = Builder::llama();
    b.tensors[2].1 = vec![32, 16];
    assert_error(
        &b.bytes(),
        &[
            "tensor `blk.0.attn_q.weight`",
            "has shape [16, 32], expected [32, 32]",
        ],
    );
    let mut b = Builder::llama();
    b.tensors.remove(3);
    assert_error(&b.bytes(), &["tensor `blk.0.attn_k.weight` is missing"]);
    let mut b = Builder::llama();
    b.tensor("blk.0.attn_qkv.weight", &[32], 0);
    assert_error(&b.bytes(), &["unexpected tensor `blk.0.attn_qkv.weight`"]);
}

#[test]
fn a_vocabulary_of_another_kind_without_tokenizer_json_is_an_error() {
    let mut b = Builder::llama();
    b.kvs.push(kv_str("tokenizer.ggml.model", "llama"));
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, b.bytes()).unwrap();
    let model = GgufModel::open(&path).unwrap();
    let message = match load_codec(&path, model.config()) {
        Ok(_) => panic!("a codec without a tokenizer"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("its vocabulary is `llama`"), "{message}");
    assert!(
        message.contains("no `tokenizer.json` beside it"),
        "{message}"
    );
}
