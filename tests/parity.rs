//! Parity with Hugging Face `transformers`: every case under the fixtures folder
//! (`../shared/fixtures`, or `$HYDRALORA_FIXTURES`), within the fixtures README's tolerances.

mod common;

use hydralora::model::verify::{
    adapter_dirs, check_adapter, check_base_model, find_cases, fixtures_root,
};

fn fixtures() -> std::path::PathBuf {
    fixtures_root(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures"))
}

#[test]
fn base_model_logits_and_loss_match_transformers() {
    let dev = common::device();
    let mut failures = Vec::new();
    for case in find_cases(&fixtures()).expect("fixture cases") {
        for check in
            check_base_model(&dev, &case).unwrap_or_else(|e| panic!("{}: {e}", case.display()))
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

#[test]
fn adapters_match_peft_and_hydralora_logits_gradients_and_adamw_curves() {
    let dev = common::device();
    let mut failures = Vec::new();
    let mut adapters = 0;
    for case in find_cases(&fixtures()).expect("fixture cases") {
        for dir in adapter_dirs(&case).expect("adapter folders") {
            adapters += 1;
            for check in check_adapter(&dev, &case, &dir)
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
