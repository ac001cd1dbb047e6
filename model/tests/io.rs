//! Host-side I/O tests (no GPU): configs, safetensors weight files, atomic writes, tokenizer.
//!
//! Fixture cases are read from `$HYDRALORA_FIXTURES` if set, else from the project's
//! `shared/fixtures`; every folder under it that holds a `config.json` is a case.

use std::fs;
use std::path::{Path, PathBuf};

use hydralora_model::llama::config::{GenerationConfig, Llama3RopeScaling, LlamaConfig};
use hydralora_model::llama::weights::{
    llama_tensor_shapes, save_model_folder, write_atomically, write_safetensors, ModelWeights,
    WeightFile, WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
};
use hydralora_model::{ModelError, Tokenizer};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The fixtures folder: `$HYDRALORA_FIXTURES`, or `<project>/../shared/fixtures`.
fn fixtures_root() -> PathBuf {
    match std::env::var_os("HYDRALORA_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    }
}

/// Every folder under the fixtures root that holds a `config.json`, sorted.
fn fixture_cases() -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, cases: &mut Vec<PathBuf>) {
        if dir.join("config.json").is_file() {
            cases.push(dir.to_path_buf());
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if depth < 4 && entry.path().is_dir() {
                walk(&entry.path(), depth + 1, cases);
            }
        }
    }
    let root = fixtures_root();
    let mut cases = Vec::new();
    walk(&root, 0, &mut cases);
    cases.sort();
    assert!(
        !cases.is_empty(),
        "no fixture case (a folder with config.json) under {}",
        root.display()
    );
    cases
}

/// Asserts that `result` failed and that its message contains every one of `needles`.
#[track_caller]
fn assert_err_mentions<T: std::fmt::Debug>(
    result: Result<T, ModelError>,
    needles: &[&str],
) -> String {
    let message = result.expect_err("expected an error").to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "error message {message:?} does not mention {needle:?}"
        );
    }
    message
}

/// A small valid config.json as `transformers` 5 writes it: H 8, I 12, 1 layer, 2 heads of 4,
/// 1 KV head, V 10.
fn small_config_json() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "intermediate_size": 12,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "vocab_size": 10,
        "max_position_embeddings": 32,
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "attention_bias": false,
        "mlp_bias": false,
        "dtype": "float32"
    })
}

fn small_config() -> LlamaConfig {
    LlamaConfig::from_json_value(&small_config_json(), None).expect("small config parses")
}

/// Writes `value` as `dir/config.json` and loads it.
fn load_config(dir: &Path, value: &Value) -> Result<LlamaConfig, ModelError> {
    fs::write(dir.join("config.json"), value.to_string()).unwrap();
    LlamaConfig::from_dir(dir)
}

/// Owned tensors `(name, shape, data)`; the data is a deterministic function of the position.
type Owned = Vec<(String, Vec<usize>, Vec<f32>)>;

fn llama_tensors(config: &LlamaConfig) -> Owned {
    llama_tensor_shapes(config)
        .into_iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let n: usize = shape.iter().product();
            let data = (0..n)
                .map(|i| ((i * 7 + t * 13) % 23) as f32 * 0.37 - 4.0)
                .collect();
            (name, shape, data)
        })
        .collect()
}

/// Borrows owned tensors in the form the writers take.
fn borrowed(tensors: &Owned) -> Vec<(String, Vec<usize>, &[f32])> {
    tensors
        .iter()
        .map(|(name, shape, data)| (name.clone(), shape.clone(), data.as_slice()))
        .collect()
}

/// Writes `tensors` as `dir/model.safetensors` next to the small config.json.
fn write_small_model(dir: &Path, tensors: &Owned) {
    fs::write(dir.join("config.json"), small_config_json().to_string()).unwrap();
    write_safetensors(dir.join(WEIGHTS_FILE), &borrowed(tensors), &[]).unwrap();
}

fn remove(tensors: &mut Owned, name: &str) {
    tensors.retain(|(n, _, _)| n != name);
}

/// Names of the files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

#[test]
fn tiny_llama_config_has_the_fixture_values() {
    let dir = fixtures_root().join("tiny-llama");
    if !dir.is_dir() && std::env::var_os("HYDRALORA_FIXTURES").is_some() {
        eprintln!("skipped: no tiny-llama case under $HYDRALORA_FIXTURES");
        return;
    }
    let config = LlamaConfig::from_dir(&dir).unwrap();
    assert_eq!(config.hidden_size, 64);
    assert_eq!(config.intermediate_size, 160);
    assert_eq!(config.num_hidden_layers, 2);
    assert_eq!(config.num_attention_heads, 4);
    assert_eq!(config.num_key_value_heads, 2);
    assert_eq!(config.head_dim, Some(16));
    assert_eq!(config.head_dim(), 16);
    assert_eq!(config.vocab_size, 96);
    assert_eq!(config.max_position_embeddings, 128);
    assert_eq!(config.rms_norm_eps, 1e-5);
    assert_eq!(config.rope_theta, 10000.0);
    assert_eq!(config.rope_scaling, None);
    assert!(!config.tie_word_embeddings);
    assert_eq!(config.bos_token_id, Some(1));
    assert_eq!(config.eos_token_ids, vec![2]);

    let generation = GenerationConfig::from_dir(&dir).unwrap();
    assert_eq!(generation.bos_token_id, Some(1));
    assert_eq!(generation.eos_token_ids, vec![2]);
    assert_eq!(generation.max_new_tokens, None);

    // Default RoPE: inv_freq[i] = 10000^(-2i/16).
    let inv_freq = config.inv_freq();
    assert_eq!(inv_freq.len(), 8);
    for (i, f) in inv_freq.iter().enumerate() {
        let want = 10000f64.powf(-(2.0 * i as f64) / 16.0);
        assert!(
            (f - want).abs() <= 1e-15 * want,
            "inv_freq[{i}] = {f}, want {want}"
        );
    }
}

#[test]
fn every_fixture_case_has_every_llama_tensor_with_its_shape() {
    for case in fixture_cases() {
        let config = LlamaConfig::from_dir(&case).unwrap();
        GenerationConfig::from_dir(&case).unwrap();
        let weights = ModelWeights::open(&case).unwrap();
        weights.check_llama(&config).unwrap();
        for (name, shape) in llama_tensor_shapes(&config) {
            let values = weights.expect_f32(&name, &shape).unwrap();
            assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{name} in {} has non-finite values",
                case.display()
            );
        }
    }
}

#[test]
fn fixture_expected_files_hold_i32_ids_and_f32_logits() {
    for case in fixture_cases() {
        let path = case.join("expected.safetensors");
        if !path.is_file() {
            continue;
        }
        let config = LlamaConfig::from_dir(&case).unwrap();
        let expected = WeightFile::open(&path).unwrap();
        let (ids_shape, ids) = expected.read_i32("input_ids").unwrap();
        assert_eq!(ids_shape.len(), 2, "input_ids is [B, T]");
        assert!(ids
            .iter()
            .all(|&id| id >= 0 && (id as usize) < config.vocab_size));
        let (labels_shape, _) = expected.read_i32("labels").unwrap();
        assert_eq!(labels_shape, ids_shape);
        let (logits_shape, _) = expected.read_f32("logits").unwrap();
        assert_eq!(
            logits_shape,
            [ids_shape[0], ids_shape[1], config.vocab_size]
        );
        // Token ids are not floats, and logits are not token ids.
        assert_err_mentions(
            expected.read_f32("input_ids"),
            &["input_ids", "I32", "expected.safetensors"],
        );
        assert_err_mentions(
            expected.read_i32("logits"),
            &["logits", "F32", "expected.safetensors"],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

#[test]
fn config_defaults_and_eos_lists() {
    let mut value = small_config_json();
    let map = value.as_object_mut().unwrap();
    map.remove("num_key_value_heads");
    map.remove("rope_parameters");
    map.remove("tie_word_embeddings");
    map.insert("eos_token_id".into(), json!([2, 7]));
    let config = LlamaConfig::from_json_value(&value, None).unwrap();
    config.validate().unwrap();
    assert_eq!(
        config.num_key_value_heads, 2,
        "defaults to num_attention_heads"
    );
    assert_eq!(
        config.head_dim(),
        4,
        "defaults to hidden_size / num_attention_heads"
    );
    assert_eq!(config.rope_theta, 10000.0);
    assert!(!config.tie_word_embeddings);
    assert_eq!(config.eos_token_ids, vec![2, 7]);
}

#[test]
fn config_round_trips_through_to_json() {
    let dir = TempDir::new().unwrap();
    let mut config = small_config();
    config.eos_token_ids = vec![2, 5];
    config.rope_scaling = Some(Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    });
    fs::write(dir.path().join("config.json"), config.to_json_string()).unwrap();
    let reread = LlamaConfig::from_dir(dir.path()).unwrap();
    // to_json writes the resolved head_dim.
    assert_eq!(
        reread,
        LlamaConfig {
            head_dim: Some(4),
            ..config.clone()
        }
    );

    let written = config.to_json();
    assert_eq!(written["architectures"], json!(["LlamaForCausalLM"]));
    assert_eq!(written["model_type"], "llama");
    assert_eq!(written["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(written["rope_parameters"]["rope_type"], "llama3");
    assert_eq!(written["rope_parameters"]["rope_theta"], 10000.0);
}

#[test]
fn config_errors_name_the_file_and_the_field() {
    let dir = TempDir::new().unwrap();
    let with = |field: &str, value: Value| {
        let mut config = small_config_json();
        config[field] = value;
        config
    };
    let cases: Vec<(Value, Vec<&str>)> = vec![
        // 3 heads do not divide a width of 8 (and no head_dim is given).
        (
            with("num_attention_heads", json!(3)),
            vec!["num_attention_heads", "hidden_size 8"],
        ),
        (
            with("hidden_act", json!("gelu")),
            vec!["hidden_act", "gelu"],
        ),
        (
            with(
                "rope_parameters",
                json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}),
            ),
            vec!["rope_parameters.rope_type", "yarn"],
        ),
        (
            with("rope_scaling", json!({"type": "linear", "factor": 2.0})),
            vec!["rope_scaling.type", "linear"],
        ),
        (
            with(
                "rope_parameters",
                json!({"rope_type": "llama3", "factor": 8.0}),
            ),
            vec!["rope_parameters.low_freq_factor", "missing"],
        ),
        (with("attention_bias", json!(true)), vec!["attention_bias"]),
        (with("mlp_bias", json!(true)), vec!["mlp_bias"]),
        (
            with("num_key_value_heads", json!(3)),
            vec!["num_key_value_heads", "num_attention_heads 2"],
        ),
        (with("head_dim", json!(5)), vec!["head_dim", "even"]),
        (with("rms_norm_eps", json!(0.0)), vec!["rms_norm_eps"]),
        (
            with("vocab_size", json!(0)),
            vec!["vocab_size", "greater than 0"],
        ),
        (
            with("hidden_size", json!("wide")),
            vec!["hidden_size", "wide"],
        ),
        (
            with("eos_token_id", json!([2, -1])),
            vec!["eos_token_id", "-1"],
        ),
        (
            with("rope_theta", json!(500000.0)),
            vec!["rope_theta", "disagrees"],
        ),
    ];
    for (config, needles) in cases {
        let mut needles = needles;
        needles.push("config.json");
        assert_err_mentions(load_config(dir.path(), &config), &needles);
    }

    let mut missing = small_config_json();
    missing.as_object_mut().unwrap().remove("vocab_size");
    assert_err_mentions(
        load_config(dir.path(), &missing),
        &["vocab_size", "missing", "config.json"],
    );
}

#[test]
fn invalid_json_names_the_file_line_and_column() {
    let dir = TempDir::new().unwrap();
    fs::write(
        dir.path().join("config.json"),
        "{\n  \"hidden_size\": 8,\n  oops\n}",
    )
    .unwrap();
    let message = assert_err_mentions(
        LlamaConfig::from_dir(dir.path()),
        &["config.json", "line 3", "column 3"],
    );
    assert_eq!(
        message.matches("line 3").count(),
        1,
        "position given twice: {message}"
    );

    fs::write(dir.path().join("generation_config.json"), "[1, 2]").unwrap();
    assert_err_mentions(
        GenerationConfig::from_dir(dir.path()),
        &["generation_config.json", "object"],
    );

    assert_err_mentions(
        LlamaConfig::from_dir(dir.path().join("nowhere")),
        &["nowhere", "config.json"],
    );
}

#[test]
fn generation_config_is_optional_and_reads_every_field() {
    let dir = TempDir::new().unwrap();
    assert_eq!(
        GenerationConfig::from_dir(dir.path()).unwrap(),
        GenerationConfig::default()
    );
    let text = json!({
        "bos_token_id": 128000, "eos_token_id": [128001, 128009], "max_new_tokens": 64,
        "temperature": 0.6, "top_p": 0.9, "top_k": 50, "do_sample": true
    });
    fs::write(dir.path().join("generation_config.json"), text.to_string()).unwrap();
    let generation = GenerationConfig::from_dir(dir.path()).unwrap();
    assert_eq!(
        generation,
        GenerationConfig {
            bos_token_id: Some(128000),
            eos_token_ids: vec![128001, 128009],
            max_new_tokens: Some(64),
            temperature: Some(0.6),
            top_p: Some(0.9),
            top_k: Some(50),
            do_sample: Some(true),
        }
    );
    fs::write(
        dir.path().join("generation_config.json"),
        r#"{"top_k": 1.5}"#,
    )
    .unwrap();
    assert_err_mentions(
        GenerationConfig::from_dir(dir.path()),
        &["top_k", "1.5", "generation_config.json"],
    );
}

/// Llama 3 RoPE scaling, `head_dim` 8, theta 500000, factor 8, low 1, high 4, original 8192,
/// worked by hand from `transformers`' `_compute_llama3_parameters`:
///
/// - `inv_freq[i] = 500000^(-2i/8)`: 1, 0.03760603093086393, 0.001414213562373095,
///   5.318295896944989e-5; `wavelen = 2*pi / inv_freq`: 6.28, 167.08, 4442.88, 118142.83;
/// - `low_freq_wavelen = 8192 / 1 = 8192`, `high_freq_wavelen = 8192 / 4 = 2048`;
/// - i = 0, 1: wavelen < 2048, kept;
/// - i = 3: wavelen > 8192, divided by 8: 6.647869871181236e-6;
/// - i = 2: between, `smooth = (8192 / 4442.882938158366 - 1) / (4 - 1) = 0.28128260516325104`,
///   `(1 - smooth) * inv / 8 + smooth * inv = 5.248461609929547e-4`.
const LLAMA3_INV_FREQ: [f64; 4] = [
    1.0,
    0.03760603093086393,
    5.248461609929547e-4,
    6.647869871181236e-6,
];

#[test]
fn llama3_inv_freq_matches_the_hand_computed_values() {
    let dir = TempDir::new().unwrap();
    let llama3 = json!({
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
    });
    let mut v5 = small_config_json();
    v5["head_dim"] = json!(8);
    v5["rope_parameters"] = llama3;
    // The same settings in the transformers 4 layout.
    let mut v4 = v5.clone();
    v4.as_object_mut().unwrap().remove("rope_parameters");
    v4["rope_theta"] = json!(500000);
    v4["rope_scaling"] = json!({
        "type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
        "original_max_position_embeddings": 8192
    });
    for layout in [v5, v4] {
        let config = load_config(dir.path(), &layout).unwrap();
        let inv_freq = config.inv_freq();
        assert_eq!(inv_freq.len(), 4);
        for (i, (got, want)) in inv_freq.iter().zip(LLAMA3_INV_FREQ).enumerate() {
            assert!(
                (got - want).abs() <= 1e-14 * want,
                "inv_freq[{i}] = {got}, want {want}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Weight files
// ---------------------------------------------------------------------------------------------

#[test]
fn written_weights_read_back_exactly() {
    let dir = TempDir::new().unwrap();
    let config = small_config();
    let tensors = llama_tensors(&config);
    save_model_folder(dir.path(), &config, &borrowed(&tensors)).unwrap();
    assert_eq!(listing(dir.path()), ["config.json", "model.safetensors"]);

    let reread = LlamaConfig::from_dir(dir.path()).unwrap();
    assert_eq!(
        reread,
        LlamaConfig {
            head_dim: Some(4),
            ..config.clone()
        }
    );
    let weights = ModelWeights::open(dir.path()).unwrap();
    weights.check_llama(&config).unwrap();
    assert_eq!(weights.len(), tensors.len());
    for (name, shape, data) in &tensors {
        assert_eq!(weights.dtype(name), Some(Dtype::F32));
        assert_eq!(&weights.expect_f32(name, shape).unwrap(), data, "{name}");
    }
    let file = &weights.files()[0];
    assert_eq!(
        file.metadata().get("format").map(String::as_str),
        Some("pt")
    );
}

#[test]
fn a_missing_tensor_is_named_with_the_file_and_its_shape() {
    let dir = TempDir::new().unwrap();
    let mut tensors = llama_tensors(&small_config());
    remove(&mut tensors, "model.layers.0.mlp.up_proj.weight");
    write_small_model(dir.path(), &tensors);
    let weights = ModelWeights::open(dir.path()).unwrap();
    assert_err_mentions(
        weights.check_llama(&small_config()),
        &[
            "model.layers.0.mlp.up_proj.weight",
            "model.safetensors",
            "[12, 8]",
        ],
    );
    assert_err_mentions(
        weights.read_f32("model.layers.0.mlp.up_proj.weight"),
        &[
            "model.layers.0.mlp.up_proj.weight",
            "missing",
            "model.safetensors",
        ],
    );
    // Saving refuses it before writing anything.
    let out = TempDir::new().unwrap();
    assert_err_mentions(
        save_model_folder(out.path(), &small_config(), &borrowed(&tensors)),
        &["model.layers.0.mlp.up_proj.weight"],
    );
    assert!(listing(out.path()).is_empty());
}

#[test]
fn a_misshaped_tensor_is_named_with_both_shapes() {
    let dir = TempDir::new().unwrap();
    let mut tensors = llama_tensors(&small_config());
    let k_proj = tensors
        .iter_mut()
        .find(|(n, _, _)| n == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    // k_proj should be [num_key_value_heads * head_dim, H] = [4, 8]; store [8, 8].
    k_proj.1 = vec![8, 8];
    k_proj.2 = vec![0.5; 64];
    write_small_model(dir.path(), &tensors);
    let weights = ModelWeights::open(dir.path()).unwrap();
    let needles = [
        "model.layers.0.self_attn.k_proj.weight",
        "model.safetensors",
        "[8, 8]",
        "[4, 8]",
    ];
    assert_err_mentions(weights.check_llama(&small_config()), &needles);
    assert_err_mentions(
        weights.expect_f32("model.layers.0.self_attn.k_proj.weight", &[4, 8]),
        &needles,
    );
}

#[test]
fn an_unexpected_tensor_is_named_but_rotary_buffers_are_ignored() {
    let dir = TempDir::new().unwrap();
    let mut tensors = llama_tensors(&small_config());
    tensors.push((
        "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        vec![2],
        vec![1.0, 0.01],
    ));
    write_small_model(dir.path(), &tensors);
    ModelWeights::open(dir.path())
        .unwrap()
        .check_llama(&small_config())
        .unwrap();

    tensors.push((
        "model.layers.0.self_attn.q_proj.bias".into(),
        vec![8],
        vec![0.0; 8],
    ));
    write_small_model(dir.path(), &tensors);
    assert_err_mentions(
        ModelWeights::open(dir.path())
            .unwrap()
            .check_llama(&small_config()),
        &[
            "unexpected",
            "model.layers.0.self_attn.q_proj.bias",
            "[8]",
            "model.safetensors",
        ],
    );
}

#[test]
fn a_tied_model_needs_no_lm_head_but_may_carry_one() {
    let dir = TempDir::new().unwrap();
    let mut config = small_config();
    config.tie_word_embeddings = true;
    let mut tensors = llama_tensors(&small_config());
    assert!(llama_tensor_shapes(&config)
        .iter()
        .all(|(n, _)| n != "lm_head.weight"));
    save_model_folder(dir.path(), &config, &borrowed(&tensors)).unwrap();
    ModelWeights::open(dir.path())
        .unwrap()
        .check_llama(&config)
        .unwrap();
    remove(&mut tensors, "lm_head.weight");
    save_model_folder(dir.path(), &config, &borrowed(&tensors)).unwrap();
    ModelWeights::open(dir.path())
        .unwrap()
        .check_llama(&config)
        .unwrap();
}

#[test]
fn a_truncated_file_is_a_header_error_naming_the_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join(WEIGHTS_FILE);
    write_safetensors(&path, &borrowed(&llama_tensors(&small_config())), &[]).unwrap();
    let whole = fs::read(&path).unwrap();
    for keep in [whole.len() - 1, whole.len() / 2, 20, 4, 0] {
        fs::write(&path, &whole[..keep]).unwrap();
        assert_err_mentions(
            WeightFile::open(&path),
            &["model.safetensors", "not a valid safetensors file"],
        );
        assert_err_mentions(ModelWeights::open(dir.path()), &["model.safetensors"]);
    }
}

#[test]
fn a_folder_without_weights_is_an_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().display().to_string();
    assert_err_mentions(
        ModelWeights::open(dir.path()),
        &[&folder, "model.safetensors"],
    );
}

/// Writes one tensor in a given dtype with the safetensors crate.
fn write_raw(path: &Path, name: &str, dtype: Dtype, shape: &[usize], bytes: &[u8]) {
    let view = TensorView::new(dtype, shape.to_vec(), bytes).unwrap();
    safetensors::serialize_to_file([(name, view)], None, path).unwrap();
}

#[test]
fn bf16_and_f16_read_as_f32_within_their_precision() {
    let dir = TempDir::new().unwrap();
    let values: Vec<f32> = (0..48)
        .map(|i| (i as f32 - 20.0) * 0.731 + 1e-3 * i as f32)
        .collect();
    let shape = [6, 8];

    // bf16 keeps 8 significant bits: round-to-nearest is off by at most 2^-8 relative.
    let bf16: Vec<u8> = values
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let path = dir.path().join("bf16.safetensors");
    write_raw(&path, "w", Dtype::BF16, &shape, &bf16);
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.dtype("w"), Some(Dtype::BF16));
    let read = file.expect_f32("w", &shape).unwrap();
    for (x, y) in values.iter().zip(&read) {
        assert!(
            (x - y).abs() <= x.abs() * 2f32.powi(-8),
            "bf16: {x} read as {y}"
        );
        assert_eq!(*y, half::bf16::from_f32(*x).to_f32());
    }

    // f16 keeps 11 significant bits: off by at most 2^-11 relative in its normal range.
    let f16: Vec<u8> = values
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let path = dir.path().join("f16.safetensors");
    write_raw(&path, "w", Dtype::F16, &shape, &f16);
    let read = WeightFile::open(&path)
        .unwrap()
        .expect_f32("w", &shape)
        .unwrap();
    for (x, y) in values.iter().zip(&read) {
        assert!(
            (x - y).abs() <= x.abs() * 2f32.powi(-11),
            "f16: {x} read as {y}"
        );
    }
}

#[test]
fn bf16_weights_pass_the_llama_check() {
    let dir = TempDir::new().unwrap();
    let config = small_config();
    let tensors = llama_tensors(&config);
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let bytes = data
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect();
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(&str, TensorView)> = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.as_str(),
                TensorView::new(Dtype::BF16, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join(WEIGHTS_FILE)).unwrap();
    let weights = ModelWeights::open(dir.path()).unwrap();
    weights.check_llama(&config).unwrap();
    for (name, shape, data) in &tensors {
        let read = weights.expect_f32(name, shape).unwrap();
        for (x, y) in data.iter().zip(&read) {
            assert_eq!(*y, half::bf16::from_f32(*x).to_f32(), "{name}");
            assert!(
                (x - y).abs() <= x.abs() * 2f32.powi(-8),
                "{name}: {x} read as {y}"
            );
        }
    }
}

#[test]
fn an_unsupported_dtype_names_the_tensor_and_the_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("ints.safetensors");
    let bytes: Vec<u8> = [3i64, -4].iter().flat_map(|x| x.to_le_bytes()).collect();
    write_raw(&path, "positions", Dtype::I64, &[2], &bytes);
    let file = WeightFile::open(&path).unwrap();
    assert_err_mentions(
        file.read_f32("positions"),
        &["positions", "ints.safetensors", "I64", "F32, F16, BF16"],
    );
    assert_err_mentions(
        file.read_i32("positions"),
        &["positions", "ints.safetensors", "I64"],
    );
}

#[test]
fn i32_tensors_read_back() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("expected.safetensors");
    let ids = [5i32, -100, 7, 0, 1, 2];
    let bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_raw(&path, "labels", Dtype::I32, &[2, 3], &bytes);
    let (shape, read) = WeightFile::open(&path).unwrap().read_i32("labels").unwrap();
    assert_eq!(shape, [2, 3]);
    assert_eq!(read, ids);
}

/// Writes the small model as two shards and an index; returns the tensors.
fn write_sharded(dir: &Path) -> Owned {
    let tensors = llama_tensors(&small_config());
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let shards = [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ];
    let mut weight_map = serde_json::Map::new();
    for (file, part) in shards {
        let part: Owned = part.to_vec();
        write_safetensors(dir.join(file), &borrowed(&part), &[]).unwrap();
        for (name, _, _) in &part {
            weight_map.insert(name.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    fs::write(dir.join(WEIGHTS_INDEX_FILE), index.to_string()).unwrap();
    fs::write(dir.join("config.json"), small_config_json().to_string()).unwrap();
    tensors
}

#[test]
fn sharded_weights_load_through_its_index() {
    let dir = TempDir::new().unwrap();
    let tensors = write_sharded(dir.path());
    let weights = ModelWeights::open(dir.path()).unwrap();
    assert_eq!(weights.files().len(), 2);
    assert!(weights.source().ends_with(WEIGHTS_INDEX_FILE));
    weights.check_llama(&small_config()).unwrap();
    for (name, shape, data) in &tensors {
        assert_eq!(&weights.expect_f32(name, shape).unwrap(), data, "{name}");
    }
    // The last tensor lives in the second shard, and errors about it name that shard.
    let (last, _, _) = tensors.last().unwrap();
    assert!(weights
        .file_of(last)
        .unwrap()
        .path()
        .ends_with("model-00002-of-00002.safetensors"));
    assert_err_mentions(
        weights.expect_f32(last, &[1, 2, 3]),
        &[last.as_str(), "model-00002-of-00002.safetensors"],
    );
    assert_err_mentions(weights.read_f32("nope"), &["nope", WEIGHTS_INDEX_FILE]);
}

#[test]
fn a_broken_index_names_the_shard_or_the_index() {
    let dir = TempDir::new().unwrap();
    write_sharded(dir.path());
    let index_path = dir.path().join(WEIGHTS_INDEX_FILE);
    let index: Value = serde_json::from_str(&fs::read_to_string(&index_path).unwrap()).unwrap();

    // A tensor the index puts in a shard that does not hold it.
    let mut wrong = index.clone();
    wrong["weight_map"]["model.norm.weight"] = json!("model-00001-of-00002.safetensors");
    fs::write(&index_path, wrong.to_string()).unwrap();
    assert_err_mentions(
        ModelWeights::open(dir.path()),
        &[
            "model.norm.weight",
            "missing",
            "model-00001-of-00002.safetensors",
        ],
    );

    // A shard outside the folder.
    let mut outside = index.clone();
    outside["weight_map"]["model.norm.weight"] = json!("../model.safetensors");
    fs::write(&index_path, outside.to_string()).unwrap();
    assert_err_mentions(
        ModelWeights::open(dir.path()),
        &[WEIGHTS_INDEX_FILE, "../model.safetensors"],
    );

    // A shard that is not there.
    let mut absent = index.clone();
    absent["weight_map"]["model.norm.weight"] = json!("model-00003-of-00002.safetensors");
    fs::write(&index_path, absent.to_string()).unwrap();
    assert_err_mentions(
        ModelWeights::open(dir.path()),
        &["model-00003-of-00002.safetensors"],
    );

    // A tensor in a shard that the index does not list.
    let mut unlisted = index.clone();
    unlisted["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("model.norm.weight");
    fs::write(&index_path, unlisted.to_string()).unwrap();
    assert_err_mentions(
        ModelWeights::open(dir.path()),
        &["model.norm.weight", WEIGHTS_INDEX_FILE],
    );

    fs::write(&index_path, r#"{"metadata": {}}"#).unwrap();
    assert_err_mentions(
        ModelWeights::open(dir.path()),
        &["weight_map", WEIGHTS_INDEX_FILE],
    );
}

// ---------------------------------------------------------------------------------------------
// Atomic writes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_failed_write_leaves_the_previous_file_and_no_temporary_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("adapter.safetensors");
    let data = [1.0f32, 2.0, 3.0];
    write_safetensors(&path, &[("a".into(), vec![3], &data[..])], &[("step", "1")]).unwrap();
    let before = fs::read(&path).unwrap();

    // The writer fails halfway through.
    let failed = write_atomically(&path, |out| {
        std::io::Write::write_all(out, b"half a file")?;
        Err(std::io::Error::other("disk full (simulated)"))
    });
    assert_err_mentions(failed, &["disk full (simulated)", "adapter.safetensors"]);
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(listing(dir.path()), ["adapter.safetensors"]);

    // Inconsistent tensors are refused before anything is written.
    let bad = [("a".to_string(), vec![2, 2], &data[..])];
    assert_err_mentions(
        write_safetensors(&path, &bad, &[]),
        &["`a`", "3 values", "[2, 2] holds 4", "adapter.safetensors"],
    );
    let twice = [
        ("a".to_string(), vec![3], &data[..]),
        ("a".to_string(), vec![3], &data[..]),
    ];
    assert_err_mentions(write_safetensors(&path, &twice, &[]), &["`a`", "twice"]);
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(listing(dir.path()), ["adapter.safetensors"]);

    // A successful rewrite replaces the file and leaves nothing else.
    write_safetensors(&path, &[("a".into(), vec![3], &[4.0, 5.0, 6.0][..])], &[]).unwrap();
    assert_eq!(listing(dir.path()), ["adapter.safetensors"]);
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.read_f32("a").unwrap(), (vec![3], vec![4.0, 5.0, 6.0]));
}

#[test]
fn written_metadata_is_kept() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("x.safetensors");
    write_safetensors(
        &path,
        &[("b".into(), vec![1], &[1.5][..])],
        &[("step", "42")],
    )
    .unwrap();
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(
        file.metadata().get("format").map(String::as_str),
        Some("pt")
    );
    assert_eq!(file.metadata().get("step").map(String::as_str), Some("42"));
    // The safetensors crate reads what we wrote.
    let bytes = fs::read(&path).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(parsed.tensor("b").unwrap().data(), 1.5f32.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

/// A Llama-2 style `tokenizer.json`: BPE with byte fallback, `▁` for spaces. Ids: `<unk>` 0,
/// `<s>` 1, `</s>` 2, `<0x00>`..`<0xFF>` 3..=258, then `▁` `h` `e` `l` `o` `w` `r` `d` `▁h`
/// `ll` `▁he` from 259 on.
fn llama2_tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for (id, token) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(token.to_string(), json!(id));
    }
    for byte in 0..=255u32 {
        vocab.insert(format!("<0x{byte:02X}>"), json!(3 + byte));
    }
    for (i, token) in ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he"]
        .iter()
        .enumerate()
    {
        vocab.insert(token.to_string(), json!(259 + i));
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab,
            "merges": ["▁ h", "l l", "▁h e"]
        }
    })
}

fn load_tokenizer(dir: &Path, bos: Option<u32>) -> Tokenizer {
    let path = dir.join("tokenizer.json");
    fs::write(&path, llama2_tokenizer_json().to_string()).unwrap();
    Tokenizer::from_file(&path, bos).unwrap()
}

#[test]
fn tokenizer_encodes_with_bos_and_decodes_back() {
    let dir = TempDir::new().unwrap();
    let tokenizer = load_tokenizer(dir.path(), Some(1));
    assert_eq!(tokenizer.vocab_size(), 270);
    assert_eq!(tokenizer.token_to_id("</s>"), Some(2));
    // "hello é" -> "▁hello▁é": ▁he, ll, o, ▁, then é's two UTF-8 bytes C3 A9 as byte tokens.
    let (c3, a9) = (3 + 0xC3, 3 + 0xA9);
    let ids = tokenizer.encode("hello é", true).unwrap();
    assert_eq!(ids, [1, 269, 268, 263, 259, c3, a9]);
    assert_eq!(tokenizer.encode("hello é", false).unwrap(), ids[1..]);
    assert_eq!(tokenizer.decode(&ids).unwrap(), "hello é");
}

#[test]
fn decode_stream_returns_whole_characters() {
    let dir = TempDir::new().unwrap();
    let tokenizer = load_tokenizer(dir.path(), Some(1));
    let ids = tokenizer.encode("hello é hello", true).unwrap();
    let mut stream = tokenizer.decode_stream();
    let pieces: Vec<Option<String>> = ids.iter().map(|&id| stream.step(id).unwrap()).collect();
    let text: String = pieces.iter().flatten().map(String::as_str).collect();
    assert_eq!(text, "hello é hello");
    // The first byte of "é" alone is no text; the second completes the character.
    let c3 = ids.iter().position(|&id| id == 3 + 0xC3).unwrap();
    assert_eq!(pieces[c3], None);
    assert_eq!(pieces[c3 + 1].as_deref(), Some("é"));
    // BOS is a special token and adds no text.
    assert_eq!(pieces[0], None);
}

#[test]
fn tokenizer_errors_name_the_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("tokenizer.json");
    assert_err_mentions(Tokenizer::from_file(&path, None), &["tokenizer.json"]);
    fs::write(&path, r#"{"model": 3}"#).unwrap();
    assert_err_mentions(Tokenizer::from_file(&path, None), &["tokenizer.json"]);
    let tokenizer = load_tokenizer(dir.path(), None);
    assert_err_mentions(tokenizer.encode("hello", true), &["tokenizer.json", "BOS"]);
}
