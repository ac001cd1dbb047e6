//! The two shortest programs, `examples/finetune.rs` and `examples/generate.rs`, run on the
//! tiny fixture model with a character codec: the adapter the first writes is a real one
//! (it loads, and it changes the logits), and the second continues a prompt with it.

mod common;

use std::path::Path;
use std::process::Command;

use hydralora::model::adapter::load_adapter;
use hydralora::model::Llama;

fn run(name: &str, args: &[&Path]) -> String {
    let out = Command::new(common::example_binary(name))
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{name} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn finetune_writes_an_adapter_that_generate_uses() {
    let dir = std::env::temp_dir().join(format!("hydralora-examples-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let model = dir.join("model");
    common::char_model_dir(&model);
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..16)
        .map(|i| format!(r#"{{"text": "count {i} {}"}}"#, i + 1))
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let adapter = dir.join("adapter");

    let log = run("finetune", &[&model, &data, &adapter, Path::new("4")]);
    assert_eq!(log.matches("loss").count(), 4, "one line per step:\n{log}");
    assert!(adapter.join("adapter_config.json").is_file());
    assert!(adapter.join("adapter_model.safetensors").is_file());

    // The adapter loads onto the base and changes its output (its experts' B were trained away
    // from their zero init).
    let device = common::device();
    let base = Llama::load(&device, &model).unwrap();
    let mut adapted = Llama::load(&device, &model).unwrap();
    load_adapter(&mut adapted, &adapter).unwrap();
    let ids = [5u32, 6, 7, 8];
    let logits = |m: &Llama| m.forward(&ids, 1, None).unwrap().to_vec_f32().unwrap();
    let (a, b) = (logits(&base), logits(&adapted));
    assert!(
        a.iter().zip(&b).any(|(x, y)| x != y),
        "the adapter changes nothing"
    );

    let text = run("generate", &[&model, Path::new("count 3"), &adapter]);
    assert!(text.starts_with("count 3"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
