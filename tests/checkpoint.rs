//! Activation checkpointing on the tiny fixture model: a step with every decoder layer
//! checkpointed (recomputed in backward) gives bit for bit the loss and the gradients of the
//! recorded step, for the fixtures' LoRA and HydraLoRA adapters (dropout on, dense and top-k
//! routing; the dropout seed changed before backward) and for full-parameter training; and a
//! training run gives the same losses and weights either way.

mod common;

use std::path::Path;

use hydralora::engine::Tensor;
use hydralora::model::adapter::{load_adapter, set_dropout_seed, trainable_params};
use hydralora::model::train::{TrainSettings, Trainer};
use hydralora::model::Llama;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");

/// The tiny model with a fixture adapter (`lora`, `hydra-3`), dropout 0.1 on every adapter
/// and, when given, top-k routing.
fn adapted(adapter: &str, top_k: Option<usize>) -> Llama {
    let mut model = Llama::load(&common::device(), TINY).unwrap();
    load_adapter(&mut model, &Path::new(TINY).join(adapter)).unwrap();
    for (_, _, a) in model.adapters_mut() {
        a.dropout.p = 0.1;
        a.top_k = top_k;
    }
    model
}

/// The loss and every trainable tensor's gradient (as bits; None without one) of one forward
/// and backward of 3 random sequences of 48 tokens.
fn loss_and_gradients(model: &Llama, params: &[Tensor]) -> Vec<Option<Vec<u32>>> {
    let (batch, seq) = (3, 48);
    let data = common::random_examples(batch, seq, 21, &[]);
    let ids: Vec<u32> = data.iter().flat_map(|e| e.ids.clone()).collect();
    let labels: Vec<i32> = data.iter().flat_map(|e| e.labels.clone()).collect();
    set_dropout_seed(model, 1234);
    let logits = model.forward(&ids, batch, None).unwrap();
    let loss = model.causal_lm_loss(&logits, &labels).unwrap();
    // The next micro-batch's seed, set before this backward: the re-run layers must still
    // draw this forward's dropout masks.
    set_dropout_seed(model, 5678);
    let grads = loss.backward().unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        t.to_vec_f32()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    std::iter::once(Some(bits(&loss)))
        .chain(params.iter().map(|p| grads.get(p).map(bits)))
        .collect()
}

/// Both ways on the same model (same weights, same dropout seed): equal bit for bit.
fn assert_checkpointing_changes_nothing(what: &str, mut model: Llama, params: &[Tensor]) {
    assert!(!model.checkpoint_activations);
    let recorded = loss_and_gradients(&model, params);
    model.checkpoint_activations = true;
    let checkpointed = loss_and_gradients(&model, params);
    assert_eq!(recorded.len(), checkpointed.len());
    let mut compared = 0;
    for (i, (a, b)) in recorded.iter().zip(&checkpointed).enumerate() {
        let name = match i {
            0 => "the loss".to_string(),
            _ => format!("gradient {} {:?}", i - 1, params[i - 1].shape()),
        };
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => continue, // a tensor the loss does not reach either way
            _ => panic!("{what}: {name} exists one way only"),
        };
        // The check can fail: the values are not all zero (the fixtures' B are not zero).
        assert!(
            a.iter().any(|&v| f32::from_bits(v) != 0.0),
            "{what}: {name} is zero"
        );
        let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ,
            0,
            "{what}: {name}: {differ} of {} elements differ",
            a.len()
        );
        compared += 1;
    }
    assert!(
        compared > params.len() / 2,
        "{what}: only {compared} compared"
    );
    println!(
        "{what}: the loss and {} gradients are equal bit for bit",
        compared - 1
    );
}

#[test]
fn checkpointed_layers_give_bitwise_the_loss_and_gradients_of_recorded_ones() {
    for (what, adapter, top_k) in [
        ("LoRA", "lora", None),
        ("HydraLoRA", "hydra-3", None),
        ("HydraLoRA top-2", "hydra-3", Some(2)),
    ] {
        let model = adapted(adapter, top_k);
        let params = trainable_params(&model);
        assert_checkpointing_changes_nothing(what, model, &params);
    }
    // Full-parameter training: the layers' own weights are read inside the checkpoints, the
    // embedding before them.
    let mut model = Llama::load(&common::device(), TINY).unwrap();
    let params: Vec<_> = model
        .make_trainable()
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_checkpointing_changes_nothing("full", model, &params);
}

#[test]
fn a_checkpointed_training_run_gives_the_same_losses_and_weights() {
    let data = common::random_examples(12, 40, 5, &[]);
    let run = |checkpoint: bool| {
        let settings = TrainSettings {
            lr: 5e-3,
            total_steps: 3,
            micro_batch: 3,
            grad_accum: 2, // dropout masks differ per micro-batch
            checkpoint_activations: checkpoint,
            ..Default::default()
        };
        let mut trainer =
            Trainer::new(adapted("hydra-3", None), data.clone(), 0, settings).unwrap();
        assert_eq!(trainer.model.checkpoint_activations, checkpoint);
        let plan = trainer.memory_plan().to_string();
        assert!(
            plan.contains(if checkpoint { "on: asked for" } else { "off" }),
            "{plan}"
        );
        let stats: Vec<(u32, u32)> = (0..3)
            .map(|_| {
                let s = trainer.step().unwrap();
                (s.loss.to_bits(), s.grad_norm.to_bits())
            })
            .collect();
        let weights: Vec<Vec<f32>> = trainer
            .params()
            .iter()
            .map(|p| p.to_vec_f32().unwrap())
            .collect();
        (stats, weights)
    };
    let (plain_stats, plain_weights) = run(false);
    let (ckpt_stats, ckpt_weights) = run(true);
    assert_eq!(plain_stats, ckpt_stats, "losses and gradient norms");
    for (i, (a, b)) in plain_weights.iter().zip(&ckpt_weights).enumerate() {
        common::assert_bits_eq(&format!("trained tensor {i}"), a, b);
    }
}

#[test]
fn checkpointing_with_the_balance_loss_is_refused_with_the_reason() {
    let mut model = adapted("hydra-3", None);
    model.adapter.as_mut().unwrap().balance_coef = 0.01;
    let settings = TrainSettings {
        micro_batch: 2,
        checkpoint_activations: true,
        ..Default::default()
    };
    let err = Trainer::new(model, common::random_examples(4, 16, 1, &[]), 0, settings)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("load-balancing loss"), "{err}");
    assert!(err.contains("--balance-coef 0"), "{err}");
}
