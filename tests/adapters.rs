//! LoRA and HydraLoRA adapters: file round trips, merge, gradients of the adapted layer,
//! the frozen base, and errors that name what is wrong.

mod common;

use std::path::{Path, PathBuf};

use hydralora::engine::gradcheck::{gradcheck, GradcheckOptions};
use hydralora::engine::Tensor;
use hydralora::model::adapter::merge_lora;
use hydralora::model::adapter::{
    attach, load_adapter, save_adapter, trainable_count, trainable_params, AdapterConfig,
};
use hydralora::model::verify::max_abs_error;
use hydralora::model::{Adapter, Linear, Llama};
use proptest::prelude::*;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");
const IDS: [u32; 12] = [1, 5, 9, 33, 2, 7, 80, 64, 11, 3, 95, 0];

fn tiny() -> Llama {
    Llama::load(&common::device(), TINY).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hydralora-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Gives every B random values so the adapter changes the logits.
fn randomise_b(model: &Llama, seed: u64) {
    for (i, (_, _, ad)) in model.adapters().enumerate() {
        ad.b.write_f32(&common::values(ad.b.numel(), -0.2, 0.2, seed + i as u64))
            .unwrap();
    }
}

fn logits(model: &Llama) -> Vec<f32> {
    model.logits(&IDS, 2).unwrap().to_vec_f32().unwrap()
}

fn round_trip(cfg: AdapterConfig, name: &str) {
    let mut model = tiny();
    let base = logits(&model);
    attach(&mut model, &cfg, 3).unwrap();
    assert_eq!(
        logits(&model),
        base,
        "a fresh adapter (B = 0) leaves the model unchanged"
    );
    randomise_b(&model, 10);
    let adapted = logits(&model);
    assert!(
        max_abs_error(&adapted, &base) > 1e-3,
        "the randomised adapter changes the logits"
    );
    let dir = temp_dir(name);
    save_adapter(&model, &dir).unwrap();
    let mut reloaded = tiny();
    let loaded_cfg = load_adapter(&mut reloaded, &dir).unwrap();
    assert_eq!(loaded_cfg, cfg);
    assert_eq!(
        logits(&reloaded),
        adapted,
        "save then load gives identical logits"
    );
}

#[test]
fn lora_save_then_load_gives_identical_logits() {
    round_trip(
        AdapterConfig::lora(4, 8.0, &["q_proj", "v_proj", "down_proj"]),
        "lora-rt",
    );
}

#[test]
fn hydra_save_then_load_gives_identical_logits() {
    round_trip(
        AdapterConfig::hydra(2, 4.0, 3, &["k_proj", "gate_proj", "up_proj"]),
        "hydra-rt",
    );
}

#[test]
fn merged_lora_model_matches_base_plus_adapter() {
    let mut model = tiny();
    attach(
        &mut model,
        &AdapterConfig::lora(4, 8.0, &["q_proj", "o_proj", "up_proj"]),
        1,
    )
    .unwrap();
    randomise_b(&model, 20);
    let adapted = logits(&model);
    let adapter_dir = temp_dir("merge-adapter");
    save_adapter(&model, &adapter_dir).unwrap();
    let out = temp_dir("merge-out");
    merge_lora(Path::new(TINY), &adapter_dir, &out).unwrap();
    let merged = Llama::load(&common::device(), &out).unwrap();
    let max_ref = adapted.iter().fold(1.0f32, |m, x| m.max(x.abs())) as f64;
    let err = max_abs_error(&logits(&merged), &adapted);
    assert!(err <= 1e-4 * max_ref, "merged logits differ by {err}");
}

#[test]
fn hydra_adapters_refuse_to_merge_and_say_why() {
    let mut model = tiny();
    attach(
        &mut model,
        &AdapterConfig::hydra(2, 4.0, 3, &["up_proj"]),
        1,
    )
    .unwrap();
    let dir = temp_dir("merge-hydra");
    save_adapter(&model, &dir).unwrap();
    let err = merge_lora(Path::new(TINY), &dir, &temp_dir("merge-hydra-out"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HydraLoRA") && err.contains("depends on each token"),
        "{err}"
    );
}

#[test]
fn the_frozen_base_gets_no_gradient_and_no_gradient_memory() {
    // A device of its own: the pool's peak must not see the other tests' tensors.
    let own = hydralora::engine::Device::new().expect("GPU tests need an adapter");
    let mut model = Llama::load(&own, TINY).unwrap();
    let cfg = AdapterConfig::hydra(4, 8.0, 3, &["q_proj", "gate_proj", "up_proj", "down_proj"]);
    attach(&mut model, &cfg, 2).unwrap();
    randomise_b(&model, 30);
    let base_weights: Vec<&Tensor> = model
        .layers
        .iter()
        .flat_map(|l| {
            [
                &l.q_proj.weight,
                &l.k_proj.weight,
                &l.gate_proj.weight,
                &l.down_proj.weight,
                &l.input_norm,
            ]
        })
        .collect();
    assert!(
        base_weights.iter().all(|w| !w.tracks_grad()),
        "base weights never enter the graph"
    );
    let base_bytes: u64 = base_weights.iter().map(|w| w.size_in_bytes()).sum();
    let labels: Vec<i32> = IDS.iter().map(|&i| i as i32).collect();
    let loss = model
        .causal_lm_loss(&model.forward(&IDS, 2, None).unwrap(), &labels)
        .unwrap();
    let dev = model.device().clone();
    dev.synchronize().unwrap();
    dev.reset_peak();
    let before = dev.pool_stats().in_use;
    let grads = loss.backward().unwrap();
    dev.synchronize().unwrap();
    let backward_bytes = dev.pool_stats().peak_in_use - before;
    let params = trainable_params(&model);
    assert_eq!(
        grads.len(),
        params.len(),
        "exactly the adapter parameters get gradients"
    );
    assert!(params.iter().all(|p| grads.get(p).is_some()));
    assert!(base_weights.iter().all(|w| grads.get(w).is_none()));
    assert!(
        backward_bytes < base_bytes,
        "backward held {backward_bytes} bytes, as much as the frozen weights ({base_bytes})"
    );
    assert_eq!(
        trainable_count(&model),
        params.iter().map(|p| p.numel()).sum::<usize>()
    );
}

fn adapter_errors(cfg: AdapterConfig) -> String {
    let mut model = tiny();
    attach(&mut model, &cfg, 0).unwrap_err().to_string()
}

#[test]
fn bad_adapter_settings_are_errors_that_name_the_field() {
    let e = adapter_errors(AdapterConfig::lora(4, 8.0, &["c_attn"]));
    assert!(e.contains("target_modules") && e.contains("c_attn"), "{e}");
    let e = adapter_errors(AdapterConfig::lora(0, 8.0, &["q_proj"]));
    assert!(e.contains("`r`") && e.contains("at least 1"), "{e}");
    let e = adapter_errors(AdapterConfig::hydra(2, 4.0, 0, &["q_proj"]));
    assert!(
        e.contains("lora_nums") && e.contains("at least one expert"),
        "{e}"
    );
}

#[test]
fn adapter_files_that_do_not_fit_the_model_name_the_tensor_and_both_shapes() {
    // An adapter made for a wider model: A is [4, 96] where the model has d_in 64.
    let dir = temp_dir("bad-shape");
    let cfg = AdapterConfig::lora(4, 8.0, &["q_proj"]);
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_string(&cfg.to_json()).unwrap(),
    )
    .unwrap();
    let a = vec![0.0f32; 4 * 96];
    let b = vec![0.0f32; 64 * 4];
    let mut tensors = Vec::new();
    for l in 0..2 {
        let key = format!("base_model.model.model.layers.{l}.self_attn.q_proj");
        tensors.push((format!("{key}.lora_A.weight"), vec![4, 96], a.as_slice()));
        tensors.push((format!("{key}.lora_B.weight"), vec![64, 4], b.as_slice()));
    }
    hydralora::model::write_safetensors(dir.join("adapter_model.safetensors"), &tensors, &[])
        .unwrap();
    let e = load_adapter(&mut tiny(), &dir).unwrap_err().to_string();
    assert!(
        e.contains("layers.0.self_attn.q_proj.lora_A.weight")
            && e.contains("[4, 64]")
            && e.contains("[4, 96]"),
        "{e}"
    );

    // A tensor the config does not imply.
    let good_a = vec![0.0f32; 4 * 64];
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = tensors
        .into_iter()
        .map(|(n, s, v)| {
            if s == [4, 96] {
                (n, vec![4, 64], good_a.as_slice())
            } else {
                (n, s, v)
            }
        })
        .collect();
    tensors.push((
        "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight".into(),
        vec![4, 64],
        good_a.as_slice(),
    ));
    hydralora::model::write_safetensors(dir.join("adapter_model.safetensors"), &tensors, &[])
        .unwrap();
    let e = load_adapter(&mut tiny(), &dir).unwrap_err().to_string();
    assert!(
        e.contains("unexpected") && e.contains("mlp.up_proj.lora_A"),
        "{e}"
    );

    // A missing expert's B of a HydraLoRA adapter.
    let mut model = tiny();
    attach(
        &mut model,
        &AdapterConfig::hydra(2, 4.0, 3, &["up_proj"]),
        0,
    )
    .unwrap();
    let hdir = temp_dir("missing-head");
    save_adapter(&model, &hdir).unwrap();
    let mut cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hdir.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg_json["lora_nums"] = serde_json::json!(4);
    std::fs::write(hdir.join("adapter_config.json"), cfg_json.to_string()).unwrap();
    let e = load_adapter(&mut tiny(), &hdir).unwrap_err().to_string();
    assert!(e.contains("lora_B3") && e.contains("[160, 2]"), "{e}");
}

/// The adapted linear y = x W^T + scale z B^T as a function of (x, [A; router], B).
fn adapted_layer(
    w: &Tensor,
    scale: f32,
    top_k: Option<usize>,
    hydra: bool,
    rank: usize,
) -> impl Fn(&[Tensor]) -> hydralora::engine::Result<Tensor> + '_ {
    move |xs: &[Tensor]| {
        let adapter = Adapter {
            down: xs[1].clone(),
            b: xs[2].clone(),
            rank,
            routed: hydra,
            scale,
            top_k,
            last_gates: Default::default(),
            record_gates: false,
            dropout: Default::default(),
        };
        Linear {
            weight: w.clone(),
            adapter: Some(adapter),
            half_inputs: false,
        }
        .forward(&xs[0])
    }
}

/// The smallest gap, over rows, between the k-th and (k+1)-th largest gate: finite
/// differences are only valid away from a change of the selected experts.
fn top_k_margin(x: &[f32], router: &[f32], t: usize, d: usize, n: usize, k: usize) -> f32 {
    (0..t)
        .map(|row| {
            let mut logits: Vec<f32> = (0..n)
                .map(|i| (0..d).map(|j| x[row * d + j] * router[i * d + j]).sum())
                .collect();
            logits.sort_by(|a, b| b.total_cmp(a));
            logits[k - 1] - logits[k]
        })
        .fold(f32::INFINITY, f32::min)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// Autodiff of the whole adapted layer against finite differences, for LoRA and
    /// HydraLoRA with and without top-k. Tolerance: gradcheck's f32 defaults (1e-2 abs + rel)
    /// for a 1e-3 step.
    #[test]
    fn gradcheck_of_the_adapted_layer(t in 1usize..6, d_in in 1usize..9, d_out in 1usize..7, r in 1usize..4, n in 1usize..5, mode in 0usize..3, seed in 0u64..1000) {
        let dev = common::device();
        let hydra = mode > 0 && n > 1;
        let top_k = (mode == 2 && n > 2).then_some(n - 1);
        let experts = if hydra { n } else { 1 };
        let mk = |shape: &[usize], s: u64| Tensor::from_slice(&dev, &common::values(shape.iter().product(), -1.0, 1.0, seed * 31 + s), shape).unwrap();
        let x = mk(&[t, d_in], 1);
        // The down-projection: A's r rows, then (HydraLoRA) the router's.
        let router_rows = if hydra { experts } else { 0 };
        let down = mk(&[r + router_rows, d_in], 2);
        if let Some(k) = top_k {
            let router = down.to_vec_f32().unwrap()[r * d_in..].to_vec();
            let margin = top_k_margin(&x.to_vec_f32().unwrap(), &router, t, d_in, experts, k);
            prop_assume!(margin > 0.05);
        }
        let w = mk(&[d_out, d_in], 0);
        let inputs = [x, down, mk(&[d_out, experts * r], 3)];
        let f = adapted_layer(&w, 0.7, top_k, hydra, r);
        let report = gradcheck(f, &inputs, &GradcheckOptions { max_checks_per_input: 12, seed, ..Default::default() }).unwrap();
        prop_assert!(report.passed(), "{}", report);
        // The frozen weight is not an input: no gradient of it is ever computed.
        prop_assert!(!w.tracks_grad());
    }
}

#[test]
fn dropout_masks_have_the_right_statistics() {
    let p = 0.3;
    let mask = hydralora::model::adapter::dropout_mask(100_000, p, 7);
    let zeros = mask.iter().filter(|&&m| m == 0.0).count() as f64 / mask.len() as f64;
    let mean = mask.iter().map(|&m| m as f64).sum::<f64>() / mask.len() as f64;
    // 5 standard deviations of a binomial fraction over 100k draws.
    assert!(
        (zeros - p as f64).abs() < 5.0 * (0.3f64 * 0.7 / 1e5).sqrt(),
        "{zeros}"
    );
    assert!(
        (mean - 1.0).abs() < 0.01,
        "inverted dropout keeps the mean: {mean}"
    );
    assert!(mask
        .iter()
        .all(|&m| m == 0.0 || (m - 1.0 / 0.7).abs() < 1e-6));
}

#[test]
fn dropout_acts_only_while_training_and_is_seeded() {
    let mut plain = tiny();
    let cfg = AdapterConfig::lora(4, 8.0, &["q_proj", "up_proj"]);
    attach(&mut plain, &cfg, 1).unwrap();
    randomise_b(&plain, 40);
    let mut dropped = tiny();
    attach(
        &mut dropped,
        &AdapterConfig {
            dropout: 0.5,
            ..cfg
        },
        1,
    )
    .unwrap();
    randomise_b(&dropped, 40);
    assert_eq!(
        logits(&dropped),
        logits(&plain),
        "no dropout at inference (no_grad)"
    );
    let train_logits = |m: &Llama, seed: u64| {
        hydralora::model::adapter::set_dropout_seed(m, seed);
        m.forward(&IDS, 2, None).unwrap().to_vec_f32().unwrap()
    };
    let a = train_logits(&dropped, 3);
    assert_ne!(a, logits(&plain), "dropout changes the training forward");
    assert_eq!(
        a,
        train_logits(&dropped, 3),
        "the same seed draws the same masks"
    );
    assert_ne!(a, train_logits(&dropped, 4));
}

/// A saved adapter names its base as PEFT's `AutoPeftModelForCausalLM` needs: the absolute
/// folder the base was loaded from (a model built in memory names none).
#[test]
fn a_saved_adapter_names_the_folder_of_its_base() {
    let mut model = tiny();
    attach(&mut model, &AdapterConfig::lora(2, 4.0, &["q_proj"]), 0).unwrap();
    let dir = temp_dir("base-name");
    save_adapter(&model, &dir).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    let named = config["base_model_name_or_path"].as_str().unwrap();
    assert!(Path::new(named).is_absolute(), "{named}");
    assert_eq!(
        std::fs::canonicalize(named).unwrap(),
        std::fs::canonicalize(TINY).unwrap()
    );

    model.base_name = None;
    save_adapter(&model, &dir).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert!(config["base_model_name_or_path"].is_null());
}
