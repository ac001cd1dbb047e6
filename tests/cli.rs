//! The `hydralora` program end to end on the tiny fixture model with a character codec:
//! train, resume, eval, generate, merge, and the errors a user meets first.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn hydralora(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hydralora"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn model_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hydralora-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::char_model_dir(&dir);
    dir
}

fn data_file(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    let mut lines = Vec::new();
    for i in 0..24 {
        let cat = ["math", "words"][i % 2];
        lines.push(format!(
            r#"{{"instruction": "echo {i}", "input": "", "output": "{i}{i}", "category": "{cat}"}}"#
        ));
    }
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn losses(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v.get("step")?.as_u64()?, v.get("loss")?.as_f64()?))
        })
        .collect()
}

#[test]
fn train_then_resume_gives_the_losses_of_one_run_and_writes_every_output() {
    let dir = model_dir("train");
    let data = data_file(&dir);
    let common_args = |out: &Path, steps: &str| -> Vec<String> {
        [
            "train",
            "--model",
            dir.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--method",
            "hydra",
            "--rank",
            "2",
            "--experts",
            "3",
            "--targets",
            "q_proj,up_proj",
            "--lr",
            "1e-2",
            "--micro-batch",
            "4",
            "--eval-split",
            "0.25",
            "--eval-interval",
            "2",
            "--save-interval",
            "2",
            "--max-len",
            "48",
            "--output",
            out.to_str().unwrap(),
            "--steps",
            steps,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let straight = dir.join("straight");
    let args = common_args(&straight, "6");
    let (ok, out, err) = hydralora(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{out}\n{err}");
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checkpoint/trainer_state.json",
        "metrics.jsonl",
        "loss.svg",
        "router.svg",
    ] {
        assert!(straight.join(f).is_file(), "{f} missing");
    }
    assert!(
        out.contains("eval loss") && out.contains("tokens/s"),
        "{out}"
    );
    let full = losses(&straight.join("metrics.jsonl"));
    assert_eq!(full.len(), 6);

    // Resuming a finished run does nothing more; resuming where there is no checkpoint fails.
    let resume: Vec<String> = args
        .iter()
        .cloned()
        .chain(["--resume".to_string()])
        .collect();
    let (ok, out, err) = hydralora(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{out}\n{err}");
    assert_eq!(losses(&straight.join("metrics.jsonl")), full);
    let (ok, _, err) = hydralora(&[
        "train",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output",
        dir.join("none").to_str().unwrap(),
        "--resume",
    ]);
    assert!(!ok && err.contains("no checkpoint"), "{err}");
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_continues_with_the_same_losses() {
    let dir = model_dir("sigint");
    let data = data_file(&dir);
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            dir.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--method",
            "lora",
            "--rank",
            "2",
            "--targets",
            "v_proj",
            "--lr",
            "5e-3",
            "--micro-batch",
            "2",
            "--eval-split",
            "0",
            "--save-interval",
            "1000",
            "--steps",
            "60",
            "--output",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let straight = dir.join("straight");
    let (ok, o, e) = hydralora(
        &args(&straight)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(ok, "{o}\n{e}");
    let full = losses(&straight.join("metrics.jsonl"));

    let split = dir.join("split");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hydralora"))
        .args(args(&split))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = split.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while !metrics.is_file() || losses(&metrics).len() < 3 {
        assert!(
            started.elapsed().as_secs() < 120,
            "the run never reached step 3"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "Ctrl-C ends the run cleanly"
    );
    let done = losses(&metrics).len();
    assert!(done < 60, "the run stopped early (at step {done})");
    assert!(split.join("checkpoint/trainer_state.json").is_file());
    let resume: Vec<String> = args(&split)
        .into_iter()
        .chain(["--resume".to_string()])
        .collect();
    let (ok, o, e) = hydralora(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{o}\n{e}");
    assert_eq!(
        losses(&metrics),
        full,
        "interrupted at step {done} and resumed: the losses of one run"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = model_dir("errors");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"text\": 3}\n").unwrap();
    let (ok, _, err) = hydralora(&[
        "train",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        bad.to_str().unwrap(),
        "--steps",
        "1",
    ]);
    assert!(!ok);
    assert!(err.contains("bad.jsonl") && err.contains("line 2"), "{err}");
    let (ok, _, err) = hydralora(&[
        "train",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        bad.to_str().unwrap(),
        "--method",
        "mixture",
    ]);
    assert!(!ok && err.contains("lora or hydra"), "{err}");
    let (ok, _, err) = hydralora(&[
        "generate",
        "--model",
        dir.join("nope").to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert!(!ok && err.contains("nope"), "{err}");
}

#[test]
fn eval_generate_and_merge_run_on_a_trained_adapter() {
    let dir = model_dir("use");
    let data = data_file(&dir);
    let out = dir.join("run");
    let (ok, o, e) = hydralora(&[
        "train",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--method",
        "lora",
        "--f16-weights",
        "--checkpoint-activations",
        "--skip-bad-lines",
        "--rank",
        "2",
        "--targets",
        "q_proj,v_proj",
        "--steps",
        "2",
        "--micro-batch",
        "2",
        "--eval-split",
        "0",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{o}\n{e}");
    assert!(e.contains("activation checkpointing on: asked for"), "{e}");
    let adapter = out.join("adapter");
    let (ok, o, e) = hydralora(&[
        "eval",
        "--model",
        dir.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{o}\n{e}");
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    assert!(v["perplexity"].as_f64().unwrap() > 1.0);
    assert!(v["per_category"]["math"]["exact_match"].is_number());
    let generate_args = [
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--prompt",
        "echo",
        "--max-tokens",
        "5",
        "--temperature",
        "0.8",
        "--seed",
        "3",
    ];
    let (ok, o, e) = hydralora(&generate_args);
    assert!(ok, "{o}\n{e}");
    assert!(o.starts_with("echo"));
    let again = hydralora(&generate_args).1;
    assert_eq!(o, again, "a seed fixes the sampled text");
    let merged = dir.join("merged");
    let (ok, o, e) = hydralora(&[
        "merge",
        "--model",
        dir.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(ok, "{o}\n{e}");
    assert!(merged.join("model.safetensors").is_file() && merged.join("config.json").is_file());
}

#[test]
fn a_memory_budget_too_small_is_refused_up_front_and_writes_no_checkpoint() {
    let dir = model_dir("budget");
    let data = data_file(&dir);
    let out = dir.join("run");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--model",
            dir.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--steps",
            "2",
            "--output",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |a: Vec<String>| hydralora(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, _, err) = run(args(&["--memory-budget", "1MiB"]));
    assert!(!ok);
    assert!(
        err.contains("needs an estimated")
            && err.contains("over the memory budget of 1.00 MiB")
            && err.contains("weights")
            && err.contains("activations"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for f in ["checkpoint", "adapter", "metrics.jsonl"] {
        assert!(!out.join(f).exists(), "{f} was written by a refused run");
    }
    // The same from the TOML settings.
    let toml = dir.join("run.toml");
    std::fs::write(&toml, "memory-budget = \"1MiB\"\n").unwrap();
    let (ok, _, err) = run(args(&["--config", toml.to_str().unwrap()]));
    assert!(
        !ok && err.contains("over the memory budget of 1.00 MiB"),
        "{err}"
    );
    assert!(!out.join("checkpoint").exists());
    // Junk is a clear error.
    let (ok, _, err) = run(args(&["--memory-budget", "lots"]));
    assert!(
        !ok && err.contains("--memory-budget") && err.contains("`lots` is not a memory size"),
        "{err}"
    );
}

#[test]
fn chat_lines_use_the_model_s_template_in_train_eval_and_generate() {
    let dir = model_dir("chat");
    // The character codec has no '|' or '}': a template in its alphabet.
    let template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}\
                    {% if add_generation_prompt %}[assistant]{% endif %}";
    let config = serde_json::json!({ "chat_template": template });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let data = dir.join("chat.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let category = ["a", "b"][i % 2];
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("hi {i}")},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "twice?"},
                {"role": "assistant", "content": format!("{i}{i}")},
            ], "category": category})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.join("run");
    let (ok, o, e) = hydralora(&[
        "train",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--method",
        "hydra",
        "--experts",
        "2",
        "--rank",
        "2",
        "--targets",
        "q_proj",
        "--steps",
        "2",
        "--eval-split",
        "0",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{o}\n{e}");
    assert!(
        e.contains("chat lines: rendered with the chat template of")
            && e.contains("tokenizer_config.json"),
        "{e}"
    );
    // A HydraLoRA run without an eval split still draws its router, from the training data.
    let svg = std::fs::read_to_string(out.join("router.svg")).unwrap();
    assert!(svg.contains(">a<") && svg.contains(">b<"), "{svg}");
    let svg = std::fs::read_to_string(out.join("router-by-layer.svg")).unwrap();
    assert!(svg.contains(">b e1<") && svg.contains(">layer 1<"), "{svg}");

    let adapter = out.join("adapter");
    let router = dir.join("eval-router.svg");
    let (ok, o, e) = hydralora(&[
        "eval",
        "--model",
        dir.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--max-tokens",
        "3",
        "--batch",
        "4",
        "--router-svg",
        router.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{o}\n{e}");
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    assert!(v["per_category"]["a"]["exact_match"].is_number(), "{v}");
    assert!(router.is_file() && dir.join("eval-router-by-layer.svg").is_file());
    let (ok, _, e) = hydralora(&[
        "eval",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--router-svg",
        router.to_str().unwrap(),
    ]);
    assert!(!ok && e.contains("HydraLoRA"), "{e}");

    // eval --template: an adapter trained with a template is evaluated with it.
    let alpaca = data_file(&dir);
    let (ok, o, e) = hydralora(&[
        "eval",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        alpaca.to_str().unwrap(),
        "--template",
        "Q: {instruction}\nA: ",
        "--no-generate",
    ]);
    assert!(ok, "{o}\n{e}");
    let (ok, _, e) = hydralora(&[
        "eval",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        alpaca.to_str().unwrap(),
        "--template",
        "Q: {instrution}",
    ]);
    assert!(!ok && e.contains("instrution"), "{e}");

    let (ok, o, e) = hydralora(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--chat",
        "--system",
        "be brief",
        "--prompt",
        "hi 3",
        "--max-tokens",
        "4",
    ]);
    assert!(ok, "{o}\n{e}");
    assert!(
        o.starts_with("[system]be brief\n[user]hi 3\n[assistant]"),
        "{o}"
    );
}
