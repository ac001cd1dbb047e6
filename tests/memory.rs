//! The device memory budget: the buffer pool never holds more than it, an allocation past it
//! fails with the numbers and leaves the device usable, and a training run's up-front
//! estimate bounds the pool's measured peak of a real step (from both sides, with and without
//! activation checkpointing), turns checkpointing on when only that fits, and refuses a run
//! that does not fit either way before its first step, with advice that does fit.
//!
//! Every test opens a device of its own: a budget is a property of the device.

mod common;

use hydralora::engine::{human_bytes, pool_bytes, Device, Error, Tensor};
use hydralora::model::adapter::{attach, AdapterConfig};
use hydralora::model::bench::random_model;
use hydralora::model::data::TokenizedExample;
use hydralora::model::train::memory::{
    estimate_training, estimate_training_as, MemoryEstimate, RunShape,
};
use hydralora::model::train::{TrainSettings, Trainable, Trainer};
use hydralora::model::{Llama, LlamaConfig};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");
const MIB: u64 = 1 << 20;

/// The most the estimate may exceed the measured peak by (it assumes the whole forward is
/// recorded; a frozen part records less).
const FACTOR: f64 = 1.5;

fn device() -> Device {
    let _ = common::device(); // fail, never skip, without an adapter
    Device::new().unwrap()
}

fn held(dev: &Device) -> u64 {
    let s = dev.pool_stats();
    s.in_use + s.cached
}

#[test]
fn the_default_budget_is_the_reported_device_memory_except_on_a_cpu_driver_or_shared_device() {
    let dev = device();
    let info = dev.info();
    if info.backend == "Vulkan" {
        let memory = info.memory.expect("Vulkan reports its heap sizes");
        assert!(memory >= 256 * MIB, "{}", human_bytes(memory));
        assert!(info.to_string().contains(&human_bytes(memory)));
    }
    let expected = info.memory.filter(|_| !dev.is_cpu());
    assert_eq!(dev.memory_budget(), expected);
    let (device, queue) = dev.wgpu();
    let shared = Device::from_wgpu(device.clone(), queue.clone());
    assert_eq!(shared.memory_budget(), None);
}

#[test]
fn an_allocation_past_the_budget_fails_with_the_numbers_and_the_device_stays_usable() {
    let dev = device();
    dev.set_memory_budget(Some(MIB));
    assert_eq!(dev.memory_budget(), Some(MIB));
    let half = Tensor::zeros(&dev, &[150_000]).unwrap(); // 600 000 bytes, a 640 KiB buffer
                                                         // 800 000 bytes (a 896 KiB buffer) more do not fit next to it: refused, not a panic or
                                                         // a driver error.
    let err = Tensor::zeros(&dev, &[200_000]).unwrap_err();
    match &err {
        Error::OutOfMemory {
            shape,
            bytes,
            held: h,
            budget,
            ..
        } => {
            assert_eq!(shape, &vec![200_000]);
            assert_eq!(*bytes, 800_000);
            assert_eq!(*h, pool_bytes(600_000));
            assert_eq!(*h, 640 * 1024);
            assert_eq!(*budget, Some(MIB));
        }
        other => panic!("expected OutOfMemory, got {other}"),
    }
    let msg = err.to_string();
    for part in [
        human_bytes(800_000).as_str(),
        "640.00 KiB already held",
        "memory budget 1.00 MiB",
        "smaller micro-batch",
        "--f16-weights",
    ] {
        assert!(msg.contains(part), "`{part}` missing from: {msg}");
    }
    // An op whose output does not fit fails the same way.
    let op_err = half.add(&half).unwrap_err();
    assert!(matches!(op_err, Error::OutOfMemory { .. }), "{op_err}");
    assert!(held(&dev) <= MIB);
    // Released, the same request fits; and the device still computes.
    drop(half);
    let big = Tensor::zeros(&dev, &[200_000]).unwrap();
    assert!(held(&dev) <= MIB, "{:?}", dev.pool_stats());
    drop(big);
    let x = Tensor::from_slice(&dev, &[1.0, -2.0, 3.0], &[3]).unwrap();
    assert_eq!(
        x.mul(&x).unwrap().to_vec_f32().unwrap(),
        vec![1.0, 4.0, 9.0]
    );
    dev.synchronize().unwrap();
    // Without a budget the same allocations succeed.
    dev.set_memory_budget(None);
    let a = Tensor::zeros(&dev, &[128 * 1024]).unwrap();
    let b = Tensor::zeros(&dev, &[200_000]).unwrap();
    assert_eq!(a.add(&a).unwrap().numel() + b.numel(), 128 * 1024 + 200_000);
}

#[test]
fn idle_buffers_are_released_to_make_room_and_when_the_budget_drops() {
    let dev = device();
    dev.set_memory_budget(Some(MIB));
    drop(Tensor::zeros(&dev, &[128 * 1024]).unwrap()); // 512 KiB now idle in the pool
    assert_eq!(dev.pool_stats().cached, 512 * 1024);
    // A 768 KiB tensor fits only once the idle 512 KiB are given back.
    let t = Tensor::zeros(&dev, &[192 * 1024]).unwrap();
    assert_eq!(dev.pool_stats().cached, 0);
    assert_eq!(dev.pool_stats().in_use, 768 * 1024);
    drop(t);
    assert_eq!(dev.pool_stats().cached, 768 * 1024);
    // Lowering the budget gives back what no longer fits.
    dev.set_memory_budget(Some(256 * 1024));
    assert_eq!(dev.pool_stats().cached, 0);
    // A buffer reused from the cache needs no room: the same class comes back, no new
    // allocation is made.
    dev.set_memory_budget(Some(MIB));
    drop(Tensor::zeros(&dev, &[64 * 1024]).unwrap());
    let made = dev.pool_stats().allocations;
    let again = Tensor::zeros(&dev, &[64 * 1024]).unwrap();
    assert_eq!(dev.pool_stats().allocations, made);
    assert_eq!(
        pool_bytes(again.numel() as u64 * 4),
        dev.pool_stats().in_use
    );
}

/// `n` random sequences of `len` tokens, the first 3 unlabelled.
fn examples(n: usize, len: usize, seed: u64) -> Vec<TokenizedExample> {
    common::random_examples(n, len, seed, &[])
}

/// A run: None trains every weight, else the adapter.
struct Case {
    adapter: Option<AdapterConfig>,
    batch: usize,
    seq: usize,
    accum: usize,
    f16: bool,
    checkpoint: bool,
}

fn model_for(dev: &Device, case: &Case) -> Llama {
    let mut model = Llama::load(dev, TINY).unwrap();
    if let Some(cfg) = &case.adapter {
        attach(&mut model, cfg, 3).unwrap();
        if case.f16 {
            model.store_frozen_weights_f16().unwrap();
        }
    }
    model
}

fn settings(case: &Case) -> TrainSettings {
    TrainSettings {
        lr: 1e-3,
        total_steps: 4,
        micro_batch: case.batch,
        grad_accum: case.accum,
        checkpoint_activations: case.checkpoint,
        trainable: match case.adapter {
            Some(_) => Trainable::Adapter,
            None => Trainable::Full,
        },
        ..Default::default()
    }
}

/// The estimate for the case, and the pool's peak bytes in use over two real steps.
fn estimate_and_peak(case: &Case) -> (MemoryEstimate, u64) {
    let dev = device();
    let data = examples(2 * case.batch * case.accum, case.seq, 9);
    let mut trainer = Trainer::new(model_for(&dev, case), data, 0, settings(case)).unwrap();
    let run = RunShape {
        micro_batch: case.batch,
        seq: case.seq,
        grad_accum: case.accum,
    };
    let est = estimate_training(&trainer.model, &trainer.params(), run);
    dev.synchronize().unwrap();
    dev.reset_peak();
    for _ in 0..2 {
        trainer.step().unwrap();
    }
    dev.synchronize().unwrap();
    (est, dev.pool_stats().peak_in_use)
}

#[test]
fn the_estimate_bounds_the_measured_peak_of_real_steps_within_the_stated_factor() {
    let hydra = AdapterConfig {
        dropout: 0.1,
        ..AdapterConfig::hydra(4, 8.0, 3, &["q_proj", "up_proj", "down_proj"])
    };
    let all = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let cases = [
        Case {
            adapter: None,
            batch: 4,
            seq: 64,
            accum: 1,
            f16: false,
            checkpoint: false,
        },
        Case {
            adapter: Some(AdapterConfig::lora(8, 16.0, &all)),
            batch: 4,
            seq: 128,
            accum: 1,
            f16: false,
            checkpoint: false,
        },
        Case {
            adapter: Some(hydra),
            batch: 3,
            seq: 96,
            accum: 2,
            f16: false,
            checkpoint: false,
        },
        Case {
            adapter: Some(AdapterConfig::lora(4, 8.0, &["q_proj", "v_proj"])),
            batch: 2,
            seq: 128,
            accum: 1,
            f16: true,
            checkpoint: false,
        },
        Case {
            adapter: Some(AdapterConfig::lora(4, 8.0, &all)),
            batch: 1,
            seq: 16,
            accum: 1,
            f16: false,
            checkpoint: false,
        },
    ];
    // The same runs with every decoder layer checkpointed.
    let checkpointed: Vec<Case> = cases
        .iter()
        .map(|c| Case {
            adapter: c.adapter.clone(),
            checkpoint: true,
            ..*c
        })
        .collect();
    let cases: Vec<&Case> = cases.iter().chain(&checkpointed).collect();
    for (i, case) in cases.iter().enumerate() {
        let (est, peak) = estimate_and_peak(case);
        let ratio = est.total() as f64 / peak as f64;
        println!(
            "case {i}: batch {} x {} tokens{}: measured peak {}, estimate {est}, ratio {ratio:.2}",
            case.batch,
            case.seq,
            if case.checkpoint {
                ", checkpointed"
            } else {
                ""
            },
            human_bytes(peak)
        );
        assert!(
            est.total() >= peak,
            "case {i}: the estimate {est} is below the measured peak {}",
            human_bytes(peak)
        );
        assert!(
            ratio <= FACTOR,
            "case {i}: the estimate {est} is over {FACTOR} x the measured peak {}",
            human_bytes(peak)
        );
    }
}

#[test]
fn a_run_over_the_budget_is_refused_before_any_step_and_the_advice_fits() {
    let case = Case {
        adapter: Some(AdapterConfig::lora(
            4,
            8.0,
            &["q_proj", "v_proj", "down_proj"],
        )),
        batch: 8,
        seq: 64,
        accum: 1,
        f16: false,
        checkpoint: false,
    };
    let dev = device();
    let data = examples(16, case.seq, 4);
    let model = model_for(&dev, &case);
    let params = hydralora::model::adapter::trainable_params(&model);
    let run = RunShape {
        micro_batch: case.batch,
        seq: case.seq,
        grad_accum: 1,
    };
    // Checkpointing is turned on when it is what fits: the refusal is about that estimate.
    let need = estimate_training_as(&model, &params, run, true).total();
    let half = RunShape {
        micro_batch: case.batch / 2,
        ..run
    };
    // A budget that holds a micro-batch of 4 but not 8, even checkpointed.
    let budget = estimate_training_as(&model, &params, half, true).total();
    dev.set_memory_budget(Some(budget));
    dev.reset_peak();
    let in_use = dev.pool_stats().in_use;
    let err = Trainer::new(model, data.clone(), 0, settings(&case))
        .err()
        .expect("refused")
        .to_string();
    assert_eq!(
        dev.pool_stats().peak_in_use,
        in_use,
        "nothing was allocated"
    );
    for part in [
        format!(
            "needs an estimated {} of device memory with activation checkpointing",
            human_bytes(need)
        ),
        format!("memory budget of {}", human_bytes(budget)),
        "weights".to_string(),
        "attention".to_string(),
        "micro-batch of at most 4".to_string(),
    ] {
        assert!(err.contains(&part), "`{part}` missing from: {err}");
    }
    // The advice holds: a micro-batch of 4 trains within the budget.
    let fitted = Case { batch: 4, ..case };
    let mut trainer = Trainer::new(model_for(&dev, &fitted), data, 0, settings(&fitted)).unwrap();
    for _ in 0..2 {
        trainer.step().unwrap();
    }
    assert!(dev.pool_stats().peak_in_use <= budget);
}

#[test]
fn one_sequence_too_long_is_told_the_length_that_fits() {
    let case = Case {
        adapter: Some(AdapterConfig::lora(4, 8.0, &["q_proj", "v_proj"])),
        batch: 1,
        seq: 128,
        accum: 1,
        f16: false,
        checkpoint: false,
    };
    let dev = device();
    let model = model_for(&dev, &case);
    let params = hydralora::model::adapter::trainable_params(&model);
    let shape = |seq| RunShape {
        micro_batch: 1,
        seq,
        grad_accum: 1,
    };
    let estimate = |t| estimate_training_as(&model, &params, shape(t), true).total();
    let budget = estimate(100);
    // The longest length the checkpointed estimate fits (pool size classes make a few
    // lengths equal).
    let fits = (1..=128).rev().find(|&t| estimate(t) <= budget).unwrap();
    assert!((100..128).contains(&fits));
    dev.set_memory_budget(Some(budget));
    let err = Trainer::new(model, examples(2, case.seq, 1), 0, settings(&case))
        .err()
        .expect("refused")
        .to_string();
    let advice = format!("sequences of at most {fits} tokens (--max-len {fits})");
    assert!(err.contains(&advice), "`{advice}` missing from: {err}");
    // The advice holds: sequences of that length train within the budget.
    dev.reset_peak();
    let mut trainer = Trainer::new(
        model_for(&dev, &case),
        examples(2, fits, 1),
        0,
        settings(&case),
    )
    .unwrap();
    trainer.step().unwrap();
    trainer.step().unwrap();
    assert!(dev.pool_stats().peak_in_use <= budget);
}

#[test]
fn f16_storage_is_advised_when_it_is_what_fits() {
    let case = Case {
        adapter: Some(AdapterConfig::lora(2, 4.0, &["q_proj"])),
        batch: 1,
        seq: 8,
        accum: 1,
        f16: false,
        checkpoint: false,
    };
    let dev = device();
    let model = model_for(&dev, &case);
    let params = hydralora::model::adapter::trainable_params(&model);
    let run = RunShape {
        micro_batch: 1,
        seq: 8,
        grad_accum: 1,
    };
    let need = estimate_training_as(&model, &params, run, true).total();
    // Just under, even checkpointed: f16 layer weights fit (so would a shorter sequence).
    let budget = need - 1;
    dev.set_memory_budget(Some(budget));
    let err = Trainer::new(model, examples(2, case.seq, 2), 0, settings(&case))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("--weights f16"), "{err}");
    let f16 = Case { f16: true, ..case };
    let mut trainer =
        Trainer::new(model_for(&dev, &f16), examples(2, 8, 2), 0, settings(&f16)).unwrap();
    trainer.step().unwrap();
    assert!(dev.pool_stats().peak_in_use <= budget);
}

#[test]
fn a_model_over_the_budget_is_refused_before_any_weight_is_uploaded() {
    let loaded = device();
    let _model = Llama::load(&loaded, TINY).unwrap();
    let weights = loaded.pool_stats().in_use; // what the weights really take
    let dev = device();
    dev.set_memory_budget(Some(weights - 1));
    let err = Llama::load(&dev, TINY).err().expect("refused").to_string();
    for part in [
        format!("the model's weights need {}", human_bytes(weights)),
        format!("over the memory budget of {}", human_bytes(weights - 1)),
    ] {
        assert!(err.contains(&part), "`{part}` missing from: {err}");
    }
    assert_eq!(dev.pool_stats().peak_in_use, 0, "nothing was uploaded");
    // The exact amount is enough.
    dev.set_memory_budget(Some(weights));
    Llama::load(&dev, TINY).unwrap();
}

#[test]
fn checkpointing_is_chosen_when_only_it_fits_the_budget_and_the_plan_says_why() {
    let all = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let case = Case {
        adapter: Some(AdapterConfig::lora(8, 16.0, &all)),
        batch: 4,
        seq: 128,
        accum: 1,
        f16: false,
        checkpoint: false,
    };
    let dev = device();
    let model = model_for(&dev, &case);
    let params = hydralora::model::adapter::trainable_params(&model);
    let run = RunShape {
        micro_batch: case.batch,
        seq: case.seq,
        grad_accum: 1,
    };
    let plain = estimate_training_as(&model, &params, run, false);
    let checkpointed = estimate_training_as(&model, &params, run, true);
    assert!(
        checkpointed.total() < plain.total(),
        "{checkpointed} vs {plain}"
    );
    assert_eq!(checkpointed.weights, plain.weights);
    assert_eq!(checkpointed.logits, plain.logits);
    // Between the two: only the checkpointed run fits.
    let budget = (checkpointed.total() + plain.total()) / 2;
    dev.set_memory_budget(Some(budget));
    let data = examples(8, case.seq, 6);
    let mut trainer = Trainer::new(model, data.clone(), 0, settings(&case)).unwrap();
    assert!(trainer.model.checkpoint_activations);
    let plan = trainer.memory_plan().clone();
    assert!(plan.checkpoint_activations);
    assert_eq!(plan.estimate, checkpointed);
    let said = plan.to_string();
    for part in [
        "activation checkpointing on: chosen because".to_string(),
        format!("memory budget of {}", human_bytes(budget)),
        format!("{} with it", human_bytes(checkpointed.total())),
        format!("{} without", human_bytes(plain.total())),
    ] {
        assert!(said.contains(&part), "`{part}` missing from: {said}");
    }
    dev.reset_peak();
    for _ in 0..2 {
        trainer.step().unwrap();
    }
    assert!(dev.pool_stats().peak_in_use <= budget);
    drop(trainer);
    // A budget that holds the plain run leaves checkpointing off.
    dev.set_memory_budget(Some(plain.total()));
    let trainer = Trainer::new(model_for(&dev, &case), data, 0, settings(&case)).unwrap();
    assert!(!trainer.model.checkpoint_activations);
    let said = trainer.memory_plan().to_string();
    assert!(
        said.contains("activation checkpointing off: not needed"),
        "{said}"
    );
}

/// The pool's peak over two training steps of an 8-layer version of the tiny model (random
/// weights), LoRA on every module, 4 sequences of 128 tokens; and the run's estimate.
fn deep_model_peak(checkpoint: bool) -> (u64, u64) {
    let dev = device();
    let mut config = LlamaConfig::from_dir(TINY).unwrap();
    config.num_hidden_layers = 8;
    let mut model = random_model(&dev, &config, 1).unwrap();
    let all = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    attach(&mut model, &AdapterConfig::lora(8, 16.0, &all), 2).unwrap();
    let case = Case {
        adapter: Some(AdapterConfig::lora(8, 16.0, &all)),
        batch: 4,
        seq: 128,
        accum: 1,
        f16: false,
        checkpoint,
    };
    let data = examples(8, case.seq, 7);
    let mut trainer = Trainer::new(model, data, 0, settings(&case)).unwrap();
    let estimate = trainer.memory_plan().estimate.total();
    dev.synchronize().unwrap();
    dev.reset_peak();
    for _ in 0..2 {
        trainer.step().unwrap();
    }
    dev.synchronize().unwrap();
    (dev.pool_stats().peak_in_use, estimate)
}

#[test]
fn checkpointing_lowers_the_measured_peak_of_a_deep_model_on_long_sequences() {
    let (plain, plain_estimate) = deep_model_peak(false);
    let (checkpointed, checkpointed_estimate) = deep_model_peak(true);
    println!(
        "8 layers, 4 x 128 tokens: peak {} recorded, {} checkpointed (estimates {} and {})",
        human_bytes(plain),
        human_bytes(checkpointed),
        human_bytes(plain_estimate),
        human_bytes(checkpointed_estimate)
    );
    assert!(checkpointed < plain);
    for (peak, estimate) in [
        (plain, plain_estimate),
        (checkpointed, checkpointed_estimate),
    ] {
        assert!(peak <= estimate && estimate as f64 <= FACTOR * peak as f64);
    }
}
