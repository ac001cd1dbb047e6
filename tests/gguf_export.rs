//! Adapters and merged models out to llama.cpp's GGUF, and GGUF LoRA adapters in.
//!
//! Truth that is not our output: `tests/data/gguf-lora/expected.safetensors`, written by
//! `scripts/llamacpp_lora_check.py` (float64 numpy LLaMA on the llama.cpp-written base
//! `../shared/fixtures-gguf/tiny-f32`, checked there against the fixture's transformers logits;
//! llama.cpp's own logits with our exported adapter and on our merged files; the `gguf`
//! package read both files), the PEFT fixture's transformers + peft logits, and llama.cpp's
//! own tokenizer metadata of the base.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use hydralora::model::adapter::approximate::{hydra_as_lora, mean_gates, HeadChoice};
use hydralora::model::adapter::gguf::{HostLora, LoraPair};
use hydralora::model::adapter::{
    attach, load_adapter, merge_lora_gguf, save_adapter, AdapterConfig,
};
use hydralora::model::engine::DType;
use hydralora::model::llama::gguf::export::vocab_metadata;
use hydralora::model::llama::gguf::file::{GgmlType, MetaValue};
use hydralora::model::llama::gguf::write::{meta_f32, meta_string, write_gguf, TensorToWrite};
use hydralora::model::llama::gguf::{GgufFile, GgufModel};
use hydralora::model::llama::weights::WeightFile;
use hydralora::model::verify::{LLAMACPP_FLOAT_TOLERANCE, LLAMACPP_QUANTIZED_TOLERANCE};
use hydralora::model::{Llama, LlamaConfig};

use common::rel_err;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");
const GGUF_BASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures-gguf/tiny-f32"
);
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gguf-lora");

fn base_file() -> PathBuf {
    Path::new(GGUF_BASE).join("model.gguf")
}

fn base_config() -> LlamaConfig {
    GgufModel::open(base_file()).unwrap().config().clone()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hydralora-gguf-export-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `name` of the script's reference data, [1, T, V] flattened.
fn expected(name: &str) -> Vec<f32> {
    WeightFile::open(Path::new(DATA).join("expected.safetensors"))
        .unwrap()
        .read_f32(name)
        .unwrap()
        .1
}

fn input_ids() -> Vec<u32> {
    let file = WeightFile::open(Path::new(DATA).join("expected.safetensors")).unwrap();
    file.read_i32("input_ids")
        .unwrap()
        .1
        .iter()
        .map(|&i| i as u32)
        .collect()
}

fn logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    model.logits(ids, 1).unwrap().to_vec_f32().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The adapter out, and back in
// ---------------------------------------------------------------------------------------------

/// The committed adapter.gguf (the one llama.cpp and the gguf package checked) is what export
/// writes today, byte for byte.
#[test]
fn export_reproduces_the_checked_adapter_file_byte_for_byte() {
    let lora = HostLora::from_folder(&Path::new(DATA).join("peft"), &base_config()).unwrap();
    let out = temp_dir("bytes").join("adapter.gguf");
    lora.write_gguf(&out, &base_config(), GgmlType::F32, "peft")
        .unwrap();
    let committed = std::fs::read(Path::new(DATA).join("adapter.gguf")).unwrap();
    assert!(
        std::fs::read(&out).unwrap() == committed,
        "export no longer writes the adapter llama.cpp was checked with"
    );
}

/// Our engine with the exported GGUF adapter (and with the PEFT folder it came from) gives the
/// float64 reference's logits, and llama.cpp's with the same file at its tolerance.
#[test]
fn gguf_adapter_matches_the_reference_and_llama_cpp() {
    let dev = common::device();
    let ids = input_ids();
    let reference = expected("logits_reference");
    let llamacpp = expected("logits_llamacpp_lora");
    for adapter in [
        Path::new(DATA).join("adapter.gguf"),
        Path::new(DATA).join("peft"),
    ] {
        let mut model = Llama::load(&dev, base_file()).unwrap();
        let cfg = load_adapter(&mut model, &adapter).unwrap();
        assert_eq!((cfg.r, cfg.scale()), (4, 2.0));
        let ours = logits(&model, &ids);
        let err = rel_err(&ours, &reference);
        println!("{}: {err:.2e} from the reference", adapter.display());
        assert!(
            err <= 1e-4,
            "{}: {err} from the reference",
            adapter.display()
        );
        let err = rel_err(&ours, &llamacpp);
        println!("{}: {err:.2e} from llama.cpp", adapter.display());
        assert!(
            err <= LLAMACPP_FLOAT_TOLERANCE,
            "{}: {err} from llama.cpp",
            adapter.display()
        );
    }
    // The adapter changes the logits far more than the tolerance: the test can fail.
    let base = logits(&Llama::load(&dev, base_file()).unwrap(), &ids);
    assert!(rel_err(&base, &reference) > 100.0 * 1e-4);
}

/// The PEFT fixture's LoRA exported to GGUF and loaded back gives transformers + peft's
/// logits, f32 at the fixtures' tolerance; f16 and bf16 at what their rounding allows.
#[test]
fn peft_fixture_adapter_round_trips_through_gguf() {
    let dev = common::device();
    let fixture = WeightFile::open(Path::new(TINY).join("expected.safetensors")).unwrap();
    let (shape, ids) = fixture.read_i32("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let peft = WeightFile::open(Path::new(TINY).join("lora/expected.safetensors"))
        .unwrap()
        .read_f32("logits")
        .unwrap()
        .1;
    let config = LlamaConfig::from_dir(TINY).unwrap();
    let lora = HostLora::from_folder(&Path::new(TINY).join("lora"), &config).unwrap();
    let dir = temp_dir("peft");
    for (ggml_type, tolerance) in [
        (GgmlType::F32, 1e-4),
        (GgmlType::F16, 2e-3),
        (GgmlType::BF16, 2e-2),
    ] {
        let path = dir.join(format!("{ggml_type}.gguf"));
        lora.write_gguf(&path, &config, ggml_type, "lora").unwrap();
        let mut model = Llama::load(&dev, TINY).unwrap();
        load_adapter(&mut model, &path).unwrap();
        let ours = model.logits(&ids, shape[0]).unwrap().to_vec_f32().unwrap();
        let err = rel_err(&ours, &peft);
        println!("PEFT fixture via {ggml_type} GGUF: {err:.2e} from transformers + peft");
        assert!(err <= tolerance, "{ggml_type}: {err}");
    }
}

/// Host round trip: write then read gives the same matrices, for an rsLoRA adapter too (whose
/// scale llama.cpp only knows as alpha / r).
#[test]
fn host_round_trip_keeps_the_scale_of_rslora() {
    let config = LlamaConfig::from_dir(TINY).unwrap();
    let mut lora = HostLora::from_folder(&Path::new(TINY).join("lora"), &config).unwrap();
    lora.config.rslora = true;
    let path = temp_dir("rslora").join("a.gguf");
    lora.write_gguf(&path, &config, GgmlType::F32, "x").unwrap();
    let back = HostLora::from_gguf(&path, &config).unwrap();
    assert!((back.config.scale() - lora.config.scale()).abs() < 1e-6);
    assert_eq!(back.pairs, lora.pairs);
}

/// Pairs of different ranks (PEFT's rank_pattern, llama.cpp scales each by alpha / its r) and
/// layers left out load as the same product B A.
#[test]
fn mixed_ranks_and_missing_layers_keep_each_pairs_product() {
    let config = LlamaConfig::from_dir(TINY).unwrap();
    let (h, kv) = (config.hidden_size, config.kv_dim());
    let a1: Vec<f32> = (0..h).map(|i| (i as f32 * 0.1).sin()).collect(); // r 1
    let b1: Vec<f32> = (0..kv).map(|i| (i as f32 * 0.3).cos()).collect();
    let a2: Vec<f32> = (0..2 * h).map(|i| (i as f32 * 0.7).sin()).collect(); // r 2
    let b2: Vec<f32> = (0..2 * kv).map(|i| (i as f32 * 0.2).cos()).collect();
    let tensors = vec![
        TensorToWrite::encode("blk.0.attn_v.weight.lora_a", &[1, h], GgmlType::F32, &a1).unwrap(),
        TensorToWrite::encode("blk.0.attn_v.weight.lora_b", &[kv, 1], GgmlType::F32, &b1).unwrap(),
        TensorToWrite::encode("blk.1.attn_v.weight.lora_a", &[2, h], GgmlType::F32, &a2).unwrap(),
        TensorToWrite::encode("blk.1.attn_v.weight.lora_b", &[kv, 2], GgmlType::F32, &b2).unwrap(),
    ];
    let path = temp_dir("ranks").join("a.gguf");
    write_gguf(&path, &adapter_metadata(6.0), &tensors).unwrap();
    let lora = HostLora::from_gguf(&path, &config).unwrap();
    assert_eq!(
        (lora.config.r, lora.config.targets.as_slice()),
        (2, &["v_proj".to_string()][..])
    );
    let product = |p: &LoraPair, r: usize| -> Vec<f64> {
        let mut out = vec![0.0; kv * h];
        for o in 0..kv {
            for i in 0..h {
                out[o * h + i] = (0..r)
                    .map(|k| p.b[o * r + k] as f64 * p.a[k * h + i] as f64)
                    .sum::<f64>()
                    * lora.config.scale() as f64;
            }
        }
        out
    };
    let layer0 = product(lora.pair(0, "v_proj").unwrap(), 2);
    for o in 0..kv {
        for i in 0..h {
            // llama.cpp: alpha / r = 6 / 1 for the rank-1 pair.
            let want = 6.0 * b1[o] as f64 * a1[i] as f64;
            assert!((layer0[o * h + i] - want).abs() < 1e-5, "({o}, {i})");
        }
    }
    let layer1 = product(lora.pair(1, "v_proj").unwrap(), 2);
    for o in 0..kv {
        for i in 0..h {
            let want: f64 = 3.0
                * (0..2)
                    .map(|k| b2[o * 2 + k] as f64 * a2[k * h + i] as f64)
                    .sum::<f64>();
            assert!((layer1[o * h + i] - want).abs() < 1e-5, "({o}, {i})");
        }
    }
}

fn adapter_metadata(alpha: f32) -> Vec<(String, MetaValue)> {
    vec![
        meta_string("general.architecture", "llama"),
        meta_string("general.type", "adapter"),
        meta_string("adapter.type", "lora"),
        meta_f32("adapter.lora.alpha", alpha),
    ]
}

/// Hostile or mistaken GGUF adapters are refused, each with its own message.
#[test]
fn hostile_gguf_adapters_are_refused_cleanly() {
    let config = LlamaConfig::from_dir(TINY).unwrap();
    let (h, q) = (config.hidden_size, config.q_dim());
    let a = |name: &str, r: usize, d: usize| {
        TensorToWrite::encode(name, &[r, d], GgmlType::F32, &vec![0.5; r * d]).unwrap()
    };
    let b = |name: &str, d: usize, r: usize| {
        TensorToWrite::encode(name, &[d, r], GgmlType::F32, &vec![0.5; r * d]).unwrap()
    };
    let good_a = || a("blk.0.attn_q.weight.lora_a", 2, h);
    let good_b = || b("blk.0.attn_q.weight.lora_b", q, 2);
    let mut model_meta = adapter_metadata(4.0);
    model_meta[1] = meta_string("general.type", "model");
    model_meta.push(("llama.block_count".into(), MetaValue::U32(2)));
    let mut other_arch = adapter_metadata(4.0);
    other_arch[0] = meta_string("general.architecture", "qwen2");
    let mut other_kind = adapter_metadata(4.0);
    other_kind[2] = meta_string("adapter.type", "control_vector");
    // (file name, metadata, tensors, what the error says)
    type Case<'a> = (
        &'a str,
        Vec<(String, MetaValue)>,
        Vec<TensorToWrite<'a>>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "model",
            model_meta,
            vec![good_a(), good_b()],
            "is a GGUF model, not an adapter",
        ),
        (
            "arch",
            other_arch,
            vec![good_a(), good_b()],
            "adapts a `qwen2` model",
        ),
        (
            "kind",
            other_kind,
            vec![good_a(), good_b()],
            "`adapter.type` is `control_vector`",
        ),
        (
            "alpha",
            adapter_metadata(-1.0),
            vec![good_a(), good_b()],
            "expected a non-negative float",
        ),
        (
            "empty",
            adapter_metadata(4.0),
            vec![],
            "holds no LoRA matrices",
        ),
        (
            "half",
            adapter_metadata(4.0),
            vec![good_a()],
            "`blk.0.attn_q.weight.lora_b` is missing",
        ),
        (
            "norm",
            adapter_metadata(4.0),
            vec![
                good_a(),
                good_b(),
                TensorToWrite::encode("blk.0.attn_norm.weight", &[h], GgmlType::F32, &vec![1.0; h])
                    .unwrap(),
            ],
            "is not a LoRA matrix",
        ),
        (
            "embeddings",
            adapter_metadata(4.0),
            vec![
                a("token_embd.weight.lora_a", 2, h),
                b("token_embd.weight.lora_b", 96, 2),
            ],
            "not a linear weight of a LLaMA layer",
        ),
        (
            "layer",
            adapter_metadata(4.0),
            vec![
                a("blk.7.attn_q.weight.lora_a", 2, h),
                b("blk.7.attn_q.weight.lora_b", q, 2),
            ],
            "adapts layer 7, but the model has 2 layers",
        ),
        (
            "shape",
            adapter_metadata(4.0),
            vec![a("blk.0.attn_q.weight.lora_a", 2, h + 1), good_b()],
            "needs [r, 64]",
        ),
        (
            "ranks",
            adapter_metadata(4.0),
            vec![good_a(), b("blk.0.attn_q.weight.lora_b", q, 3)],
            "have ranks 2 and 3",
        ),
    ];
    let dir = temp_dir("hostile");
    for (name, metadata, tensors, message) in cases {
        let path = dir.join(format!("{name}.gguf"));
        write_gguf(&path, &metadata, &tensors).unwrap();
        let err = HostLora::from_gguf(&path, &config).unwrap_err().to_string();
        assert!(err.contains(message), "{name}: {err}\nexpected: {message}");
    }
    // A cut file: the container's own checks.
    let whole = std::fs::read(Path::new(DATA).join("adapter.gguf")).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let err = HostLora::from_gguf(&cut, &base_config())
        .unwrap_err()
        .to_string();
    assert!(err.contains("past the end"), "{err}");
}

/// A HydraLoRA adapter asked for as a llama.cpp LoRA (or a merge) is refused with the reason
/// and what to do instead.
#[test]
fn hydra_adapters_are_refused_with_the_reason_and_the_alternatives() {
    let config = LlamaConfig::from_dir(TINY).unwrap();
    let hydra = Path::new(TINY).join("hydra-3");
    for err in [
        HostLora::from_folder(&hydra, &config)
            .unwrap_err()
            .to_string(),
        merge_lora_gguf(
            Path::new(TINY),
            &hydra,
            &temp_dir("hydra").join("m.gguf"),
            DType::F32,
        )
        .unwrap_err()
        .to_string(),
    ] {
        for needed in [
            "HydraLoRA",
            "per-token router",
            "--head 0",
            "--head mean",
            "--adapter",
        ] {
            assert!(err.contains(needed), "`{needed}` missing from: {err}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Merged GGUF models
// ---------------------------------------------------------------------------------------------

/// Merged onto the GGUF base and written as f32, q8_0 and q4_K GGUF, our engine reading the
/// file agrees with llama.cpp's logits on the same file (the script ran llama.cpp on identical
/// bytes) and, f32, with the float64 reference; the vocabulary is the base's.
#[test]
fn merged_gguf_matches_llama_cpp() {
    let dev = common::device();
    let ids = input_ids();
    let reference = expected("logits_reference");
    let dir = temp_dir("merged");
    // (format, tolerance to llama.cpp on the same file, tolerance to the unquantized reference:
    // 4-bit weights move this random tiny model's logits far, 0.24 for llama.cpp's own
    // Q4_K_M of the same merged model, see check.json)
    for (weights, to_llamacpp, to_reference) in [
        (DType::F32, LLAMACPP_FLOAT_TOLERANCE, 1e-4),
        (
            DType::Q8_0,
            LLAMACPP_QUANTIZED_TOLERANCE,
            LLAMACPP_QUANTIZED_TOLERANCE,
        ),
        (DType::Q4K, LLAMACPP_QUANTIZED_TOLERANCE, 0.4),
    ] {
        let out = dir.join(format!("{}.gguf", weights.name()));
        merge_lora_gguf(
            &base_file(),
            &Path::new(DATA).join("adapter.gguf"),
            &out,
            weights,
        )
        .unwrap();
        let model = Llama::load(&dev, &out).unwrap();
        let ours = logits(&model, &ids);
        let llamacpp = expected(&format!("logits_llamacpp_merged_{}", weights.name()));
        let err = rel_err(&ours, &llamacpp);
        println!("merged {}: {err:.2e} from llama.cpp", weights.name());
        assert!(
            err <= to_llamacpp,
            "{}: {err} from llama.cpp",
            weights.name()
        );
        let err = rel_err(&ours, &reference);
        println!("merged {}: {err:.2e} from the reference", weights.name());
        assert!(
            err <= to_reference,
            "{}: {err} from the reference",
            weights.name()
        );

        let (ours, base) = (
            GgufFile::open(&out).unwrap(),
            GgufFile::open(base_file()).unwrap(),
        );
        for (key, value) in base.metadata() {
            if key.starts_with("tokenizer.") || key.starts_with("llama.") {
                assert_eq!(ours.get(key), Some(value), "{key}");
            }
        }
    }
}

/// `merge --format gguf --weights q4_k` stores llama.cpp's Q4_K_M mix: the same tensor types
/// as llama.cpp's own Q4_K_M file of the base.
#[test]
fn q4_k_merge_has_llama_cpp_s_q4_k_m_mix() {
    let out = temp_dir("q4k").join("m.gguf");
    merge_lora_gguf(
        &base_file(),
        &Path::new(DATA).join("adapter.gguf"),
        &out,
        DType::Q4K,
    )
    .unwrap();
    let ours = GgufFile::open(&out).unwrap();
    let theirs = GgufFile::open(Path::new(GGUF_BASE).join("../tiny-q4-k-m/model.gguf")).unwrap();
    assert_eq!(ours.tensors().len(), theirs.tensors().len());
    for t in theirs.tensors() {
        let mine = ours
            .tensor(&t.name)
            .unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!(mine.ggml_type, t.ggml_type, "{}", t.name);
    }
    assert_eq!(
        ours.get("general.file_type"),
        theirs.get("general.file_type")
    );
}

/// The vocabulary built from a `tokenizer.json` is the one llama.cpp's `convert_hf_to_gguf.py`
/// wrote from the same tokenizer (the fixture base's).
#[test]
fn vocabulary_from_tokenizer_json_is_llama_cpp_s() {
    let base = GgufFile::open(base_file()).unwrap();
    let ours = vocab_metadata(Path::new(GGUF_BASE), &base_config())
        .unwrap()
        .expect("the fixture has a tokenizer.json");
    for (key, value) in &ours {
        let theirs = base
            .get(key)
            .unwrap_or_else(|| panic!("llama.cpp wrote no `{key}`"));
        assert_eq!(theirs, value, "{key}");
    }
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
    ] {
        assert!(ours.iter().any(|(k, _)| k == key), "`{key}` not written");
    }
}

// ---------------------------------------------------------------------------------------------
// The commands
// ---------------------------------------------------------------------------------------------

fn hydralora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hydralora"))
        .args(args)
        .output()
        .unwrap()
}

/// `export` writes the adapter and an Ollama Modelfile beside it; `merge --format gguf` a
/// file our loader reads; a trained adapter saved by us goes through both.
#[test]
fn export_and_merge_commands() {
    let dev = common::device();
    let dir = temp_dir("cli");
    let mut model = Llama::load(&dev, TINY).unwrap();
    attach(
        &mut model,
        &AdapterConfig::lora(2, 4.0, &["q_proj", "k_proj", "up_proj"]),
        3,
    )
    .unwrap();
    save_adapter(&model, &dir.join("trained")).unwrap();
    let out = dir.join("out/adapter.gguf");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let run = hydralora(&[
        "export",
        "--model",
        TINY,
        "--adapter",
        dir.join("trained").to_str().unwrap(),
        "--format",
        "gguf",
        "--dtype",
        "f16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let modelfile = std::fs::read_to_string(dir.join("out/Modelfile")).unwrap();
    let tiny = std::fs::canonicalize(TINY).unwrap();
    assert_eq!(
        modelfile,
        format!("FROM {}\nADAPTER ./adapter.gguf\n", tiny.display())
    );
    let file = GgufFile::open(&out).unwrap();
    assert!(file.tensors().iter().all(|t| t.ggml_type == GgmlType::F16));

    let merged = dir.join("merged.gguf");
    let run = hydralora(&[
        "merge",
        "--model",
        TINY,
        "--adapter",
        out.to_str().unwrap(),
        "--format",
        "gguf",
        "--weights",
        "f32",
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("vocabulary: none"), "{stdout}");
    let merged_model = GgufModel::open(&merged).unwrap();
    assert_eq!(merged_model.config().num_hidden_layers, 2);

    let run = hydralora(&[
        "export",
        "--model",
        TINY,
        "--adapter",
        &format!("{TINY}/hydra-3"),
        "--out",
        dir.join("h.gguf").to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("per-token router"));
    assert!(!dir.join("h.gguf").exists());
}

// ---------------------------------------------------------------------------------------------
// HydraLoRA as an ordinary LoRA (an approximation, measured)
// ---------------------------------------------------------------------------------------------

/// `--head k` is head k's B with the shared A, as the HydraLoRA file stores them.
#[test]
fn one_head_is_the_files_b_of_that_head_and_the_shared_a() {
    let dev = common::device();
    let hydra = Path::new(TINY).join("hydra-3");
    let file = WeightFile::open(hydra.join("adapter_model.safetensors")).unwrap();
    let mut model = Llama::load(&dev, TINY).unwrap();
    load_adapter(&mut model, &hydra).unwrap();
    for k in 0..3 {
        let lora = hydra_as_lora(&model, &HeadChoice::One(k), None).unwrap();
        assert_eq!(lora.config.scale(), 2.0);
        assert_eq!(lora.pairs.len(), 2 * 3);
        for p in &lora.pairs {
            let key = format!("base_model.model.model.layers.{}.mlp.{}", p.layer, p.module);
            assert_eq!(
                p.a,
                file.read_f32(&format!("{key}.lora_A.weight")).unwrap().1
            );
            assert_eq!(
                p.b,
                file.read_f32(&format!("{key}.lora_B{k}.weight")).unwrap().1
            );
        }
    }
    let err = hydra_as_lora(&model, &HeadChoice::One(3), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("heads 0 to 2"), "{err}");
}

/// With a router that gives every head the same gate whatever the token, HydraLoRA is exactly
/// the LoRA of the mean head: the exported mean gives the adapter's own logits.
#[test]
fn the_mean_head_is_exact_when_the_gates_do_not_vary() {
    let dev = common::device();
    let hydra = Path::new(TINY).join("hydra-3");
    let mut model = Llama::load(&dev, TINY).unwrap();
    load_adapter(&mut model, &hydra).unwrap();
    // Zero the router rows (r..r+E of the down-projection): softmax(0) = 1/3 per head.
    for (_, _, ad) in model.adapters() {
        let mut down = ad.down.to_vec_f32().unwrap();
        let d_in = ad.down.dim(1);
        down[4 * d_in..].iter_mut().for_each(|v| *v = 0.0);
        hydralora::model::engine::no_grad(|| ad.down.write_f32(&down)).unwrap();
    }
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 96).collect();
    let hydra_logits = logits(&model, &ids);
    let gates = mean_gates(&mut model, &[ids.clone(), ids[..5].to_vec()]).unwrap();
    assert_eq!(gates.len(), 6);
    for g in gates.values() {
        assert!(g.iter().all(|w| (w - 1.0 / 3.0).abs() < 1e-6), "{g:?}");
    }
    let lora = hydra_as_lora(&model, &HeadChoice::Mean, Some(&gates)).unwrap();
    let mut plain = Llama::load(&dev, TINY).unwrap();
    lora.attach_to(&mut plain).unwrap();
    let err = rel_err(&logits(&plain, &ids), &hydra_logits);
    assert!(err <= 1e-4, "{err}");
    // And the fixture's own (trained-like, varying) router makes the mean an approximation.
    let mut varying = Llama::load(&dev, TINY).unwrap();
    load_adapter(&mut varying, &hydra).unwrap();
    let exact = logits(&varying, &ids);
    let gates = mean_gates(&mut varying, std::slice::from_ref(&ids)).unwrap();
    let lora = hydra_as_lora(&varying, &HeadChoice::Mean, Some(&gates)).unwrap();
    lora.attach_to(&mut varying).unwrap();
    assert!(rel_err(&logits(&varying, &ids), &exact) > 0.0);
}

/// `export --head mean --data` writes the LoRA and prints the cost of the approximation.
#[test]
fn export_head_mean_prints_its_cost() {
    let dev = common::device();
    let dir = temp_dir("head-mean");
    let model_dir = dir.join("model");
    common::char_model_dir(&model_dir);
    let mut model = Llama::load(&dev, &model_dir).unwrap();
    attach(
        &mut model,
        &AdapterConfig::hydra(2, 4.0, 3, &["q_proj", "up_proj"]),
        5,
    )
    .unwrap();
    for (i, (_, _, ad)) in model.adapters().enumerate() {
        ad.b.write_f32(&common::values(ad.b.numel(), -0.2, 0.2, 40 + i as u64))
            .unwrap();
    }
    save_adapter(&model, &dir.join("hydra")).unwrap();
    let data = dir.join("eval.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"instruction": "echo {i}", "input": "", "output": "{i}{i}"}}"#))
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.join("mean.gguf");
    let run = hydralora(&[
        "export",
        "--model",
        model_dir.to_str().unwrap(),
        "--adapter",
        dir.join("hydra").to_str().unwrap(),
        "--head",
        "mean",
        "--data",
        data.to_str().unwrap(),
        "--max-len",
        "96",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    for needed in [
        "HydraLoRA (here)",
        "router-weighted mean",
        "cost of the approximation: loss",
    ] {
        assert!(
            stdout.contains(needed),
            "`{needed}` missing from:\n{stdout}"
        );
    }
    let lora = HostLora::from_gguf(&out, &model.config).unwrap();
    assert_eq!((lora.config.r, lora.config.targets.len()), (2, 2));
}

/// Our export of a PEFT adapter equals what llama.cpp's own `convert_lora_to_gguf.py` writes
/// for it (`tests/data/gguf-lora/convert/`, made by `scripts/llamacpp_convert_reference.py`):
/// the same tensor names, types and shapes, the same values bit for bit (q/k rows of B in
/// llama.cpp's RoPE order, with grouped-query k), and the same `adapter.lora.alpha`, except for
/// rsLoRA, where ours is `scale r` so that llama.cpp's `alpha / r` gives rsLoRA's scale (the
/// converter writes PEFT's alpha, which llama.cpp then applies as plain LoRA). And the
/// converter's file loads here with the logits of the PEFT folder it came from.
#[test]
fn export_equals_llama_cpp_s_converter() {
    let extra = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-extra");
    let cases = [
        ("tiny-llama", PathBuf::from(TINY)),
        ("gqa-llama3-rope", extra.join("gqa-llama3-rope")),
        ("mha-tied-bf16", extra.join("mha-tied-bf16")),
    ];
    for (name, base) in cases {
        let config = LlamaConfig::from_dir(&base).unwrap();
        let adapter = base.join("lora");
        let lora = HostLora::from_folder(&adapter, &config).unwrap();
        let ours_path = temp_dir("convert").join(format!("{name}.gguf"));
        lora.write_gguf(&ours_path, &config, GgmlType::F32, name)
            .unwrap();
        let ours = GgufFile::open(&ours_path).unwrap();
        let theirs =
            GgufFile::open(Path::new(DATA).join("convert").join(format!("{name}.gguf"))).unwrap();
        let names = |f: &GgufFile| {
            let mut n: Vec<String> = f.tensors().iter().map(|t| t.name.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&ours), names(&theirs), "{name}: tensor names");
        for t in theirs.tensors() {
            let o = ours.tensor(&t.name).unwrap();
            assert_eq!(
                (o.ggml_type, &o.dims),
                (t.ggml_type, &t.dims),
                "{name}: {}",
                t.name
            );
            assert!(
                ours.data(o).unwrap() == theirs.data(t).unwrap(),
                "{name}: {} differs from llama.cpp's",
                t.name
            );
        }
        let alpha = |f: &GgufFile| {
            f.get("adapter.lora.alpha")
                .and_then(|v| v.as_f64())
                .unwrap()
        };
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let (peft_alpha, r) = (
            cfg["lora_alpha"].as_f64().unwrap(),
            cfg["r"].as_f64().unwrap(),
        );
        let want = match cfg["use_rslora"].as_bool() == Some(true) {
            true => peft_alpha / r.sqrt() * r, // scale r, scale = alpha / sqrt(r)
            false => peft_alpha,
        };
        assert_eq!(alpha(&theirs), peft_alpha, "{name}: the converter's alpha");
        assert!(
            (alpha(&ours) - want).abs() <= 1e-6 * want,
            "{name}: alpha {} vs {want}",
            alpha(&ours)
        );
        assert_eq!(
            theirs.get("adapter.type").and_then(|v| v.as_str()),
            ours.get("adapter.type").and_then(|v| v.as_str()),
            "{name}: adapter.type"
        );
        // The converter's file loads here with the PEFT folder's logits (not for rsLoRA: its
        // alpha gives llama.cpp, and us reading it as llama.cpp does, plain LoRA's scale).
        if cfg["use_rslora"].as_bool() != Some(true) {
            let ids: Vec<u32> = (0..12)
                .map(|i| (i * 7 + 3) % config.vocab_size as u32)
                .collect();
            let with = |adapter: &Path| {
                let mut model = Llama::load(&common::device(), &base).unwrap();
                load_adapter(&mut model, adapter).unwrap();
                logits(&model, &ids)
            };
            let peft = with(&adapter);
            let err = rel_err(
                &with(&Path::new(DATA).join("convert").join(format!("{name}.gguf"))),
                &peft,
            );
            assert!(
                err <= 1e-5,
                "{name}: the converter's adapter gives logits {err:e} from PEFT's"
            );
        }
    }
}
