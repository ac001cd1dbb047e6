//! The step benchmark's own promises, on a tiny benchmark config: no pipeline compiled after
//! the first step and no pool growth after the second (the first creates AdamW's moments), one submit per step, the loss the only readback,
//! dispatch counts that follow the adapter (HydraLoRA's packed down-projection and fused
//! router cost a few dispatches per adapted layer over LoRA on the same targets), and the
//! paired mode's ratios computed from its own timings. (Speed itself is measured by
//! `hydralora bench step`, never asserted here.)

mod common;

use std::sync::Mutex;

use common::device;
use hydralora::model::bench::{bench_step, bench_step_pair, BenchConfig, BenchMethod};

/// The counters read (dispatches, submits, pool peak) are the device's, shared by the tests
/// of this binary: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A two-layer model small enough for a test, in the benchmark config format.
fn tiny_config(test: &str) -> BenchConfig {
    let dir = std::env::temp_dir().join(format!("hydralora-bench-step-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{test}.json"));
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": false,
        "hidden_act": "silu",
        "bench": {"batch": 2, "seq": 16, "seed": 3,
                  "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]},
                  "hydra": {"r": 4, "alpha": 8, "experts": 3, "targets": ["gate_proj", "up_proj", "down_proj"]}}
    });
    std::fs::write(&path, json.to_string()).unwrap();
    BenchConfig::from_file(&path).unwrap()
}

#[test]
fn steps_compile_nothing_new_hold_the_pool_and_submit_once() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = tiny_config("steps");
    for method in [BenchMethod::Lora, BenchMethod::Hydra, BenchMethod::Full] {
        let r = bench_step(&device(), &cfg, method, None, 1, 4, false).unwrap();
        assert_eq!(r.pipelines_after_first_step, 0, "{method:?}");
        assert_eq!(
            r.submits_per_step, 1.0,
            "{method:?}: the loss is the only readback"
        );
        // The first step creates the optimizer moments; from the second on the peak is
        // the same (the second step's peak is the last one of a one-step run).
        let second = bench_step(&device(), &cfg, method, None, 1, 1, false).unwrap();
        assert_eq!(
            r.peak_pool_bytes_last_step, second.peak_pool_bytes_last_step,
            "{method:?}: the pool peak grew after the second step"
        );
        assert!(
            r.dispatches_per_step > 50.0,
            "{method:?}: {}",
            r.dispatches_per_step
        );
        assert!(r.median_s >= r.min_s && r.min_s > 0.0);
        assert_eq!(r.tokens_per_step, 32);
        assert_eq!(r.timed_steps, 4);
        // `--steps 0` (a memory measurement): the warm-up step alone, whose peak is the
        // first step's peak of any longer run.
        let warmup_only = bench_step(&device(), &cfg, method, None, 1, 0, false).unwrap();
        assert_eq!(warmup_only.timed_steps, 0, "{method:?}");
        assert_eq!(
            warmup_only.peak_pool_bytes_last_step, r.peak_pool_bytes_first_step,
            "{method:?}: the warm-up alone peaks where a longer run's first step does"
        );
        assert!(warmup_only.median_s > 0.0);
    }
}

#[test]
fn hydra_costs_a_few_dispatches_per_adapted_layer_over_lora() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = tiny_config("pair");
    let mlp: Vec<String> = ["gate_proj", "up_proj", "down_proj"]
        .map(String::from)
        .to_vec();
    let pair = (BenchMethod::Hydra, BenchMethod::Lora);
    let r = bench_step_pair(&device(), &cfg, pair, Some(mlp.clone()), 1, 3).unwrap();
    assert_eq!(
        (r.a.method.as_str(), r.b.method.as_str()),
        ("hydra", "lora")
    );
    assert_eq!(r.a.targets, mlp);
    assert_eq!(r.b.targets, mlp);
    // Per adapted layer (2 layers x 3 modules): the expansion forward and backward, and
    // nothing else: the router shares A's matmuls and its optimizer update.
    let extra = r.a.dispatches_per_step - r.b.dispatches_per_step;
    assert_eq!(
        extra,
        2.0 * 6.0,
        "hydra {} lora {}",
        r.a.dispatches_per_step,
        r.b.dispatches_per_step
    );
    let ratio = r.a.median_s / r.b.median_s;
    assert!((r.ratio_of_medians - ratio).abs() < 1e-12);
    assert!(r.median_ratio > 0.0 && r.median_ratio.is_finite());
}

#[test]
fn checkpointed_steps_hold_less_and_still_submit_once() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = tiny_config("checkpoint");
    let plain = bench_step(&device(), &cfg, BenchMethod::Lora, None, 1, 1, false).unwrap();
    cfg.checkpoint_activations = true;
    let checkpointed = bench_step(&device(), &cfg, BenchMethod::Lora, None, 1, 1, false).unwrap();
    assert!(!plain.checkpoint_activations && checkpointed.checkpoint_activations);
    assert_eq!(checkpointed.submits_per_step, 1.0);
    assert_eq!(checkpointed.pipelines_after_first_step, 0);
    assert!(
        checkpointed.peak_pool_bytes_last_step < plain.peak_pool_bytes_last_step,
        "{} vs {}",
        checkpointed.peak_pool_bytes_last_step,
        plain.peak_pool_bytes_last_step
    );
    // The estimate follows the setting and still bounds the peak.
    assert!(checkpointed.estimated_peak_bytes < plain.estimated_peak_bytes);
    assert!(checkpointed.estimated_peak_bytes >= checkpointed.peak_pool_bytes_last_step);
    // The recomputed layers cost dispatches: a second forward of the layers.
    assert!(checkpointed.dispatches_per_step > plain.dispatches_per_step);
}

/// A dry run (`Device::set_dry_run`, `bench step --dry-run`) drops every dispatch but
/// allocates as a real step does: its pool peaks and dispatch count equal a real step's to
/// the byte, for each method, a quantized base and checkpointing. Each run has a device of
/// its own, so nothing else shares its pool.
#[test]
fn a_dry_run_holds_exactly_what_a_real_step_holds() {
    use hydralora::model::engine::{DType, Device};
    let mut cfg = tiny_config("dry-run");
    let cases = [
        (BenchMethod::Lora, DType::F32, false),
        (BenchMethod::Hydra, DType::F32, false),
        (BenchMethod::Full, DType::F32, false),
        (BenchMethod::Lora, DType::Q8_0, true),
    ];
    for (method, weights, checkpoint) in cases {
        cfg.weights = weights;
        cfg.checkpoint_activations = checkpoint;
        let run = |dry: bool| {
            let device = Device::new().expect("GPU tests need an adapter");
            device.set_dry_run(dry);
            bench_step(&device, &cfg, method, None, 1, 1, false).unwrap()
        };
        let (real, dry) = (run(false), run(true));
        let what = format!("{method:?}, {weights:?} weights, checkpointing {checkpoint}");
        assert!(dry.dry_run && !real.dry_run);
        assert_eq!(
            (
                dry.peak_pool_bytes_first_step,
                dry.peak_pool_bytes_last_step
            ),
            (
                real.peak_pool_bytes_first_step,
                real.peak_pool_bytes_last_step
            ),
            "{what}"
        );
        assert_eq!(dry.dispatches_per_step, real.dispatches_per_step, "{what}");
        assert!(real.peak_pool_bytes_last_step > 0, "{what}");
    }
}
