//! Frozen weights stored as f16: every matmul kernel widens them exactly and accumulates in
//! f32 (the kernel-by-kernel cases are in matmul_variants.rs; here, random shapes); a model
//! with f16 weights keeps its logits close and trains its adapter; the weights take half
//! the memory.

mod common;

use half::f16;
use hydralora::engine::ops::matmul::{
    matmul_accumulate, matmul_accumulate_with, matmul_with, subgroups_of_8, MatmulKernel,
    MatmulVariant,
};
use hydralora::engine::{matmul_t, no_grad, DType, Error, Tensor};
use hydralora::model::adapter::{attach, AdapterConfig};
use hydralora::model::train::{TrainSettings, Trainer};
use hydralora::model::verify::max_abs_error;
use hydralora::model::Llama;
use proptest::prelude::*;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");

/// The dims of a product: any small size, or a multiple of 4 (the subgroup kernel's vec4
/// loads), about half the time each.
fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..40, (1usize..10).prop_map(|x| 4 * x)]
}

/// Whether the subgroup kernel takes op(A) [m, k] x op(B) [k, n]: N and the contiguous dim
/// of each operand multiples of 4, K too unless the product is A^T B.
fn subgroup_aligned([m, k, n]: [usize; 3], ta: bool, tb: bool) -> bool {
    n % 4 == 0 && (!ta || m % 4 == 0) && (k % 4 == 0 || (ta && !tb))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// op(A) op(B) with B in f16 equals the f64 product with B's f16 values (widening is
    /// exact), on every kernel (or the automatic choice), split or not, written or summed
    /// into a prior C. Bound: a K-term f32 dot product in any order is within
    /// gamma_{K+1} sum |a b| of the exact value (gamma_n = n u / (1 - n u)); summing into C
    /// adds one rounding, u |C|.
    #[test]
    fn matmul_with_f16_weights(
        m in dim(), k in dim(), n in dim(), ta in any::<bool>(), tb in any::<bool>(),
        batch in 1usize..3, kernel in 0usize..4, splits in 1usize..4, summed in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let dev = common::device();
        let a = common::values(batch * m * k, -1.0, 1.0, seed);
        let b16: Vec<f16> = common::values(k * n, -1.0, 1.0, seed + 1).iter().map(|&x| f16::from_f32(x)).collect();
        let b32: Vec<f32> = b16.iter().map(|h| h.to_f32()).collect();
        let a_shape = if ta { [batch, k, m] } else { [batch, m, k] };
        let ta_t = Tensor::from_slice(&dev, &a, &a_shape).unwrap();
        let b_shape = if tb { [n, k] } else { [k, n] };
        let bt = Tensor::from_f16(&dev, &b16, &b_shape).unwrap();
        prop_assert_eq!(bt.dtype(), DType::F16);
        // None: the automatic choice.
        let variant = MatmulKernel::ALL.get(kernel).map(|&k| MatmulVariant::new(k, splits));
        let prior = common::values(batch * m * n, -1.0, 1.0, seed + 2);
        let c = match (variant, summed) {
            (None, false) => matmul_t(&ta_t, &bt, ta, tb),
            (None, true) => no_grad(|| matmul_accumulate(common::tensor(&prior, &[batch, m, n]), &ta_t, &bt, ta, tb)),
            (Some(v), false) => matmul_with(&ta_t, &bt, ta, tb, v),
            (Some(v), true) => no_grad(|| matmul_accumulate_with(common::tensor(&prior, &[batch, m, n]), &ta_t, &bt, ta, tb, v)),
        };
        let subgroup = variant.is_some_and(|v| v.kernel == MatmulKernel::Subgroup);
        let runs = !subgroup || (subgroups_of_8(&dev) && subgroup_aligned([m, k, n], ta, tb));
        if !runs {
            prop_assert!(matches!(c, Err(Error::Unsupported(_))), "{:?}", c.map(|t| t.shape().to_vec()));
            return Ok(());
        }
        let c = c.unwrap().to_vec_f32().unwrap();
        let product = common::matmul_ref(&a, &b32, batch, m, k, n, ta, tb, true, false);
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
        let magnitude = common::matmul_ref(&abs(&a), &abs(&b32), batch, m, k, n, ta, tb, true, false);
        let nu = (k + 1) as f64 * common::U;
        let gamma = nu / (1.0 - nu) * 1.01;
        let (want, bound): (Vec<f64>, Vec<f64>) = product
            .iter()
            .zip(&magnitude)
            .zip(&prior)
            .map(|((&r, &s), &c0)| match summed {
                false => (r, gamma * s + 1e-30),
                true => (r + c0 as f64, gamma * s + 2.0 * common::U * (r + c0 as f64).abs() + 1e-30),
            })
            .unzip();
        let what = format!("{variant:?} summed {summed} [{m}, {k}, {n}] ta {ta} tb {tb} batch {batch}");
        common::assert_within(&what, &c, &want, &bound);
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
