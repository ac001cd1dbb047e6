//! The training loop on the tiny fixture model: exact resume, the NaN stop, atomic
//! checkpoints, gradient accumulation and evaluation.

mod common;

use std::path::PathBuf;

use hydralora::model::adapter::{attach, trainable_params, AdapterConfig};
use hydralora::model::data::TokenizedExample;
use hydralora::model::train::checkpoint::{read_state, readable_dir, replace_dir};
use hydralora::model::train::{evaluate, ScheduleKind, TrainSettings, Trainer};
use hydralora::model::{Llama, ModelError};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hydralora-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Random sequences of one length; the first 3 tokens are the prompt (label -100).
fn examples(n: usize, len: usize, seed: u64) -> Vec<TokenizedExample> {
    common::random_examples(n, len, seed, &["even", "odd"])
}

fn hydra_model() -> Llama {
    let mut model = Llama::load(&common::device(), TINY).unwrap();
    attach(
        &mut model,
        &AdapterConfig::hydra(4, 8.0, 3, &["q_proj", "up_proj", "down_proj"]),
        5,
    )
    .unwrap();
    model
}

/// With dropout on: the masks must also come back the same after a resume.
fn hydra_dropout_model(seed: u64) -> Llama {
    let mut model = Llama::load(&common::device(), TINY).unwrap();
    let cfg = AdapterConfig {
        dropout: 0.2,
        ..AdapterConfig::hydra(4, 8.0, 3, &["q_proj", "up_proj", "down_proj"])
    };
    attach(&mut model, &cfg, seed).unwrap();
    model
}

fn settings() -> TrainSettings {
    TrainSettings {
        lr: 5e-3,
        schedule: ScheduleKind::Cosine,
        warmup_steps: 2,
        total_steps: 8,
        micro_batch: 3,
        grad_accum: 2,
        max_grad_norm: Some(1.0),
        weight_decay: 0.01,
        seed: 11,
        ..Default::default()
    }
}

#[test]
fn n_steps_then_resume_then_n_more_equals_2n_straight() {
    let data = examples(10, 9, 1);
    let mut straight = Trainer::new(hydra_dropout_model(5), data.clone(), 0, settings()).unwrap();
    let all: Vec<f32> = (0..6).map(|_| straight.step().unwrap().loss).collect();
    assert!(all[5] < all[0], "training lowers the loss: {all:?}");

    let dir = temp_dir("resume").join("checkpoint");
    let mut first = Trainer::new(hydra_dropout_model(5), data.clone(), 0, settings()).unwrap();
    let head: Vec<f32> = (0..3).map(|_| first.step().unwrap().loss).collect();
    first.save_checkpoint(&dir).unwrap();
    drop(first);
    // A fresh adapter with other values: the checkpoint must replace all of it.
    let mut model = Llama::load(&common::device(), TINY).unwrap();
    attach(
        &mut model,
        &AdapterConfig::hydra(4, 8.0, 3, &["q_proj", "up_proj", "down_proj"]),
        99,
    )
    .unwrap();
    let mut resumed = Trainer::resume(model, data, 0, &dir).unwrap();
    assert_eq!(resumed.steps_done(), 3);
    let tail: Vec<f32> = (0..3).map(|_| resumed.step().unwrap().loss).collect();
    assert_eq!(
        [head, tail].concat(),
        all,
        "resumed losses equal the uninterrupted run's, bit for bit"
    );
}

#[test]
fn a_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let data = examples(6, 8, 2);
    let mut trainer = Trainer::new(hydra_model(), data, 0, settings()).unwrap();
    trainer.step().unwrap();
    trainer.step().unwrap();
    let dir = temp_dir("nan").join("checkpoint");
    trainer.save_checkpoint(&dir).unwrap();
    // Inject a NaN into one adapter weight.
    let a = trainable_params(&trainer.model)[0].clone();
    let mut values = a.to_vec_f32().unwrap();
    values[0] = f32::NAN;
    a.write_f32(&values).unwrap();
    let err = trainer.step().unwrap_err();
    assert!(matches!(err, ModelError::Input(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("diverged at step 3") && msg.contains("NaN"),
        "{msg}"
    );
    // The first adapter tensor is layer 0's q_proj A: the NaN appears in layer 0's attention.
    assert!(msg.contains("layer 0 attention"), "{msg}");
    assert_eq!(
        read_state(&readable_dir(&dir).unwrap()).unwrap().step,
        2,
        "the last good checkpoint is intact"
    );
}

#[test]
fn an_interrupted_checkpoint_write_leaves_the_previous_one_readable() {
    let data = examples(6, 8, 3);
    let mut trainer = Trainer::new(hydra_model(), data, 0, settings()).unwrap();
    trainer.step().unwrap();
    let dir = temp_dir("atomic").join("checkpoint");
    trainer.save_checkpoint(&dir).unwrap();
    let before: Vec<(String, Vec<u8>)> = files(&dir);
    // A write that fails half-way (a full disk, a crash inside the writer).
    let failed = replace_dir(&dir, |tmp| {
        std::fs::write(tmp.join("adapter_model.safetensors"), b"partial").unwrap();
        Err(ModelError::Input("simulated crash".into()))
    });
    assert!(failed.is_err());
    assert_eq!(files(&dir), before, "the previous checkpoint is untouched");
    // A crash between the two renames: the old checkpoint sits at `<dir>.old`.
    let old = dir.with_file_name("checkpoint.old");
    std::fs::rename(&dir, &old).unwrap();
    assert_eq!(readable_dir(&dir).unwrap(), old);
    assert_eq!(read_state(&old).unwrap().step, 1);
}

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn gradient_accumulation_matches_one_large_batch() {
    // Same-length sequences: the mean of micro-batch means is the mean over all tokens.
    let data = examples(8, 7, 4);
    let base = TrainSettings {
        micro_batch: 4,
        grad_accum: 1,
        max_grad_norm: None,
        ..settings()
    };
    let mut large = Trainer::new(hydra_model(), data.clone(), 0, base.clone()).unwrap();
    let mut split = Trainer::new(
        hydra_model(),
        data,
        0,
        TrainSettings {
            micro_batch: 2,
            grad_accum: 2,
            ..base
        },
    )
    .unwrap();
    for _ in 0..3 {
        let (a, b) = (large.step().unwrap(), split.step().unwrap());
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * a.loss.abs(),
            "{} vs {}",
            a.loss,
            b.loss
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() <= 1e-4 * a.grad_norm.abs(),
            "{} vs {}",
            a.grad_norm,
            b.grad_norm
        );
        assert_eq!(a.tokens, b.tokens);
    }
}

#[test]
fn evaluation_breaks_the_loss_down_by_category() {
    let model = Llama::load(&common::device(), TINY).unwrap();
    let data = examples(4, 6, 5);
    let stats = evaluate(&model, &data, 2).unwrap();
    // Each example alone, weighted by its counted tokens (all 3 per example here).
    let single: Vec<f32> = data
        .iter()
        .map(|ex| {
            model
                .causal_lm_loss(&model.logits(&ex.ids, 1).unwrap(), &ex.labels)
                .unwrap()
                .to_scalar()
                .unwrap()
        })
        .collect();
    assert_eq!(stats.tokens, 4 * 3);
    let mean = |xs: &[f32]| xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
    assert!((stats.loss as f64 - mean(&single)).abs() < 1e-5);
    assert!((stats.per_category["even"] as f64 - mean(&[single[0], single[2]])).abs() < 1e-5);
    assert!((stats.per_category["odd"] as f64 - mean(&[single[1], single[3]])).abs() < 1e-5);
}

/// Full-parameter training trains the token embedding: its gradient agrees with central
/// finite differences of the loss on the entries that matter most, and the rows of tokens the
/// batch does not hold get none (the fixture model's lm_head is untied).
#[test]
fn full_training_gives_the_embedding_its_gradient() {
    let mut model = Llama::load(&common::device(), TINY).unwrap();
    let params = model.make_trainable().unwrap();
    let (_, embed) = params
        .iter()
        .find(|(name, _)| name == "model.embed_tokens.weight")
        .expect("the embedding is trainable");
    let (batch, seq) = (2, 24);
    let data = examples(batch, seq, 7);
    let ids: Vec<u32> = data.iter().flat_map(|e| e.ids.clone()).collect();
    let labels: Vec<i32> = data.iter().flat_map(|e| e.labels.clone()).collect();
    let loss = |model: &Llama| {
        let logits = model.forward(&ids, batch, None).unwrap();
        model.causal_lm_loss(&logits, &labels).unwrap()
    };
    let grads = loss(&model).backward().unwrap();
    let grad = grads
        .get(embed)
        .expect("the embedding has a gradient")
        .to_vec_f32()
        .unwrap();
    let dim = embed.dim(1);
    for (row, g) in grad.chunks(dim).enumerate() {
        if !ids.contains(&(row as u32)) {
            assert!(g.iter().all(|&v| v == 0.0), "row {row} is not in the batch");
        }
    }
    // The largest entries: there an f32 loss resolves a step of 1e-2 to a few percent.
    let mut largest: Vec<usize> = (0..grad.len()).collect();
    largest.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
    let values = embed.to_vec_f32().unwrap();
    let eps = 1e-2f32;
    for &i in &largest[..4] {
        let at = |x: f32| {
            let mut moved = values.clone();
            moved[i] = x;
            embed.write_f32(&moved).unwrap();
            loss(&model).to_vec_f32().unwrap()[0] as f64
        };
        let numeric = (at(values[i] + eps) - at(values[i] - eps)) / (2.0 * eps as f64);
        embed.write_f32(&values).unwrap();
        let analytic = grad[i] as f64;
        assert!(
            (numeric - analytic).abs() <= 0.05 * analytic.abs() + 1e-5,
            "entry {i} (token {}): finite difference {numeric:e}, gradient {analytic:e}",
            i / dim
        );
    }
}
