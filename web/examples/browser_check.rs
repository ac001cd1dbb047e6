//! The native half of the browser test: given what `web/test/browser.mjs` measured in
//! headless Chromium (OUT/results.json and the adapters the page downloaded), checks that
//!
//! 1. the page's fine-tuning losses equal the native engine's for the same base, seed, data
//!    and settings (the same `Session` code, here on the native Vulkan driver), each step
//!    within `LOSS_TOLERANCE` relative;
//! 2. each downloaded adapter loads natively and gives the logits the page computed for the
//!    probe prompt, within the fixtures' logits tolerance;
//! 3. Chromium's WebGPU compiled every kernel variant the device can run (no refusals); the
//!    kernel families each side ran are listed (they are chosen per device).
//!
//!   cargo run -p hydralora-web --example browser_check -- OUT BASE_DIR
//!
//! Exits non-zero, saying which check failed and by how much.

use std::path::Path;

use hydralora_model::adapter::load_adapter;
use hydralora_model::engine::no_grad;
use hydralora_model::{Llama, TextCodec};
use hydralora_web::session::{Method, RunSettings, Session};
use serde_json::Value;

/// Per-step loss agreement, relative. Both runs do the same f32 math through two WGSL
/// compilers (Tint and naga), and the browser device (no subgroups) takes the tree-reduction
/// and tiled-matmul kernels where lavapipe takes subgroup ones, so sums are ordered
/// differently: the same situation as the fixtures' float32 torch against our engine, whose
/// AdamW-curve tolerance is 5e-4 relative over 10 steps. Adam normalises each update, so
/// rounding differences grow with the steps; 30 steps get twice that.
const LOSS_TOLERANCE: f64 = 1e-3;
/// The fixtures' logits tolerance: max |a - b| <= 1e-4 max(1, max |b|).
const LOGITS_TOLERANCE: f64 = 1e-4;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 {
        eprintln!("usage: browser_check OUT BASE_DIR");
        std::process::exit(2);
    }
    match pollster::block_on(check(Path::new(&args[0]), Path::new(&args[1]))) {
        Ok(()) => println!("browser check: passed"),
        Err(why) => {
            eprintln!("browser check FAILED: {why}");
            std::process::exit(1);
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

async fn check(out: &Path, base: &Path) -> Result<(), String> {
    let results: Value = serde_json::from_slice(&read(&out.join("results.json"))?)
        .map_err(|e| format!("results.json: {e}"))?;
    let steps = results["steps"].as_u64().ok_or("results.json: no steps")? as usize;
    let batch = results["batch"].as_u64().ok_or("results.json: no batch")? as usize;
    let seed = results["seed"].as_u64().ok_or("results.json: no seed")?;
    let probe = results["probe"].as_str().ok_or("results.json: no probe")?;
    let mut failures = Vec::new();
    let mut native_kernels = Vec::new();
    for (name, method) in [("lora", Method::Lora), ("hydra", Method::Hydra)] {
        let run = &results["runs"][name];
        let page_losses: Vec<f64> = (run["losses"].as_array())
            .ok_or(format!("results.json: no {name} losses"))?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        // 1. The same run natively.
        let mut session = Session::open().await.map_err(|e| e.to_string())?;
        let codec = base.join("char_codec.json");
        session
            .load_base(
                &read(&base.join("config.json"))?,
                read(&base.join("model.safetensors"))?,
                codec
                    .is_file()
                    .then(|| read(&codec))
                    .transpose()?
                    .as_deref(),
            )
            .map_err(|e| e.to_string())?;
        let settings = RunSettings {
            method,
            steps,
            batch,
            seed,
        };
        session
            .start_run(&settings, None)
            .map_err(|e| e.to_string())?;
        let mut worst: f64 = 0.0;
        let (mut tokens, mut seconds) = (0usize, 0f64);
        for (i, page) in page_losses.iter().enumerate() {
            let stats = session.step().await.map_err(|e| e.to_string())?;
            tokens += stats.tokens;
            seconds += stats.seconds;
            let native = f64::from(stats.loss);
            let rel = (page - native).abs() / native.abs().max(1e-12);
            worst = worst.max(rel);
            if rel > LOSS_TOLERANCE {
                failures.push(format!(
                    "{name} step {}: page loss {page:.6}, native {native:.6} (relative {rel:.2e} > {LOSS_TOLERANCE:.0e})",
                    i + 1
                ));
            }
        }
        if page_losses.len() != steps {
            failures.push(format!(
                "{name}: the page ran {} of {steps} steps",
                page_losses.len()
            ));
        }
        println!(
            "{name}: {} steps, losses {:.4} -> {:.4}, page vs native worst relative difference {worst:.2e} (tolerance {LOSS_TOLERANCE:.0e})",
            page_losses.len(),
            page_losses.first().copied().unwrap_or(f64::NAN),
            page_losses.last().copied().unwrap_or(f64::NAN),
        );
        println!(
            "{name}: tokens/s, page {:.0} ({}), native {:.0} (this machine's Vulkan driver)",
            run["tokens_per_second"].as_f64().unwrap_or(f64::NAN),
            results["device"]
                .as_str()
                .map_or("?", |d| d.lines().nth(1).unwrap_or(d).trim()),
            tokens as f64 / seconds
        );
        native_kernels = session.kernels_used();

        // 2. The downloaded adapter, loaded natively, against the page's logits.
        let page_logits: Vec<f64> = (run["logits"].as_array())
            .ok_or(format!("results.json: no {name} logits"))?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let device = hydralora_model::engine::Device::new().map_err(|e| e.to_string())?;
        let mut model = Llama::load(&device, base).map_err(|e| e.to_string())?;
        load_adapter(&mut model, &out.join(format!("{name}-adapter")))
            .map_err(|e| format!("loading the downloaded {name} adapter: {e}"))?;
        let codec = hydralora_model::CharCodec::load(base.join("char_codec.json"))
            .map_err(|e| e.to_string())?;
        let ids = hydralora_model::data::encode_prompt(&codec as &dyn TextCodec, probe)
            .map_err(|e| e.to_string())?;
        let native: Vec<f32> = no_grad(|| model.logits(&ids, 1))
            .and_then(|l| Ok(l.to_vec_f32()?))
            .map_err(|e| e.to_string())?;
        if native.len() != page_logits.len() {
            failures.push(format!(
                "{name}: the page gave {} logits, natively {}",
                page_logits.len(),
                native.len()
            ));
            continue;
        }
        let scale = page_logits.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let diff = (native.iter().zip(&page_logits))
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        println!(
            "{name}: downloaded adapter, loaded natively: logits differ from the page's by at most {diff:.2e} (limit {:.2e})",
            LOGITS_TOLERANCE * scale
        );
        if diff > LOGITS_TOLERANCE * scale {
            failures.push(format!("{name}: logits differ by {diff:.2e}"));
        }
    }

    // 3. Kernels.
    let refused: Vec<&str> = (results["kernel_failures"].as_array())
        .ok_or("results.json: no kernel_failures")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for r in &refused {
        failures.push(format!("Chromium refused a kernel: {r}"));
    }
    let page_kernels: Vec<&str> = (results["kernels_used"].as_array())
        .ok_or("results.json: no kernels_used")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // Natively lavapipe runs subgroup variants where the browser (no subgroups) runs their
    // portable twins, so runs are compared by kernel family: `matmul_subgroup+f16:nt32` and
    // `matmul_tiled:nt` are both `matmul`.
    let family = |k: &str| -> String {
        let variant = k.split([':', '+']).next().unwrap_or(k);
        ["_subgroup", "_tiled", "_splitk"]
            .iter()
            .fold(variant.to_string(), |v, suffix| v.replace(suffix, ""))
    };
    let page_families: std::collections::BTreeSet<String> =
        page_kernels.iter().map(|k| family(k)).collect();
    let native_families: std::collections::BTreeSet<String> =
        native_kernels.iter().map(|k| family(k)).collect();
    let missing: Vec<&String> = native_families.difference(&page_families).collect();
    println!(
        "kernels: the page ran {} ({} families), the native run {} ({} families); Chromium compiled every variant the device supports, refusing {}",
        page_kernels.len(),
        page_families.len(),
        native_kernels.len(),
        native_families.len(),
        refused.len()
    );
    if !missing.is_empty() {
        // Kernels are chosen per device (lavapipe takes flash attention with subgroups, a
        // device without them takes the composed attention for short sequences), so this is
        // said, not failed; the compile check above covers every variant either way.
        println!(
            "  families the native run used and the page did not (chosen per device): {missing:?}"
        );
    }
    let errors = results["errors"].as_array().map_or(0, Vec::len);
    if errors > 0 {
        failures.push(format!("the page reported errors: {}", results["errors"]));
    }
    match failures.is_empty() {
        true => Ok(()),
        false => Err(failures.join("\n  ")),
    }
}
