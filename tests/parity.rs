//! Parity with Hugging Face `transformers`: every case under the fixtures folder
//! (`../shared/fixtures`, or `$HYDRALORA_FIXTURES`), within the fixtures README's tolerances.
//! The loss and the adapter gradients come from the fused lm_head + loss, as in training:
//! once with its default chunk (one chunk for these small batches) and once in chunks of 5
//! tokens (22 tokens: four chunks and an uneven last one).

mod common;

use hydralora::model::verify::{
    adapter_dirs, check_adapter_with, check_base_model_with, find_cases, fixtures_root,
};

fn fixtures() -> std::path::PathBuf {
    fixtures_root(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures"))
}

fn base_model_checks(loss_chunk_tokens: Option<usize>) {
    let dev = common::device();
    let mut failures = Vec::new();
    for case in find_cases(&fixtures()).expect("fixture cases") {
        for check in check_base_model_with(&dev, &case, loss_chunk_tokens)
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
        {
            println!("{check}");
            if !check.passed() {
                failures.push(check.to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "checks failed:\n{}",
        failures.join("\n")
    );
}

fn adapter_checks(loss_chunk_tokens: Option<usize>) {
    let dev = common::device();
    let mut failures = Vec::new();
    let mut adapters = 0;
    for case in find_cases(&fixtures()).expect("fixture cases") {
        for dir in adapter_dirs(&case).expect("adapter folders") {
            adapters += 1;
            for check in check_adapter_with(&dev, &case, &dir, loss_chunk_tokens)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            {
                println!("{check}");
                if !check.passed() {
                    failures.push(check.to_string());
                }
            }
        }
    }
    assert!(adapters > 0, "no adapter folders found under the fixtures");
    assert!(
        failures.is_empty(),
        "checks failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn base_model_logits_and_loss_match_transformers() {
    base_model_checks(None);
}

#[test]
fn adapters_match_peft_and_hydralora_logits_gradients_and_adamw_curves() {
    adapter_checks(None);
}

#[test]
fn base_model_loss_in_chunks_of_5_tokens_matches_transformers() {
    base_model_checks(Some(5));
}

#[test]
fn adapter_loss_gradients_and_adamw_curves_in_chunks_of_5_tokens_match() {
    adapter_checks(Some(5));
}
