//! Parity with Hugging Face `transformers` + `peft` on the cases in `tests/fixtures-extra`, made by
//! `scripts/make_fixtures.py` (same layout and tolerances as `../shared/fixtures`): multi-head
//! attention with tied embeddings, rope_theta 5e5, three layers and bf16 weights; grouped-query
//! attention with one kv head, head_dim != hidden / heads, llama3 rope scaling and f16 weights;
//! LoRA on mixed attention and MLP targets (one with rsLoRA) and HydraLoRA with N = 2 and 4;
//! and a quantized base as llama.cpp writes it (`gguf-q4-k-m`: Q4_K layers, Q6_K output, kept
//! as those blocks on the device) with LoRA on all seven targets and HydraLoRA, its gradients and
//! AdamW curves against float64 on the file's dequantized weights.
//!
//! Unlike `tests/parity.rs`, this always reads the committed folder (never `$HYDRALORA_FIXTURES`),
//! so CI covers these cases whatever the environment says.

mod common;

use std::path::PathBuf;

use hydralora::model::verify::{adapter_dirs, check_all, find_cases};

fn fixtures_extra() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures-extra"))
}

#[test]
fn extra_cases_match_transformers_peft_and_hydralora() {
    let root = fixtures_extra();
    let cases = find_cases(&root).expect("fixture cases in tests/fixtures-extra");
    let adapters: usize = cases
        .iter()
        .map(|c| adapter_dirs(c).expect("adapter folders").len())
        .sum();
    assert!(
        cases.len() >= 3,
        "expected at least 3 cases, found {cases:?}"
    );
    assert!(
        cases.iter().any(|c| c.join("model.gguf").is_file()),
        "expected a GGUF case, found {cases:?}"
    );
    assert!(
        adapters >= 6,
        "expected at least 6 adapter folders, found {adapters}"
    );

    let checks = check_all(&common::device(), &root).unwrap_or_else(|e| panic!("{e}"));
    // Per case: 2 base checks; per adapter: logits, loss, gradients and the AdamW curve.
    assert_eq!(
        checks.len(),
        2 * cases.len() + 4 * adapters,
        "some checks did not run"
    );
    let mut failures = Vec::new();
    for check in &checks {
        println!("{check}");
        if !check.passed() {
            failures.push(check.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "checks failed:\n{}",
        failures.join("\n")
    );
}
