//! llama.cpp itself, live: a LoRA trained here by `hydralora train`, written out by
//! `hydralora export --format gguf` and `hydralora merge --format gguf` (f32 and q8_0), and each
//! file loaded by llama.cpp, whose logits on the same token ids must equal ours.
//!
//! llama.cpp is node-llama-cpp's prebuilt CPU build (`tests/llamacpp/`: seconds to install from
//! npm, where building llama.cpp from source takes about 10 minutes on 2 cores), driven by
//! `tests/llamacpp/logits.mjs`. It needs `node` and `npm install --omit=optional` in
//! `tests/llamacpp` (`.ci/run` does both). Without them the test says how to get them and
//! passes, unless `HYDRALORA_REQUIRE_LLAMACPP=1` (set by `.ci/run`): then it fails.
//!
//! Tolerances, relative to max(1, max |logit|):
//! - llama.cpp with an f32 KV cache (and without flash attention, whose CPU kernel rounds to f16)
//!   computes in f32 as we do: the fixtures' logits tolerance, 1e-4 (on the fixture base it is
//!   4e-7 from the float64 reference).
//! - With llama.cpp's default f16 KV cache: `LLAMACPP_FLOAT_TOLERANCE`.
//! - A q8_0 file: llama.cpp also rounds the activations to 8 bits inside its quantized dot
//!   products, we do not: `LLAMACPP_QUANTIZED_TOLERANCE`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use hydralora::model::adapter::load_adapter;
use hydralora::model::verify::{LLAMACPP_FLOAT_TOLERANCE, LLAMACPP_QUANTIZED_TOLERANCE};
use hydralora::model::Llama;

use common::rel_err;

const GGUF_BASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures-gguf/tiny-f32/model.gguf"
);
const RUNNER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llamacpp");
/// llama.cpp and our engine both computing in f32 (see the module's doc).
const F32_TOLERANCE: f64 = 1e-4;
/// Token ids spread over the base's vocabulary of 512, evaluated as given (no BOS added).
const IDS: [u32; 20] = [
    1, 35, 300, 7, 128, 511, 64, 2, 99, 250, 17, 480, 5, 333, 42, 200, 401, 13, 77, 256,
];

/// The folder holding node-llama-cpp, or None (after saying why) when the test cannot run here.
fn llama_cpp_runner() -> Option<PathBuf> {
    let installed = Path::new(RUNNER).join("node_modules/node-llama-cpp/package.json");
    let node = Command::new("node").arg("--version").output();
    let problem = match node {
        Err(e) => format!("`node` does not run ({e})"),
        Ok(_) if !installed.is_file() => format!("{} is missing", installed.display()),
        Ok(_) => return Some(PathBuf::from(RUNNER)),
    };
    let how = format!("install Node.js, then `npm install --omit=optional` in {RUNNER}");
    if std::env::var("HYDRALORA_REQUIRE_LLAMACPP").as_deref() == Ok("1") {
        panic!("llama.cpp is required (HYDRALORA_REQUIRE_LLAMACPP=1) but {problem}: {how}");
    }
    eprintln!("llama.cpp check not run: {problem}; to run it, {how}");
    None
}

fn hydralora(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_hydralora"))
        .args(args)
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "hydralora {}:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hydralora export` or `merge` of `adapter` on the GGUF base, written to `out` as GGUF.
fn write_gguf(command: &str, adapter: &Path, out: &Path, extra: &[&str]) {
    let (adapter, out) = (adapter.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        command,
        "--model",
        GGUF_BASE,
        "--adapter",
        adapter,
        "--format",
        "gguf",
    ];
    hydralora(&[&args[..], extra, &["--out", out]].concat());
}

/// llama.cpp's logits for `IDS` on `model` (with `lora`), every position, flattened [T * V].
fn llama_cpp_logits(runner: &Path, model: &Path, lora: Option<&Path>, kv_cache: &str) -> Vec<f32> {
    let out = model.with_extension(format!(
        "{}{kv_cache}.json",
        if lora.is_some() { "lora-" } else { "" }
    ));
    let tokens: Vec<String> = IDS.iter().map(u32::to_string).collect();
    let mut cmd = Command::new("node");
    cmd.arg(runner.join("logits.mjs"))
        .arg(model)
        .args(["--kv-cache", kv_cache, "--tokens", &tokens.join(",")])
        .arg("--out")
        .arg(&out);
    if let Some(lora) = lora {
        cmd.arg("--lora").arg(lora);
    }
    let run = cmd.output().expect("node runs");
    assert!(
        run.status.success(),
        "llama.cpp on {}: {}",
        model.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rows = json["logits"].as_array().unwrap();
    assert_eq!(rows.len(), IDS.len());
    rows.iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn our_logits(model: &Path, adapter: Option<&Path>) -> Vec<f32> {
    let dev = common::device();
    let mut llama = Llama::load(&dev, model).unwrap();
    if let Some(adapter) = adapter {
        load_adapter(&mut llama, adapter).unwrap();
    }
    llama.logits(&IDS, 1).unwrap().to_vec_f32().unwrap()
}

fn check(what: &str, ours: &[f32], llama_cpp: &[f32], tolerance: f64) {
    let err = rel_err(ours, llama_cpp);
    println!("{what}: {err:.2e} from llama.cpp (tolerance {tolerance:.0e})");
    assert!(
        err <= tolerance,
        "{what}: {err} from llama.cpp, over {tolerance}"
    );
}

/// A few LoRA steps on every projection of the GGUF fixture base (llama.cpp wrote it), with a
/// learning rate high enough that the adapter moves the logits far more than any tolerance.
fn train_lora(dir: &Path) -> PathBuf {
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..32)
        .map(|i| {
            format!(
                r#"{{"instruction": "add {i} and {}", "input": "", "output": "{}"}}"#,
                i + 1,
                2 * i + 1
            )
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let run = dir.join("run");
    hydralora(&[
        "train",
        "--model",
        GGUF_BASE,
        "--data",
        data.to_str().unwrap(),
        "--method",
        "lora",
        "--rank",
        "4",
        "--targets",
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        "--lr",
        "2e-2",
        "--steps",
        "12",
        "--micro-batch",
        "4",
        "--eval-split",
        "0",
        "--output",
        run.to_str().unwrap(),
    ]);
    run.join("adapter")
}

#[test]
fn a_lora_trained_here_runs_in_llama_cpp_as_an_adapter_and_merged() {
    let Some(runner) = llama_cpp_runner() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("hydralora-llamacpp-live-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = Path::new(GGUF_BASE);
    let peft = train_lora(&dir);

    let adapter = dir.join("adapter.gguf");
    write_gguf("export", &peft, &adapter, &[]);
    let ours = our_logits(base, Some(&peft));
    // The same numbers whether we read the PEFT folder or the GGUF we wrote.
    let ours_from_gguf = our_logits(base, Some(&adapter));
    assert!(rel_err(&ours_from_gguf, &ours) <= F32_TOLERANCE);
    // The adapter changes the logits far more than any tolerance here, so the test can fail.
    let moved = rel_err(&our_logits(base, None), &ours);
    println!("the adapter moves the logits by {moved:.2e}");
    assert!(
        moved > 100.0 * F32_TOLERANCE,
        "the adapter barely moved the logits: {moved}"
    );

    check(
        "base + adapter.gguf, f32 KV cache",
        &ours,
        &llama_cpp_logits(&runner, base, Some(&adapter), "f32"),
        F32_TOLERANCE,
    );
    check(
        "base + adapter.gguf, llama.cpp's f16 KV cache",
        &ours,
        &llama_cpp_logits(&runner, base, Some(&adapter), "f16"),
        LLAMACPP_FLOAT_TOLERANCE,
    );

    for (weights, tolerance) in [
        ("f32", F32_TOLERANCE),
        ("q8_0", LLAMACPP_QUANTIZED_TOLERANCE),
    ] {
        let merged = dir.join(format!("merged-{weights}.gguf"));
        write_gguf("merge", &peft, &merged, &["--weights", weights]);
        let ours_merged = our_logits(&merged, None);
        if weights == "f32" {
            // Folding the adapter in changes nothing but the order of the sums.
            assert!(rel_err(&ours_merged, &ours) <= F32_TOLERANCE);
        }
        check(
            &format!("merged {weights}, f32 KV cache"),
            &ours_merged,
            &llama_cpp_logits(&runner, &merged, None, "f32"),
            tolerance,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
