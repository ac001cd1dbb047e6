//! Faults a long run meets: the process killed at random moments (mid-checkpoint included)
//! and resumed, and two trainers sharing one device.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hydralora::engine::rng::Rng;
use hydralora::model::adapter::{attach, AdapterConfig};
use hydralora::model::data::TokenizedExample;
use hydralora::model::train::{TrainSettings, Trainer};
use hydralora::model::Llama;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");

fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hydralora-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A character-codec copy of tiny-llama in `dir/model`, and 16 lines of data beside it.
fn model_dir(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    common::char_model_dir(&model);
    let data: Vec<String> = (0..16)
        .map(|i| {
            format!(
                r#"{{"text": "sample {i} of the run, {}"}}"#,
                "xy".repeat(i % 5)
            )
        })
        .collect();
    std::fs::write(dir.join("data.jsonl"), data.join("\n")).unwrap();
    model
}

/// The loss each step ended with: the last line written for the step wins (a step redone
/// after a crash is written again); a line cut by the kill is skipped.
fn final_losses(metrics: &Path) -> BTreeMap<u64, f64> {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if let (Some(s), Some(l)) = (v["step"].as_u64(), v["loss"].as_f64()) {
                out.insert(s, l);
            }
        }
    }
    out
}

#[test]
fn killed_at_random_moments_and_resumed_it_gives_the_losses_of_one_run() {
    let _ = common::device(); // fail, never skip, without an adapter
    let dir = work_dir("kill");
    let model = model_dir(&dir);
    let steps = 150;
    let args = |out: &Path| -> Vec<String> {
        let (m, d, o) = (
            model.display().to_string(),
            dir.join("data.jsonl").display().to_string(),
            out.display().to_string(),
        );
        let list = [
            "train",
            "--model",
            &m,
            "--data",
            &d,
            "--output",
            &o,
            "--method",
            "hydra",
            "--rank",
            "2",
            "--experts",
            "2",
            "--targets",
            "q_proj,down_proj",
            "--dropout",
            "0.1",
            "--lr",
            "5e-3",
            "--micro-batch",
            "2",
            "--eval-split",
            "0",
            "--save-interval",
            "1",
            "--steps",
            "150",
        ];
        list.iter().map(|s| s.to_string()).collect()
    };
    let straight_dir = dir.join("straight");
    let ok = Command::new(env!("CARGO_BIN_EXE_hydralora"))
        .args(args(&straight_dir))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let straight = final_losses(&straight_dir.join("metrics.jsonl"));
    assert_eq!(straight.len(), steps);

    let out = dir.join("killed");
    let mut rng = Rng::new(42);
    let mut kills = 0;
    for attempt in 0..40 {
        let resume = out.join("checkpoint").exists() || out.join("checkpoint.old").exists();
        let mut cmd_args = args(&out);
        if resume {
            cmd_args.push("--resume".into());
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_hydralora"))
            .args(&cmd_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if attempt < 8 {
            // SIGKILL after a random 0.2-1.2 s: mid-step, mid-checkpoint, mid-metrics line.
            std::thread::sleep(Duration::from_millis(200 + rng.below(1000)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
            let _ = child.wait();
            continue;
        }
        let result = child.wait_with_output().unwrap();
        assert!(
            result.status.success(),
            "the last resume fails: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        break;
    }
    assert!(
        kills >= 5,
        "the run was killed only {kills} times: too fast for this test"
    );
    assert_eq!(
        final_losses(&out.join("metrics.jsonl")),
        straight,
        "after {kills} kills and resumes"
    );
}

fn examples(seed: u64) -> Vec<TokenizedExample> {
    let mut rng = Rng::new(seed);
    (0..8)
        .map(|_| {
            let ids: Vec<u32> = (0..9).map(|_| 3 + rng.below(90) as u32).collect();
            TokenizedExample {
                labels: ids.iter().map(|&t| t as i32).collect(),
                ids,
                category: None,
            }
        })
        .collect()
}

fn trainer(cfg: AdapterConfig, seed: u64) -> Trainer {
    let mut model = Llama::load(&common::device(), TINY).unwrap();
    attach(&mut model, &cfg, seed).unwrap();
    let settings = TrainSettings {
        lr: 1e-2,
        total_steps: 6,
        micro_batch: 2,
        seed,
        ..Default::default()
    };
    Trainer::new(model, examples(seed), 0, settings).unwrap()
}

#[test]
fn two_trainers_interleaved_on_one_device_match_each_run_alone() {
    let lora = || trainer(AdapterConfig::lora(4, 8.0, &["q_proj", "v_proj"]), 1);
    let hydra = || {
        trainer(
            AdapterConfig::hydra(2, 4.0, 3, &["up_proj", "down_proj"]),
            2,
        )
    };
    let alone_a: Vec<f32> = {
        let mut t = lora();
        (0..6).map(|_| t.step().unwrap().loss).collect()
    };
    let alone_b: Vec<f32> = {
        let mut t = hydra();
        (0..6).map(|_| t.step().unwrap().loss).collect()
    };
    // Both alive at once on the same device, steps interleaved (and from two threads).
    let (mut a, mut b) = (lora(), hydra());
    let mut inter_a = Vec::new();
    let mut inter_b = Vec::new();
    for _ in 0..3 {
        inter_a.push(a.step().unwrap().loss);
        inter_b.push(b.step().unwrap().loss);
    }
    let handle =
        std::thread::spawn(move || (0..3).map(|_| b.step().unwrap().loss).collect::<Vec<f32>>());
    for _ in 0..3 {
        inter_a.push(a.step().unwrap().loss);
    }
    inter_b.extend(handle.join().unwrap());
    assert_eq!(inter_a, alone_a);
    assert_eq!(inter_b, alone_b);
}

#[test]
fn a_batch_over_the_binding_limit_is_refused_up_front_with_the_numbers() {
    let model = Llama::load(&common::device(), TINY).unwrap();
    let limit = model.device().info().max_binding_bytes() as usize;
    // The MLP activations are 160 x 4 bytes per token: this many sequences of 128 tokens
    // overflow them.
    let too_many = limit / (128 * 160 * 4) + 1;
    let err = model
        .check_batch_fits(too_many, 128)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MLP activations")
            && err.contains(&limit.to_string())
            && err.contains("micro-batch of at most"),
        "{err}"
    );
    assert!(model.check_batch_fits(4, 128).is_ok());
    // The logits are not checked: the loss never holds them whole (tests/large_tensors.rs
    // runs a step whose logits would pass the limit).
    // 600 x 4 heads x 128^2 x 4 bytes = 157 MB of attention scores would not fit one binding
    // on lavapipe, but attention that large runs on the flash kernels, which store none.
    assert!(model.check_batch_fits(600, 128).is_ok());
    // The trainer refuses such a run before its first step.
    let long: Vec<TokenizedExample> = (0..4)
        .map(|_| TokenizedExample {
            ids: vec![5; 128],
            labels: vec![5; 128],
            category: None,
        })
        .collect();
    let settings = TrainSettings {
        micro_batch: too_many,
        ..Default::default()
    };
    let mut model = model;
    attach(&mut model, &AdapterConfig::lora(2, 4.0, &["q_proj"]), 0).unwrap();
    let err = Trainer::new(model, long, 0, settings)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("needs") && err.contains("bytes"), "{err}");
}

#[test]
fn a_lost_device_is_reported_as_such_not_a_crash() {
    // A device of its own: this test breaks it.
    let dev = hydralora::engine::Device::new().unwrap();
    let x = hydralora::engine::Tensor::from_slice(&dev, &[1.0, 2.0], &[2]).unwrap();
    assert_eq!(x.to_vec_f32().unwrap(), vec![1.0, 2.0]);
    // What a driver reset or unplugged GPU does: the wgpu device goes away under us.
    dev.wgpu().0.destroy();
    let err = x
        .add(&x)
        .and_then(|y| y.to_vec_f32())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("device was lost") && err.contains("resume from the last checkpoint"),
        "{err}"
    );
    assert!(dev.synchronize().is_err());
}
