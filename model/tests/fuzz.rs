//! Fuzzing every reader of outside bytes in the model crate (host only, no GPU).
//!
//! Readers: safetensors files (`WeightFile::open`, `ModelWeights::open` on a folder and on a
//! sharded index, then every tensor read), `config.json` (`LlamaConfig::from_file`),
//! `adapter_config.json` (`AdapterConfig::from_file`), `tokenizer.json` (`Tokenizer::from_file`,
//! then an encode and decode), JSONL data (`read_jsonl`, `parse_line`), `char_codec.json`
//! (`CharCodec::load`), the trainer's `trainer_state.json` (`checkpoint::read_state`) and GGUF
//! files (`GgufFile::open`, every tensor read as f32, then `GgufModel::open` and the tokenizer
//! of the file's vocabulary).
//!
//! Inputs: arbitrary bytes, mutations of the seed corpus in `tests/fuzz-corpus/<reader>/`
//! (bit flips, truncations, insertions of hostile tokens, splices, numbers replaced by huge or
//! odd ones), generated safetensors headers with lying lengths, offsets, shapes and dtypes,
//! deeply nested JSON, generated GGUF files with lying counts, lengths, dimensions, types and
//! offsets. Every case must return `Ok` or `Err`: a panic, a case that runs past
//! [`CASE_TIMEOUT`] or a single allocation larger than [`alloc_limit`] fails the test with the
//! input. The corpus files themselves are replayed; `valid-*` ones must load.
//!
//! `cargo test -p hydralora-model --test fuzz -- --nocapture` prints, per reader, the inputs
//! tried and the distinct error messages reached (digits and temporary paths stripped).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use hydralora_model::adapter::gguf::HostLora;
use hydralora_model::data::{parse_line, read_jsonl, ReadOptions};
use hydralora_model::llama::gguf::vocab::tokenizer_from_vocab;
use hydralora_model::llama::gguf::{to_f32, GgufFile, GgufModel};
use hydralora_model::llama::weights::{
    Dtype, ModelWeights, WeightFile, WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
};
use hydralora_model::train::checkpoint::{read_state, STATE_FILE};
use hydralora_model::{AdapterConfig, CharCodec, LlamaConfig, Tokenizer};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Allocation tracking: the largest single allocation made by the current thread.
// ---------------------------------------------------------------------------------------------

struct Tracking;

thread_local! {
    /// The largest single allocation of this thread since the last reset.
    static LARGEST_ALLOC: Cell<usize> = const { Cell::new(0) };
    /// Bytes this thread holds (allocated minus freed), counted in case threads only.
    static LIVE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// A case thread holding this much memory ends the test process at once with a message,
/// before the system runs out of memory and kills it without one.
const HARD_LIVE_LIMIT: usize = 2 << 30;

fn note_alloc(size: usize) {
    let _ = LARGEST_ALLOC.try_with(|largest| {
        if size > largest.get() {
            largest.set(size);
        }
    });
    let _ = LIVE.try_with(|live| {
        if let Some(bytes) = live.get() {
            let bytes = bytes.saturating_add(size);
            live.set(Some(bytes));
            if bytes > HARD_LIVE_LIMIT {
                use std::io::Write;
                let message: &[u8] = b"fuzz: a reader holds more than 2 GiB \
                    (a declared size trusted?); aborting\n";
                let _ = std::io::stderr().write_all(message);
                std::process::abort();
            }
        }
    });
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|live| {
        if let Some(bytes) = live.get() {
            live.set(Some(bytes.saturating_sub(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// The largest single allocation a reader may make for an input of `len` bytes: generous for
/// honest work (hash maps, strings, the converted tensor values), far below any lying size.
fn alloc_limit(len: usize) -> usize {
    (16 << 20) + 64 * len
}

/// A case that runs longer than this is reported as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Reader {
    Safetensors,
    ShardIndex,
    Config,
    Adapter,
    Tokenizer,
    Jsonl,
    Codec,
    State,
    Gguf,
}

impl Reader {
    const ALL: [Reader; 9] = [
        Reader::Safetensors,
        Reader::ShardIndex,
        Reader::Config,
        Reader::Adapter,
        Reader::Tokenizer,
        Reader::Jsonl,
        Reader::Codec,
        Reader::State,
        Reader::Gguf,
    ];

    /// The corpus folder of the reader's seeds.
    fn corpus(self) -> &'static str {
        match self {
            Reader::Safetensors => "safetensors",
            Reader::ShardIndex => "index",
            Reader::Config => "config",
            Reader::Adapter => "adapter",
            Reader::Tokenizer => "tokenizer",
            Reader::Jsonl => "jsonl",
            Reader::Codec => "codec",
            Reader::State => "state",
            Reader::Gguf => "gguf",
        }
    }

    /// Whether the reader parses JSON (for the deep-nesting inputs).
    fn is_json(self) -> bool {
        !matches!(self, Reader::Safetensors | Reader::Gguf)
    }
}

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus")
}

/// The reader's corpus files, sorted by name.
fn corpus_files(reader: Reader) -> Vec<PathBuf> {
    let dir = corpus_root().join(reader.corpus());
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus folder {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn seeds(reader: Reader) -> Vec<Vec<u8>> {
    corpus_files(reader)
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect()
}

/// Feeds `bytes` to `reader` through a file in `dir`. `Ok` lists what was read; `Err` is the
/// first error's message. Errors of the follow-up reads of a loaded file are collected too.
fn run_reader(reader: Reader, dir: &Path, bytes: &[u8], errors: &mut Vec<String>) {
    let mut note = |r: Result<(), String>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    let text = |e: hydralora_model::ModelError| e.to_string();
    let then = |e: hydralora_model::ModelError| format!("{FOLLOW_UP}{e}");
    match reader {
        Reader::Safetensors => {
            let path = dir.join(WEIGHTS_FILE);
            fs::write(&path, bytes).unwrap();
            note(WeightFile::open(&path).map(drop).map_err(text));
            match ModelWeights::open(dir) {
                Ok(weights) => read_all_tensors(&weights, &mut note),
                Err(e) => note(Err(e.to_string())),
            }
        }
        Reader::ShardIndex => {
            // A valid shard sits next to the fuzzed index.
            let shard = corpus_root().join("safetensors/valid-nan-inf.safetensors");
            fs::copy(shard, dir.join("shard-1.safetensors")).unwrap();
            let path = dir.join(WEIGHTS_INDEX_FILE);
            fs::write(&path, bytes).unwrap();
            match ModelWeights::open(&path) {
                Ok(weights) => read_all_tensors(&weights, &mut note),
                Err(e) => note(Err(e.to_string())),
            }
        }
        Reader::Config => {
            let path = dir.join("config.json");
            fs::write(&path, bytes).unwrap();
            match LlamaConfig::from_file(&path) {
                Ok(config) => {
                    // The derived sizes of a loaded (validated) config must be computable.
                    let _ = (config.head_dim(), config.q_dim(), config.kv_dim());
                    // Checking small weights against it must not list a lying number
                    // of layers' tensors.
                    let small = corpus_root().join("safetensors/valid-nan-inf.safetensors");
                    let weights = ModelWeights::open(small).unwrap();
                    note(weights.check_llama(&config).map_err(then));
                }
                Err(e) => note(Err(e.to_string())),
            }
        }
        Reader::Adapter => {
            let path = dir.join("adapter_config.json");
            fs::write(&path, bytes).unwrap();
            match AdapterConfig::from_file(&path) {
                Ok(cfg) => {
                    let _ = cfg.scale();
                }
                Err(e) => note(Err(e.to_string())),
            }
        }
        Reader::Tokenizer => {
            let path = dir.join("tokenizer.json");
            fs::write(&path, bytes).unwrap();
            match Tokenizer::from_file(&path, Some(1)) {
                Ok(tokenizer) => match tokenizer.encode("hello é world", true) {
                    Ok(ids) => note(tokenizer.decode(&ids).map(drop).map_err(then)),
                    Err(e) => note(Err(then(e))),
                },
                Err(e) => note(Err(e.to_string())),
            }
        }
        Reader::Jsonl => {
            let path = dir.join("data.jsonl");
            fs::write(&path, bytes).unwrap();
            for skip_bad_lines in [false, true] {
                let options = ReadOptions {
                    skip_bad_lines,
                    ..ReadOptions::default()
                };
                note(read_jsonl(&[&path], &options).map(drop).map_err(text));
            }
            let options = ReadOptions::default();
            let text = String::from_utf8_lossy(bytes);
            let lines = text.trim_start_matches('\u{feff}').lines();
            for line in lines.filter(|l| !l.trim().is_empty()) {
                note(parse_line(line, &options).map(drop));
            }
        }
        Reader::Codec => {
            let path = dir.join("char_codec.json");
            fs::write(&path, bytes).unwrap();
            note(CharCodec::load(&path).map(drop).map_err(text));
        }
        Reader::State => {
            fs::write(dir.join(STATE_FILE), bytes).unwrap();
            note(read_state(dir).map(drop).map_err(text));
        }
        Reader::Gguf => {
            let path = dir.join("model.gguf");
            fs::write(&path, bytes).unwrap();
            let file = match GgufFile::open(&path) {
                Ok(file) => file,
                Err(e) => return note(Err(e.to_string())),
            };
            for tensor in file.tensors() {
                let read = file.data(tensor).map_err(then).and_then(|data| {
                    to_f32(tensor.ggml_type, data).map_err(|e| format!("{FOLLOW_UP}{e}"))
                });
                match read {
                    // What was read matches the header (NaN and infinity are just values).
                    Ok(values) => {
                        assert_eq!(values.len(), tensor.len(), "tensor `{}`", tensor.name)
                    }
                    Err(e) => note(Err(e)),
                }
            }
            note(
                tokenizer_from_vocab(&file, Some(0))
                    .map_err(then)
                    .and_then(|built| match built {
                        Ok(tokenizer) => tokenizer
                            .encode("hello é world", true)
                            .and_then(|ids| tokenizer.decode(&ids))
                            .map(drop)
                            .map_err(then),
                        Err(why) => Err(format!("{FOLLOW_UP}{why}")),
                    }),
            );
            note(GgufModel::open(&path).map(drop).map_err(then));
            // As a llama.cpp LoRA adapter of the tiny fixture's shape (the seed
            // `valid-lora-tiny-llama.gguf` is one).
            note(
                HostLora::from_gguf(&path, &tiny_llama_config())
                    .map(drop)
                    .map_err(then),
            );
        }
    }
}

/// The hyper-parameters of `../shared/fixtures/tiny-llama` (2 layers, hidden 64, 4 heads / 2
/// KV heads of 16, intermediate 160, vocabulary 96).
fn tiny_llama_config() -> LlamaConfig {
    LlamaConfig::from_json_value(
        &serde_json::json!({
            "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "vocab_size": 96, "max_position_embeddings": 128,
        }),
        None,
    )
    .unwrap()
}

/// The prefix of errors met after a file loaded (reading its tensors, using the tokenizer).
const FOLLOW_UP: &str = "after loading: ";

/// Reads every tensor of a model's loaded weight files, as the model loader would.
fn read_all_tensors(weights: &ModelWeights, note: &mut impl FnMut(Result<(), String>)) {
    let names: Vec<String> = weights.names().map(str::to_string).collect();
    for name in names {
        let shape = weights
            .shape(&name)
            .map(<[usize]>::to_vec)
            .unwrap_or_default();
        let r = match weights.dtype(&name) {
            Some(Dtype::I32) => weights.read_i32(&name).map(|(s, v)| (s, v.len())),
            _ => weights.read_f32(&name).map(|(s, v)| (s, v.len())),
        };
        match r {
            Ok((s, len)) => {
                // What was read matches the header (NaN and infinity are just values).
                assert_eq!(s, shape, "tensor `{name}`: shape");
                assert_eq!(
                    len,
                    shape.iter().product::<usize>(),
                    "tensor `{name}`: values"
                );
            }
            Err(e) => note(Err(format!("{FOLLOW_UP}{e}"))),
        }
        let r = weights.expect_f32(&name, &[1, 2, 3]);
        note(r.map(drop).map_err(|e| format!("{FOLLOW_UP}{e}")));
    }
}

// ---------------------------------------------------------------------------------------------
// Running one case: panics, hangs and huge allocations are failures naming the input.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    tried: usize,
    /// Inputs the reader accepted (what was done with them after may still have failed).
    loaded: usize,
    errors: BTreeSet<String>,
}

static STATS: Mutex<BTreeMap<Reader, Stats>> = Mutex::new(BTreeMap::new());

/// An error message without digits, temporary paths or quoted input text (`"..."`, `'c'`), so that
/// variants of one error count once.
fn normalize(message: &str, dir: &Path) -> String {
    let mut message = message.replace(&dir.display().to_string(), "<dir>");
    // serde names the unknown key or variant read: input text too.
    for unknown in ["unknown field `", "unknown variant `"] {
        if let Some(start) = message.find(unknown).map(|i| i + unknown.len()) {
            if let Some(len) = message[start..].find('`') {
                message.replace_range(start..start + len, "…");
            }
        }
    }
    let chars: Vec<char> = message.chars().collect();
    let mut out = String::new();
    let mut quoted = false;
    let mut k = 0;
    while k < chars.len() {
        let c = chars[k];
        k += 1;
        // A quoted character, e.g. `'a'`.
        if !quoted && c == '\'' && chars.get(k + 1) == Some(&'\'') {
            out.push_str("'…'");
            k += 2;
        } else if c == '"' {
            quoted = !quoted;
            if quoted {
                out.push_str("\"…\"");
            }
        } else if !quoted && !c.is_ascii_digit() {
            out.push(c);
        }
    }
    out
}

/// The input, for a failure message: its length and (the start of) its bytes.
fn describe(bytes: &[u8]) -> String {
    const SHOWN: usize = 400;
    let shown = &bytes[..bytes.len().min(SHOWN)];
    let more = if bytes.len() > SHOWN { " ..." } else { "" };
    format!(
        "{} bytes: {:?}{more}",
        bytes.len(),
        String::from_utf8_lossy(shown)
    )
}

fn check(reader: Reader, dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let (send, receive) = mpsc::channel();
    let owned = bytes.to_vec();
    let case_dir = dir.to_path_buf();
    std::thread::spawn(move || {
        LARGEST_ALLOC.with(|l| l.set(0));
        LIVE.with(|l| l.set(Some(0)));
        let mut errors = Vec::new();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            run_reader(reader, &case_dir, &owned, &mut errors)
        }));
        let largest = LARGEST_ALLOC.with(Cell::get);
        let outcome = outcome.map(|()| errors).map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into())
        });
        let _ = send.send((outcome, largest));
    });
    let started = Instant::now();
    let (outcome, largest) = match receive.recv_timeout(CASE_TIMEOUT) {
        Ok(result) => result,
        Err(_) => {
            return Err(TestCaseError::fail(format!(
                "{reader:?}: no result after {:?} (hang?) on {}",
                started.elapsed(),
                describe(bytes)
            )))
        }
    };
    let errors = outcome.map_err(|panic| {
        TestCaseError::fail(format!(
            "{reader:?} panicked ({panic}) on {}",
            describe(bytes)
        ))
    })?;
    if largest > alloc_limit(bytes.len()) {
        return Err(TestCaseError::fail(format!(
            "{reader:?} allocated {largest} bytes at once (limit {}) on {}",
            alloc_limit(bytes.len()),
            describe(bytes)
        )));
    }
    let mut stats = STATS.lock().unwrap_or_else(|e| e.into_inner());
    let stats = stats.entry(reader).or_default();
    stats.tried += 1;
    if errors.iter().all(|e| e.starts_with(FOLLOW_UP)) {
        stats.loaded += 1;
    }
    for e in errors {
        assert!(!e.trim().is_empty(), "{reader:?}: an empty error message");
        stats.errors.insert(normalize(&e, dir));
    }
    Ok(())
}

fn report(reader: Reader, started: Instant) {
    let stats = STATS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = stats.get(&reader) else {
        return;
    };
    let mut out = format!(
        "fuzz {reader:?}: {} inputs tried ({} loaded), {} distinct errors, {:.1?}\n",
        s.tried,
        s.loaded,
        s.errors.len(),
        started.elapsed()
    );
    for e in &s.errors {
        let e: String = e.chars().take(160).collect();
        out.push_str(&format!("    {e}\n"));
    }
    print!("{out}");
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// Hostile byte strings to insert or write over part of an input.
const TOKENS: &[&[u8]] = &[
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"-1",
    b"0",
    b"1e400",
    b"-0.0",
    b"18446744073709551616",
    b"18446744073709551615",
    b"1099511627776",
    b"9223372036854775807",
    b"null",
    b"true",
    b"\"\"",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"\xff\xfe",
    b"\xc3",
    b"\0",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"\"",
    b"\n",
    b"\r\n",
    b"\xEF\xBB\xBF",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":",
    &[0xff; 8],
    &[0, 0, 0, 0, 0, 1, 0, 0],
    &[0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0],
];

/// Numbers to put in place of a number of the input.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "3",
    "-1",
    "2.5",
    "1e400",
    "-1e400",
    "NaN",
    "65536",
    "4294967296",
    "1099511627776",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
];

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Overwrite(Index, Vec<u8>),
    Delete(Index, usize),
    /// Copies `len` bytes from one place over another.
    Splice(Index, Index, usize),
    /// Replaces the n-th run of digits (a JSON number or a header length) by another number.
    Number(Index, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop_oneof![
        3 => proptest::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
        1 => proptest::collection::vec(any::<u8>(), 1..16),
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), token.clone()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        2 => (any::<Index>(), token).prop_map(|(i, t)| Mutation::Overwrite(i, t)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), any::<Index>(), 1usize..256)
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
        3 => (any::<Index>(), proptest::sample::select(NUMBERS))
            .prop_map(|(i, n)| Mutation::Number(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
    match m {
        Mutation::Flip(i, bit) => {
            if !bytes.is_empty() {
                let p = i.index(bytes.len());
                bytes[p] ^= 1 << bit;
            }
        }
        Mutation::Truncate(i) => bytes.truncate(at(i, bytes.len())),
        Mutation::Insert(i, t) => {
            let p = at(i, bytes.len());
            bytes.splice(p..p, t.iter().copied());
        }
        Mutation::Overwrite(i, t) => {
            let p = at(i, bytes.len());
            let end = (p + t.len()).min(bytes.len());
            bytes.splice(p..end, t.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let p = at(i, bytes.len());
            let end = (p + n).min(bytes.len());
            bytes.drain(p..end);
        }
        Mutation::Splice(from, to, n) => {
            if !bytes.is_empty() {
                let f = from.index(bytes.len());
                let chunk: Vec<u8> = bytes[f..(f + n).min(bytes.len())].to_vec();
                let t = to.index(bytes.len());
                let end = (t + chunk.len()).min(bytes.len());
                bytes.splice(t..end, chunk);
            }
        }
        Mutation::Number(i, n) => {
            let mut runs = Vec::new();
            let mut k = 0;
            while k < bytes.len() {
                if bytes[k].is_ascii_digit() {
                    let start = k;
                    while k < bytes.len() && bytes[k].is_ascii_digit() {
                        k += 1;
                    }
                    runs.push(start..k);
                } else {
                    k += 1;
                }
            }
            if !runs.is_empty() {
                let run = runs[i.index(runs.len())].clone();
                bytes.splice(run, n.bytes());
            }
        }
    }
}

/// Arbitrary bytes, or a seed with a few mutations.
fn input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        proptest::sample::select(seeds),
        proptest::collection::vec(mutation(), 1..6),
    )
        .prop_map(|(mut bytes, mutations)| {
            for m in &mutations {
                apply(&mut bytes, m);
            }
            bytes
        });
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        6 => mutated,
    ]
}

/// A safetensors file with a generated header: dtypes (real and bogus), shapes with huge
/// dimensions, offsets that may lie, a header length that may lie, a data section of any size.
fn safetensors_file() -> impl Strategy<Value = Vec<u8>> {
    let dtype = proptest::sample::select(vec![
        "F32", "F16", "BF16", "I32", "F64", "I8", "U8", "BOOL", "F8_E4M3", "F4", "Q4", "f32", "",
    ]);
    let dim = prop_oneof![
        4 => (0u64..5).prop_map(|d| d.to_string()),
        1 => proptest::sample::select(vec![
            "1048576", "1099511627776", "4294967296", "18446744073709551615",
            "18446744073709551616", "-1", "1.5", "null", "\"2\"",
        ])
        .prop_map(str::to_string),
    ];
    let shape = proptest::collection::vec(dim, 0..4);
    // Offsets: honest (computed from the shape), or any of these.
    let offset = prop_oneof![
        3 => Just(None),
        1 => proptest::sample::select(vec![
            "0", "1", "7", "64", "1099511627776", "18446744073709551615", "-1", "null",
        ])
        .prop_map(|s| Some(s.to_string())),
    ];
    let tensor = (dtype, shape, offset.clone(), offset);
    let header_len = prop_oneof![
        4 => Just(None),
        1 => prop_oneof![
            Just(0u64), Just(1), Just(7), Just(u64::MAX), Just(1 << 40), Just(100_000_001),
            0u64..300,
        ]
        .prop_map(Some),
    ];
    let extra_data = prop_oneof![4 => Just(0usize), 1 => 0usize..64];
    (
        proptest::collection::vec(tensor, 0..4),
        header_len,
        extra_data,
        any::<bool>(),
        any::<f32>(),
    )
        .prop_map(|(tensors, header_len, extra, short_data, fill)| {
            let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
            let mut end = 0u64;
            for (i, (dtype, shape, start, stop)) in tensors.iter().enumerate() {
                let size = shape
                    .iter()
                    .map(|d| d.parse::<u64>().unwrap_or(1))
                    .try_fold(1u64, u64::checked_mul)
                    .and_then(|n| n.checked_mul(4))
                    .unwrap_or(u64::MAX);
                let honest_start = end.to_string();
                let honest_stop = end.saturating_add(size).to_string();
                end = end.saturating_add(size);
                header.push_str(&format!(
                    ",\"t{i}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                    shape.join(","),
                    start.as_deref().unwrap_or(&honest_start),
                    stop.as_deref().unwrap_or(&honest_stop),
                ));
            }
            header.push('}');
            let mut bytes = header_len
                .unwrap_or(header.len() as u64)
                .to_le_bytes()
                .to_vec();
            bytes.extend_from_slice(header.as_bytes());
            // The data section: as declared when small, else short.
            let declared = if end <= 4096 && !short_data {
                end as usize
            } else {
                (end as usize).min(64)
            };
            for k in 0..declared.div_ceil(4) + extra {
                let v = if k % 3 == 0 { f32::NAN } else { fill };
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            bytes.truncate(8 + header.len() + declared + extra);
            bytes
        })
}

/// A GGUF file with a generated header: metadata of every type with lengths that may lie,
/// tensor infos with real and bogus types, huge or zero dimensions, offsets that may lie,
/// counts that may lie, and a data section of any size.
fn gguf_file() -> impl Strategy<Value = Vec<u8>> {
    let string = |s: &[u8]| {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(s);
        b
    };
    let length = prop_oneof![
        4 => Just(None),
        1 => proptest::sample::select(vec![0u64, 1, 7, 1 << 20, 1 << 40, u64::MAX]).prop_map(Some),
    ];
    // (value type, array item type, item count, claimed length)
    let kv = (
        0u32..14,
        0u32..14,
        0usize..4,
        length.clone(),
        proptest::sample::select(vec![
            "general.architecture",
            "general.alignment",
            "llama.block_count",
            "llama.embedding_length",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.model",
            "x",
        ]),
    );
    let dim = prop_oneof![
        4 => 1u64..65,
        1 => proptest::sample::select(vec![0u64, 256, 1 << 32, 1 << 62, u64::MAX]),
    ];
    let ggml_type = prop_oneof![
        4 => proptest::sample::select(vec![0u32, 1, 2, 8, 12, 14, 30]),
        1 => 0u32..64,
        1 => Just(u32::MAX),
    ];
    let offset = prop_oneof![
        3 => Just(None),
        1 => proptest::sample::select(vec![1u64, 32, 4096, 1 << 40, u64::MAX]).prop_map(Some),
    ];
    let tensor = (proptest::collection::vec(dim, 0..6), ggml_type, offset);
    (
        proptest::collection::vec(kv, 0..5),
        proptest::collection::vec(tensor, 0..4),
        (length.clone(), length),
        0usize..300,
        prop_oneof![Just(3u32), Just(2), 0u32..5],
    )
        .prop_map(
            move |(kvs, tensors, (tensor_count, kv_count), data, version)| {
                let mut out = b"GGUF".to_vec();
                out.extend(version.to_le_bytes());
                out.extend(tensor_count.unwrap_or(tensors.len() as u64).to_le_bytes());
                out.extend(kv_count.unwrap_or(kvs.len() as u64).to_le_bytes());
                for (kind, item, count, claimed, key) in kvs {
                    out.extend(string(key.as_bytes()));
                    out.extend(kind.to_le_bytes());
                    let value = |kind: u32, out: &mut Vec<u8>| match kind {
                        8 => out.extend(string(b"llama")),
                        0..=13 => out.extend(
                            1u64.to_le_bytes()
                                [..[1, 1, 2, 2, 4, 4, 4, 1, 8, 4, 8, 8, 8, 0][kind as usize]]
                                .iter(),
                        ),
                        _ => {}
                    };
                    if kind == 9 {
                        out.extend(item.to_le_bytes());
                        out.extend(claimed.unwrap_or(count as u64).to_le_bytes());
                        for _ in 0..count {
                            value(item, &mut out);
                        }
                    } else if let (8, Some(len)) = (kind, claimed) {
                        out.extend(len.to_le_bytes());
                    } else {
                        value(kind, &mut out);
                    }
                }
                let mut next = 0u64;
                for (dims, ggml_type, offset) in &tensors {
                    out.extend(string(b"t"));
                    out.extend((dims.len() as u32).to_le_bytes());
                    for d in dims {
                        out.extend(d.to_le_bytes());
                    }
                    out.extend(ggml_type.to_le_bytes());
                    out.extend(offset.unwrap_or(next).to_le_bytes());
                    let count = dims
                        .iter()
                        .try_fold(1u64, |n, &d| n.checked_mul(d))
                        .unwrap_or(0);
                    let size = count.saturating_mul(4).checked_next_multiple_of(32);
                    next = next.saturating_add(size.unwrap_or(u64::MAX));
                }
                out.resize(out.len().next_multiple_of(32) + data, 0x3c);
                out
            },
        )
}

/// GGUF files that lie in their first bytes.
fn hostile_gguf() -> Vec<Vec<u8>> {
    let header = |version: u32, tensors: u64, kvs: u64| {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kvs.to_le_bytes());
        b
    };
    let mut long_string = header(3, 0, 1);
    long_string.extend(u64::MAX.to_le_bytes());
    let mut long_array = header(3, 0, 1);
    long_array.extend(1u64.to_le_bytes());
    long_array.push(b'k');
    long_array.extend(9u32.to_le_bytes());
    long_array.extend(8u32.to_le_bytes());
    long_array.extend((1u64 << 40).to_le_bytes());
    vec![
        Vec::new(),
        b"GGUF".to_vec(),
        header(3, 0, 0),
        header(3, u64::MAX, 0),
        header(3, 0, u64::MAX),
        header(3, 1 << 30, 1 << 30),
        header(1, 0, 0),
        header(3u32.swap_bytes(), 0, 0),
        long_string,
        long_array,
    ]
}

/// Deeply nested JSON, and other inputs every JSON reader must refuse cleanly.
fn hostile_json() -> Vec<Vec<u8>> {
    let mut inputs = vec![
        "[".repeat(10_000).into_bytes(),
        "{\"a\":".repeat(10_000).into_bytes(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        format!(
            "{{\"messages\":{}1{}}}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        )
        .into_bytes(),
        b"".to_vec(),
        b"   ".to_vec(),
        b"null".to_vec(),
        b"[1,2,3]".to_vec(),
        b"\"a string\"".to_vec(),
        b"1e400".to_vec(),
        b"{\"a\":NaN}".to_vec(),
        b"\xEF\xBB\xBF{}".to_vec(),
        b"{\"\xff\xfe\":1}".to_vec(),
        b"{\"a\":\"\\ud800\"}".to_vec(),
        b"{}".to_vec(),
    ];
    inputs.push(format!("\"{}\"", "\\u0041".repeat(50_000)).into_bytes());
    inputs
}

/// Safetensors files with a lying header.
fn hostile_safetensors() -> Vec<Vec<u8>> {
    let file = |len: u64, header: &str, data: usize| {
        let mut b = len.to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        b
    };
    let honest = |header: &str, data: usize| file(header.len() as u64, header, data);
    let nest = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    vec![
        Vec::new(),
        vec![0; 7],
        vec![0; 8],
        file(u64::MAX, "{}", 0),
        file(1 << 40, "{}", 0),
        file(100_000_000, "{}", 0),
        file(3, "{}", 0),
        honest(&nest, 0),
        honest("[]", 0),
        honest("{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,8]}}", 8),
        honest("{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776],\"data_offsets\":[0,4398046511104]}}", 8),
        honest("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}}", 8),
        honest("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8),
        honest("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0),
        honest("{\"w\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4),
        honest("{\"w\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}", 3),
        honest("{\"w\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2),
        honest("{\"__metadata__\":{\"format\":1}}", 0),
        honest("{\"__metadata__\":[]}", 0),
    ]
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Runs `cases` generated inputs, then the hostile fixed ones, through `reader`.
fn fuzz(reader: Reader, cases: u32, strategy: impl Strategy<Value = Vec<u8>>) {
    let started = Instant::now();
    let dir = TempDir::new().unwrap();
    let mut fixed = match reader {
        Reader::Gguf => hostile_gguf(),
        _ if reader.is_json() => hostile_json(),
        _ => hostile_safetensors(),
    };
    if reader == Reader::Jsonl {
        let lines: Vec<u8> = hostile_json()
            .into_iter()
            .flat_map(|mut l| {
                l.push(b'\n');
                l
            })
            .collect();
        fixed.push(lines);
    }
    for bytes in &fixed {
        if let Err(e) = check(reader, dir.path(), bytes) {
            panic!("{e}");
        }
    }
    let config = Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed ^ reader as u64),
        max_shrink_iters: 200,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |bytes| check(reader, dir.path(), &bytes));
    report(reader, started);
    if let Err(e) = result {
        panic!("{e}");
    }
}

const CASES: u32 = 1500;

#[test]
fn fuzz_safetensors() {
    let seeds = seeds(Reader::Safetensors);
    let strategy = prop_oneof![2 => input(seeds), 1 => safetensors_file()];
    fuzz(Reader::Safetensors, CASES * 2, strategy);
}

#[test]
fn fuzz_gguf() {
    let strategy = prop_oneof![2 => input(seeds(Reader::Gguf)), 1 => gguf_file()];
    fuzz(Reader::Gguf, CASES * 2, strategy);
}

#[test]
fn fuzz_shard_index() {
    fuzz(Reader::ShardIndex, CASES, input(seeds(Reader::ShardIndex)));
}

#[test]
fn fuzz_config() {
    fuzz(Reader::Config, CASES, input(seeds(Reader::Config)));
}

#[test]
fn fuzz_adapter_config() {
    fuzz(Reader::Adapter, CASES, input(seeds(Reader::Adapter)));
}

#[test]
fn fuzz_tokenizer() {
    fuzz(Reader::Tokenizer, CASES, input(seeds(Reader::Tokenizer)));
}

#[test]
fn fuzz_jsonl() {
    fuzz(Reader::Jsonl, CASES, input(seeds(Reader::Jsonl)));
}

#[test]
fn fuzz_char_codec() {
    fuzz(Reader::Codec, CASES, input(seeds(Reader::Codec)));
}

#[test]
fn fuzz_trainer_state() {
    fuzz(Reader::State, CASES, input(seeds(Reader::State)));
}

/// Every corpus file goes through its reader; `valid-*` files load without error, `broken-*`
/// ones end in an error, others (`odd-*`: hostile but well-formed) just must not panic.
#[test]
fn corpus_replays() {
    let dir = TempDir::new().unwrap();
    let mut replayed = 0;
    for reader in Reader::ALL {
        for path in corpus_files(reader) {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let bytes = fs::read(&path).unwrap();
            if let Err(e) = check(reader, dir.path(), &bytes) {
                panic!("{name}: {e}");
            }
            let mut errors = Vec::new();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                run_reader(reader, dir.path(), &bytes, &mut errors)
            }));
            assert!(outcome.is_ok(), "{reader:?}: {name} panicked");
            let first = errors.first();
            if name.starts_with("valid-") {
                // Valid files only meet the follow-up checks' errors (e.g. a shape asked for).
                let load_error = errors.iter().find(|e| !e.starts_with(FOLLOW_UP));
                assert!(
                    load_error.is_none(),
                    "{reader:?}: {name} did not load: {load_error:?}"
                );
            } else if name.starts_with("broken-") {
                assert!(first.is_some(), "{reader:?}: {name} loaded without error");
            }
            replayed += 1;
        }
    }
    // NaN and infinity in weights are read as such.
    let weights =
        ModelWeights::open(corpus_root().join("safetensors/valid-nan-inf.safetensors")).unwrap();
    let (_, a) = weights.read_f32("a.weight").unwrap();
    assert!(a[2].is_nan() && a[3] == f32::INFINITY && a[4] == f32::NEG_INFINITY);
    let (_, b) = weights.read_f32("b.weight").unwrap();
    assert!(b[1].is_nan() && b[2] == f32::INFINITY);
    let (_, c) = weights.read_f32("c.weight").unwrap();
    assert_eq!(c, [3.0, f32::NEG_INFINITY]);
    println!("fuzz corpus: {replayed} files replayed");
}
