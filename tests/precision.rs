//! `--precision mixed`: f16 frozen weights and f16-rounded inputs to their products, f32
//! everywhere else. Checked against the fixtures' float64 reference (every case under
//! `../shared/fixtures`, or `$HYDRALORA_FIXTURES`) within `verify::MIXED_TOLERANCE`, the
//! bound derived from f16's unit roundoff; shown to really round (its results differ from
//! the f32 path's, and from f16 weights alone); and the adapter's gradients under it
//! against finite differences.

mod common;

use hydralora::engine::gradcheck::{gradcheck, GradcheckOptions};
use hydralora::engine::{no_grad, DType, Tensor};
use hydralora::model::verify::{
    adapter_dirs, case_inputs, check_adapter_at, check_base_model_at, find_cases, fixtures_root,
};
use hydralora::model::{Adapter, Linear, Llama, Precision};

fn fixtures() -> std::path::PathBuf {
    fixtures_root(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures"))
}

#[test]
fn mixed_precision_matches_the_reference_within_the_f16_tolerance() {
    let dev = common::device();
    let mut failures = Vec::new();
    let mut adapters = 0;
    for case in find_cases(&fixtures()).unwrap() {
        let mut checks = check_base_model_at(&dev, &case, None, Precision::Mixed).unwrap();
        for dir in adapter_dirs(&case).unwrap() {
            adapters += 1;
            checks.extend(check_adapter_at(&dev, &case, &dir, None, Precision::Mixed).unwrap());
        }
        for check in checks {
            println!("{check}");
            if !check.passed() {
                failures.push(check.to_string());
            }
        }
    }
    assert!(adapters > 0, "no adapter folders found under the fixtures");
    assert!(
        failures.is_empty(),
        "checks failed:\n{}",
        failures.join("\n")
    );
}

/// Mixed is not f32 and not f16 weights alone: rounding the products' inputs moves the
/// logits, by far less than the tolerance.
#[test]
fn mixed_precision_rounds_the_products_inputs() {
    let dev = common::device();
    let case = find_cases(&fixtures()).unwrap().remove(0);
    let inputs = case_inputs(&case).unwrap();
    let logits = |model: &Llama| {
        no_grad(|| -> hydralora::model::Result<Vec<f32>> {
            let hidden = model.hidden_states(&inputs.ids, inputs.batch, None)?;
            Ok(model.project_vocab(&hidden)?.to_vec_f32()?)
        })
        .unwrap()
    };
    let f32_logits = logits(&Llama::load(&dev, &case).unwrap());
    let mut model = Llama::load_as(&dev, &case, Some(DType::F16)).unwrap();
    let f16_weights = logits(&model);
    model.set_precision(Precision::Mixed);
    assert_eq!(model.precision(), Precision::Mixed);
    let mixed = logits(&model);
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let (from_f32, from_weights) = (diff(&mixed, &f32_logits), diff(&mixed, &f16_weights));
    println!("mixed vs f32: {from_f32:.3e}; vs f16 weights alone: {from_weights:.3e}");
    assert!(
        from_weights > 1e-6,
        "the inputs were not rounded: {from_weights}"
    );
    assert!(from_f32 < 1e-2, "{from_f32}");
    model.set_precision(Precision::F32);
    assert_eq!(
        logits(&model),
        f16_weights,
        "switching back restores the f32 path"
    );
}

/// The adapter's gradients under mixed precision (its A, router and B are f32 and see the
/// f32 input; the frozen product's input is rounded, a constant for them) against finite
/// differences, with gradcheck's f32 tolerances: the rounding adds no error to them.
#[test]
fn the_adapters_gradients_under_mixed_precision_pass_gradcheck() {
    let dev = common::device();
    let (t, d_in, d_out, r, experts) = (5, 8, 6, 2, 3);
    let mk = |n: usize, seed: u64| common::values(n, -1.0, 1.0, seed);
    let x = Tensor::from_slice(&dev, &mk(t * d_in, 1), &[t, d_in]).unwrap();
    let w = Tensor::from_slice(&dev, &mk(d_out * d_in, 2), &[d_out, d_in])
        .unwrap()
        .to_f16()
        .unwrap();
    let down =
        Tensor::from_slice(&dev, &mk((r + experts) * d_in, 3), &[r + experts, d_in]).unwrap();
    let b = Tensor::from_slice(&dev, &mk(d_out * experts * r, 4), &[d_out, experts * r]).unwrap();
    let layer = |xs: &[Tensor]| {
        let adapter = Adapter {
            down: xs[0].clone(),
            b: xs[1].clone(),
            rank: r,
            routed: true,
            scale: 0.7,
            top_k: None,
            last_gates: Default::default(),
            record_gates: false,
            dropout: Default::default(),
        };
        Linear {
            weight: w.clone(),
            adapter: Some(adapter),
            half_inputs: true,
        }
        .forward(&x)
    };
    let report = gradcheck(layer, &[down, b], &GradcheckOptions::default()).unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(w.dtype(), DType::F16);
}

/// A demo fine-tuning run in mixed precision tracks the f32 run step by step: the demo's
/// trained-from-scratch base is stood in for by a random one of the demo's shape, with the
/// demo's HydraLoRA adapter, data and settings, 20 steps. Each step's loss within
/// MIXED_TOLERANCE (relative) of the f32 run's.
#[test]
fn a_mixed_precision_demo_run_tracks_the_f32_run() {
    use hydralora::model::adapter::attach;
    use hydralora::model::bench::random_model;
    use hydralora::model::data::tokenize;
    use hydralora::model::demo::{
        adapter_pair, demo_codec, demo_config, finetune_examples, finetune_settings, DemoOptions,
    };
    use hydralora::model::train::Trainer;
    use hydralora::model::verify::MIXED_TOLERANCE;
    use hydralora::model::TextCodec;

    let dev = common::device();
    let codec = demo_codec();
    let dir = std::env::temp_dir().join(format!("hydralora-mixed-demo-{}", std::process::id()));
    random_model(&dev, &demo_config(codec.vocab_size()), 5)
        .unwrap()
        .save(&dir)
        .unwrap();
    let (tokens, _) = tokenize(&finetune_examples(50), &codec, 32).unwrap();
    let mut opts = DemoOptions::quick("".into(), "".into());
    opts.finetune_steps = 20;
    opts.batch = 8;
    let curve = |precision: Precision| -> Vec<f32> {
        let frozen = (precision == Precision::Mixed).then_some(DType::F16);
        let mut model = Llama::load_as(&dev, &dir, frozen).unwrap();
        model.set_precision(precision);
        let (_, hydra) = adapter_pair(&model);
        attach(&mut model, &hydra, 1000).unwrap();
        let settings = finetune_settings(&opts, 0);
        let mut trainer = Trainer::new(model, tokens.clone(), codec.pad_id(), settings).unwrap();
        (0..opts.finetune_steps)
            .map(|_| trainer.step().unwrap().loss)
            .collect()
    };
    let (f32_curve, mixed_curve) = (curve(Precision::F32), curve(Precision::Mixed));
    let worst = (f32_curve.iter().zip(&mixed_curve))
        .map(|(a, b)| f64::from((a - b).abs() / a.abs()))
        .fold(0.0, f64::max);
    println!("f32 {f32_curve:?}\nmixed {mixed_curve:?}\nworst relative difference {worst:.3e}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(worst > 0.0, "mixed precision changed nothing");
    assert!(
        worst <= MIXED_TOLERANCE,
        "worst relative difference {worst:.3e}"
    );
    assert!(f32_curve[19] < f32_curve[0] && mixed_curve[19] < mixed_curve[0]);
}
