//! Shared test helpers of the model and CLI tests: the engine's helpers (the GPU device,
//! values, proptest settings, float64 references in `reference`) from the one copy in
//! `engine/tests/common`, and the model-only ones here.
#![allow(dead_code)]

#[path = "../../engine/tests/common/mod.rs"]
mod engine_common;

pub use engine_common::*;

/// Writes into `dir` a copy of the tiny-llama fixture (vocabulary 96) with a character codec
/// of 93 characters (newline and ' '..='{') + 3 special tokens, so the CLI can train it on
/// text. `dir` must not exist yet or be empty.
pub fn char_model_dir(dir: &std::path::Path) {
    use hydralora::model::llama::codec::{CharCodec, CHAR_CODEC_FILE};
    let _ = device(); // fail early (not skip) without an adapter
    let tiny =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/tiny-llama");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    let chars: String = std::iter::once('\n')
        .chain((b' '..=b'{').map(|c| c as char))
        .collect();
    assert_eq!(chars.chars().count(), 93);
    CharCodec::new(chars.chars())
        .unwrap()
        .save(dir.join(CHAR_CODEC_FILE))
        .unwrap();
}

/// The path of example `name`'s binary from the same `cargo test` build (which builds the
/// examples): target/<profile>/deps/<test> -> target/<profile>/examples/<name>.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(std::path::Path::parent).unwrap();
    let path = profile_dir
        .join("examples")
        .join(name)
        .with_extension(std::env::consts::EXE_EXTENSION);
    assert!(
        path.is_file(),
        "{} is missing: build the examples first (`cargo test --workspace` does, or `cargo build --examples`)",
        path.display()
    );
    path
}

/// `n` random sequences of `len` tokens (ids 3..93, from `seed`); the first 3 are the prompt
/// (label -100). Example i gets category `categories[i % len]`, or none when empty.
pub fn random_examples(
    n: usize,
    len: usize,
    seed: u64,
    categories: &[&str],
) -> Vec<hydralora::model::data::TokenizedExample> {
    let mut rng = hydralora::engine::rng::Rng::new(seed);
    (0..n)
        .map(|i| {
            let ids: Vec<u32> = (0..len).map(|_| 3 + rng.below(90) as u32).collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(k, &t)| if k < 3 { -100 } else { t as i32 })
                .collect();
            hydralora::model::data::TokenizedExample {
                ids,
                labels,
                category: (!categories.is_empty())
                    .then(|| categories[i % categories.len()].to_string()),
            }
        })
        .collect()
}

/// max |a - b| / max(1, max |b|): how far logits `a` are from `b`, as the fixtures' tolerances
/// count it.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
    let err = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    err / scale
}
