//! Frozen weights stored as f16: matmul widens them exactly and accumulates in f32; a model
//! with f16 weights keeps its logits close and trains its adapter; the weights take half
//! the memory.

mod common;

use half::f16;
use hydralora::engine::{matmul_t, DType, Tensor};
use hydralora::model::adapter::{attach, AdapterConfig};
use hydralora::model::train::{TrainSettings, Trainer};
use hydralora::model::verify::max_abs_error;
use hydralora::model::Llama;
use proptest::prelude::*;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// A x op(B) with B in f16 equals the f64 product with B's f16 values (widening is
    /// exact), within f32 accumulation error: 1e-5 abs + K u relative to sum |a b|.
    #[test]
    fn matmul_with_f16_weights(m in 1usize..40, k in 1usize..50, n in 1usize..40, tb in any::<bool>(), batch in 1usize..3, seed in 0u64..1000) {
        let dev = common::device();
        let a = common::values(batch * m * k, -1.0, 1.0, seed);
        let b16: Vec<f16> = common::values(k * n, -1.0, 1.0, seed + 1).iter().map(|&x| f16::from_f32(x)).collect();
        let b32: Vec<f32> = b16.iter().map(|h| h.to_f32()).collect();
        let ta = Tensor::from_slice(&dev, &a, &[batch, m, k]).unwrap();
        let tb_shape = if tb { [n, k] } else { [k, n] };
        let bt = Tensor::from_f16(&dev, &b16, &tb_shape).unwrap();
        prop_assert_eq!(bt.dtype(), DType::F16);
        let c = matmul_t(&ta, &bt, false, tb).unwrap().to_vec_f32().unwrap();
        let reference = common::matmul_ref(&a, &b32, batch, m, k, n, false, tb, true, false);
        common::assert_close("f16 matmul", &c, &reference, 1e-5, 4.0 * k as f64 * f32::EPSILON as f64);
    }
}

#[test]
fn a_model_with_f16_weights_keeps_its_logits_and_trains_its_adapter() {
    let dev = common::device();
    let ids: Vec<u32> = (0..22).map(|i| (i * 13 + 1) % 96).collect();
    let full = Llama::load(&dev, TINY).unwrap();
    let reference = full.logits(&ids, 2).unwrap().to_vec_f32().unwrap();
    let bytes = |m: &Llama| -> u64 {
        m.layers
            .iter()
            .flat_map(|l| {
                hydralora::model::TARGET_MODULES
                    .map(|t| l.linear(t).unwrap().weight.size_in_bytes())
            })
            .sum()
    };
    let mut half = Llama::load(&dev, TINY).unwrap();
    let before = bytes(&half);
    half.store_frozen_weights_f16().unwrap();
    assert_eq!(
        bytes(&half) * 2,
        before,
        "the layer weights take half the memory"
    );
    let logits = half.logits(&ids, 2).unwrap().to_vec_f32().unwrap();
    // f16 keeps 11 bits: weights move by 2^-12 relative; the logits by about that much.
    let scale = reference.iter().fold(1.0f32, |m, x| m.max(x.abs())) as f64;
    let err = max_abs_error(&logits, &reference);
    assert!(err > 0.0 && err < 2e-2 * scale, "logits moved by {err}");

    attach(
        &mut half,
        &AdapterConfig::hydra(4, 8.0, 3, &["q_proj", "down_proj"]),
        1,
    )
    .unwrap();
    let examples: Vec<_> = (0..4)
        .map(|i| hydralora::model::data::TokenizedExample {
            ids: ids[i..i + 11].to_vec(),
            labels: ids[i..i + 11].iter().map(|&t| t as i32).collect(),
            category: None,
        })
        .collect();
    let mut trainer = Trainer::new(
        half,
        examples,
        0,
        TrainSettings {
            lr: 1e-2,
            micro_batch: 2,
            total_steps: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let losses: Vec<f32> = (0..8).map(|_| trainer.step().unwrap().loss).collect();
    assert!(
        losses[7] < losses[0],
        "the adapter trains on an f16 base: {losses:?}"
    );
}
