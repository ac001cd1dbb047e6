//! Frozen bases stored as f16, bf16, q8_0, q4_0, q4_K and q6_K (`Llama::load_as`,
//! `--weights`): a model computes exactly on the weights its storage holds. Each case loads
//! the model in a format, reads every stored weight back dequantized on the host, builds an
//! f32 model from those values (the path the fixtures validate against `transformers`), and
//! checks that both give the same logits, loss and adapter gradients, within the f32
//! reordering of a dot product (the kernels differ only in how they load B). The quantizers
//! themselves are checked against llama.cpp's in `engine/tests/quant.rs`.
//!
//! Also: a bf16 checkpoint stays bf16, byte for byte, and each tensor gets the format
//! `weight_storage` names (norms f32, lm_head q6_k under 4-bit layers, a row that is not
//! whole blocks falling back).

mod common;

use std::collections::HashMap;

use hydralora::engine::{DType, Tensor};
use hydralora::model::adapter::{attach, trainable_params, AdapterConfig};
use hydralora::model::bench::random_model_as;
use hydralora::model::llama::weight_storage;
use hydralora::model::verify::max_abs_error;
use hydralora::model::{Llama, LlamaConfig};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");

const FORMATS: [DType; 6] = [
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4K,
    DType::Q6K,
];

/// A model as wide as K-quant blocks (hidden 256, intermediate 512).
fn wide_config() -> LlamaConfig {
    let json = serde_json::json!({
        "vocab_size": 96, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "tie_word_embeddings": false
    });
    LlamaConfig::from_json_value(&json, None).unwrap()
}

/// The f32 model whose weights are `model`'s stored weights, dequantized on the host.
fn dequantized_twin(model: &Llama) -> Llama {
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    for (name, t) in model.named_weights() {
        values
            .entry(name)
            .or_default()
            .extend(t.to_vec_dequantized().unwrap());
    }
    Llama::from_tensors(model.device(), model.config.clone(), |name, _| {
        Ok(values.remove(name).expect("every weight once"))
    })
    .unwrap()
}

fn ids() -> Vec<u32> {
    (0..24).map(|i| (i * 13 + 1) % 96).collect()
}

/// Loss and the gradients of a LoRA adapter on every target, for the same seed.
fn loss_and_adapter_grads(model: &mut Llama) -> (f32, Vec<Vec<f32>>) {
    attach(
        model,
        &AdapterConfig::lora(4, 8.0, &["q_proj", "down_proj"]),
        7,
    )
    .unwrap();
    let ids = ids();
    let labels: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let loss = model
        .causal_lm_loss(&model.forward(&ids, 2, None).unwrap(), &labels)
        .unwrap();
    let grads = loss.backward().unwrap();
    let params: Vec<Tensor> = trainable_params(model);
    let g = params
        .iter()
        .map(|p| grads.get(p).unwrap().to_vec_f32().unwrap())
        .collect();
    (loss.to_vec_f32().unwrap()[0], g)
}

fn scale(v: &[f32]) -> f64 {
    v.iter().fold(1.0f32, |m, x| m.max(x.abs())) as f64
}

fn check_format(model: Llama, format: DType, what: &str) {
    for (name, t) in model.named_weights() {
        assert_eq!(
            t.dtype(),
            weight_storage(&name, t.shape(), format),
            "{what}: {name}"
        );
    }
    let mut twin = dequantized_twin(&model);
    let ids = ids();
    let a = model.logits(&ids, 2).unwrap().to_vec_f32().unwrap();
    let b = twin.logits(&ids, 2).unwrap().to_vec_f32().unwrap();
    let err = max_abs_error(&a, &b);
    assert!(
        err <= 1e-5 * scale(&b),
        "{what}: logits differ from the dequantized twin's by {err}"
    );
    let mut model = model;
    let (loss_q, grads_q) = loss_and_adapter_grads(&mut model);
    let (loss_t, grads_t) = loss_and_adapter_grads(&mut twin);
    assert!(
        (loss_q - loss_t).abs() <= 1e-5 * loss_t.abs().max(1.0),
        "{what}: loss {loss_q} vs {loss_t}"
    );
    for (i, (q, t)) in grads_q.iter().zip(&grads_t).enumerate() {
        let err = max_abs_error(q, t);
        assert!(
            err <= 1e-4 * scale(t),
            "{what}: adapter gradient {i} differs by {err}"
        );
    }
}

#[test]
fn the_fixture_model_in_every_format_computes_on_its_stored_weights() {
    let dev = common::device();
    for format in FORMATS {
        let model = Llama::load_as(&dev, TINY, Some(format)).unwrap();
        check_format(model, format, &format!("tiny-llama {}", format.name()));
    }
}

#[test]
fn a_k_quant_wide_model_in_every_format_computes_on_its_stored_weights() {
    let dev = common::device();
    for format in FORMATS {
        let model = random_model_as(&dev, &wide_config(), 3, format).unwrap();
        check_format(model, format, &format!("wide {}", format.name()));
    }
}

#[test]
fn each_weight_gets_the_format_it_should() {
    let q4k = |name: &str, shape: &[usize]| weight_storage(name, shape, DType::Q4K);
    assert_eq!(
        q4k("model.layers.0.input_layernorm.weight", &[256]),
        DType::F32
    );
    assert_eq!(
        q4k("model.layers.0.mlp.up_proj.weight", &[512, 256]),
        DType::Q4K
    );
    assert_eq!(q4k("model.embed_tokens.weight", &[96, 256]), DType::Q4K);
    assert_eq!(q4k("lm_head.weight", &[96, 256]), DType::Q6K);
    // Rows of 160: not whole 256-blocks, but whole 32-blocks; rows of 100: neither.
    assert_eq!(
        q4k("model.layers.0.mlp.down_proj.weight", &[64, 160]),
        DType::Q8_0
    );
    assert_eq!(
        q4k("model.layers.0.mlp.down_proj.weight", &[64, 100]),
        DType::F32
    );
    assert_eq!(
        weight_storage(
            "model.layers.0.mlp.down_proj.weight",
            &[64, 100],
            DType::BF16
        ),
        DType::BF16
    );
}

#[test]
fn a_bf16_checkpoint_stays_bf16_byte_for_byte() {
    let dev = common::device();
    let dir = std::env::temp_dir().join(format!("hydralora-test-{}-bf16", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(format!("{TINY}/config.json"), dir.join("config.json")).unwrap();
    let source = hydralora::model::llama::weights::ModelWeights::open(TINY).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in source.names() {
        let (shape, values) = source.read_f32(name).unwrap();
        let bytes = values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        tensors.push((name.to_string(), shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b);
            (n.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();

    let model = Llama::load(&dev, &dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stored: HashMap<&str, &[u8]> = tensors
        .iter()
        .map(|(n, _, b)| (n.as_str(), b.as_slice()))
        .collect();
    for (name, t) in model.named_weights() {
        if name.contains("norm") {
            assert_eq!(t.dtype(), DType::F32, "{name}");
            continue;
        }
        assert_eq!(t.dtype(), DType::BF16, "{name}");
        let file: Vec<f32> = stored[name.as_str()]
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(t.to_vec_dequantized().unwrap(), file, "{name}");
    }
    check_format(model, DType::BF16, "bf16 checkpoint");
}
