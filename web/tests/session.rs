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

/// The GPU (a test fails, never skips, without one), a random base of the demo's shape saved
/// into a temporary folder, and a session holding that base as the page would (as bytes).
fn session_with_random_base() -> (Device, tempfile::TempDir, Session) {
    let device = Device::new()
        .unwrap_or_else(|e| panic!("GPU tests need an adapter and none was found: {e}"));
    let dir = tempfile::tempdir().unwrap();
    random_model(&device, &demo_config(demo_codec().vocab_size()), 3)
        .unwrap()
        .save(dir.path())
        .unwrap();
    let mut session = pollster::block_on(Session::open()).unwrap();
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    session
        .load_base(&read("config.json"), read("model.safetensors"), None)
        .unwrap();
    (device, dir, session)
}

#[test]
fn awaited_steps_equal_blocking_steps_and_adapter_files_equal_saved_ones() {
    let (device, dir, mut session) = session_with_random_base();
    let codec = demo_codec();
    let (steps, batch, seed) = (3, 8, 1);
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
    let (_device, _dir, mut session) = session_with_random_base();
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
