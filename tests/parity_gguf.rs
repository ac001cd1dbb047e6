//! GGUF models as llama.cpp writes and quantizes them (`../shared/fixtures-gguf`, or
//! `$HYDRALORA_GGUF_FIXTURES`): our logits and loss against float64 `transformers` on the
//! files' dequantized weights within the usual 1e-4 max(1, max |logit|), and against
//! llama.cpp's own CPU logits at the looser tolerance of its arithmetic (see
//! `verify::LLAMACPP_FLOAT_TOLERANCE`).

mod common;

use hydralora::model::llama::load_codec;
use hydralora::model::verify::{check_base_model, find_cases, gguf_fixtures_root};
use hydralora::model::Llama;

fn fixtures() -> std::path::PathBuf {
    gguf_fixtures_root(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures-gguf"
    ))
}

#[test]
fn gguf_logits_match_transformers_and_llama_cpp() {
    let dev = common::device();
    let mut failures = Vec::new();
    let cases = find_cases(&fixtures()).expect("GGUF fixture cases");
    for case in &cases {
        let checks =
            check_base_model(&dev, case).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        assert!(
            checks.iter().any(|c| c.name.contains("llama.cpp")),
            "{}: no llama.cpp logits checked",
            case.display()
        );
        for check in checks {
            println!("{check}");
            if !check.passed() {
                failures.push(check.to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "checks failed:\n{}",
        failures.join("\n")
    );
}

/// A `.gguf` file path loads the same model as its folder, and its codec is the vocabulary's.
#[test]
fn a_gguf_file_path_loads_with_its_tokenizer() {
    let dev = common::device();
    let case = find_cases(&fixtures()).unwrap().remove(0);
    let file = case.join("model.gguf");
    let model = Llama::load(&dev, &file).unwrap();
    let codec = load_codec(&file, &model.config).unwrap();
    let ids = codec.encode("hello world").unwrap();
    assert!(!ids.is_empty());
    let logits = model.logits(&ids, 1).unwrap();
    assert_eq!(logits.shape(), &[1, ids.len(), 512]);
    let from_folder = Llama::load(&dev, &case).unwrap().logits(&ids, 1).unwrap();
    assert_eq!(
        logits.to_vec_f32().unwrap(),
        from_folder.to_vec_f32().unwrap()
    );
}

/// A Q4_K_M file's weights stay its own blocks on the device: q4_K layers, a q6_K lm_head
/// and layer (llama.cpp's mix), f32 norms.
#[test]
fn quantized_weights_stay_as_the_file_stores_them() {
    use hydralora::engine::DType;
    let dev = common::device();
    let model = Llama::load(&dev, fixtures().join("tiny-q4-k-m")).unwrap();
    assert_eq!(model.layers[0].q_proj.weight.dtype(), DType::Q4K);
    assert_eq!(model.layers[1].down_proj.weight.dtype(), DType::Q6K);
    assert_eq!(model.embed[0].dtype(), DType::Q4K);
    assert_eq!(model.lm_head[0].dtype(), DType::Q6K);
    assert_eq!(model.norm.dtype(), DType::F32);
}
