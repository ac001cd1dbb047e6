//! The page's session, run natively (under pollster): its awaited steps are the trainer's
//! blocking steps, bit for bit, and its in-memory adapter files are the files
//! `save_adapter` writes.

use hydralora_model::adapter::{attach, save_adapter};
use hydralora_model::bench::random_model;
use hydralora_model::data::tokenize;
use hydralora_model::demo::{
    adapter_pair, demo_codec, demo_config, finetune_examples, finetune_settings, DemoOptions,
};
use hydralora_model::engine::Device;
use hydralora_model::train::Trainer;
use hydralora_model::{Llama, TextCodec};
use hydralora_web::session::{Method, RunSettings, Session};

fn require_gpu_or_skip() -> Option<Device> {
    match Device::new() {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("HYDRALORA_REQUIRE_GPU").is_some() => {
            panic!("HYDRALORA_REQUIRE_GPU is set but no GPU adapter was found: {e}")
        }
        Err(e) => {
            eprintln!("skipping: no GPU adapter ({e})");
            None
        }
    }
}

#[test]
fn awaited_steps_equal_blocking_steps_and_adapter_files_equal_saved_ones() {
    let Some(device) = require_gpu_or_skip() else {
        return;
    };
    let codec = demo_codec();
    let dir = tempfile::tempdir().unwrap();
    let base = random_model(&device, &demo_config(codec.vocab_size()), 3).unwrap();
    base.save(dir.path()).unwrap();
    let config = std::fs::read(dir.path().join("config.json")).unwrap();
    let weights = std::fs::read(dir.path().join("model.safetensors")).unwrap();

    let (steps, batch, seed) = (3, 8, 1);
    let mut session = pollster::block_on(Session::open()).unwrap();
    session.load_base(&config, weights, None).unwrap();
    let settings = RunSettings {
        method: Method::Hydra,
        steps,
        batch,
        seed,
    };
    session.start_run(&settings, None).unwrap();
    let awaited: Vec<f32> = (0..steps)
        .map(|_| pollster::block_on(session.step()).unwrap().loss)
        .collect();

    // The same run through the blocking trainer, as the native demo makes it.
    let mut model = Llama::load(&device, dir.path()).unwrap();
    let (_, hydra) = adapter_pair(&model);
    attach(&mut model, &hydra, 1000 + seed).unwrap();
    let mut opts = DemoOptions::quick("".into(), "".into());
    opts.finetune_steps = steps;
    opts.batch = batch;
    let (tokens, _) = tokenize(&finetune_examples(200), &codec, 128).unwrap();
    let mut trainer = Trainer::new(
        model,
        tokens,
        codec.pad_id(),
        finetune_settings(&opts, seed),
    )
    .unwrap();
    let blocking: Vec<f32> = (0..steps).map(|_| trainer.step().unwrap().loss).collect();
    assert_eq!(awaited, blocking);
    assert!(
        awaited[steps - 1] < awaited[0],
        "the loss falls: {awaited:?}"
    );

    let files = pollster::block_on(session.adapter_files()).unwrap();
    let saved = tempfile::tempdir().unwrap();
    // The page's base came as bytes, so its adapter names no base folder.
    trainer.model.base_name = None;
    save_adapter(&trainer.model, saved.path()).unwrap();
    let on_disk = std::fs::read(saved.path().join("adapter_model.safetensors")).unwrap();
    assert_eq!(files.weights, on_disk);
    let config_on_disk = std::fs::read_to_string(saved.path().join("adapter_config.json")).unwrap();
    assert_eq!(files.config, config_on_disk);

    // Generation and the heatmap run through their awaited readbacks.
    let text = pollster::block_on(session.generate("rev:abc=", 4)).unwrap();
    assert!(text.chars().count() <= 4);
    let heatmap = pollster::block_on(session.heatmap()).unwrap().unwrap();
    assert_eq!(heatmap.categories.len(), 4);
    for row in &heatmap.gates {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "a gate row sums to 1: {row:?}");
    }
}

#[test]
fn a_bad_jsonl_line_is_named() {
    let Some(device) = require_gpu_or_skip() else {
        return;
    };
    let codec = demo_codec();
    let dir = tempfile::tempdir().unwrap();
    random_model(&device, &demo_config(codec.vocab_size()), 3)
        .unwrap()
        .save(dir.path())
        .unwrap();
    let mut session = pollster::block_on(Session::open()).unwrap();
    session
        .load_base(
            &std::fs::read(dir.path().join("config.json")).unwrap(),
            std::fs::read(dir.path().join("model.safetensors")).unwrap(),
            None,
        )
        .unwrap();
    let settings = RunSettings {
        method: Method::Lora,
        steps: 1,
        batch: 1,
        seed: 0,
    };
    let jsonl = "{\"text\": \"abc\"}\n{\"text\": \n";
    let err = session
        .start_run(&settings, Some(jsonl))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2"), "{err}");
}
