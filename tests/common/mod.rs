//! Shared test helpers: the GPU device (a test fails, never skips, without one), host
//! upload/readback shorthands, proptest settings and shape strategies, and (in
//! `reference`) the float64 CPU references that GPU results are checked against.
#![allow(dead_code)]

pub mod reference;

use std::sync::OnceLock;

use hydralora::engine::gradcheck::{gradcheck, GradcheckOptions};
use hydralora::engine::{Device, Result, Tensor};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// The unit roundoff of f32 (2^-24): one correctly rounded f32 operation is off by at most
/// this much, relative to its exact result.
pub const U: f64 = 1.0 / (1u64 << 24) as f64;

/// One device per test binary. No adapter is a failure: CI installs lavapipe so there is one.
pub fn device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| match Device::new() {
            Ok(d) => d,
            Err(e) => panic!("GPU tests need an adapter and none was found: {e}"),
        })
        .clone()
}

/// Deterministic pseudo-random values in [lo, hi).
pub fn values(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = hydralora::engine::rng::Rng::new(seed);
    (0..n).map(|_| lo + (hi - lo) * rng.next_f32()).collect()
}

/// Deterministic values whose magnitude is in [lo, hi) and whose sign is random: safe
/// divisors.
pub fn values_away_from_zero(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = hydralora::engine::rng::Rng::new(seed);
    (0..n)
        .map(|_| {
            let m = lo + (hi - lo) * rng.next_f32();
            if rng.next_u64() & 1 == 0 {
                m
            } else {
                -m
            }
        })
        .collect()
}

/// An f32 tensor on the test device.
pub fn tensor(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&device(), data, shape).unwrap()
}

/// An f32 parameter (a leaf that gradients are computed for) on the test device.
pub fn param(data: &[f32], shape: &[usize]) -> Tensor {
    tensor(data, shape).into_param()
}

/// An f32 tensor's values on the host.
pub fn read(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// max |a - b|, with NaN counted as infinitely wrong.
pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = (x as f64 - y).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max)
}

/// Asserts |gpu - reference| <= atol + rtol |reference| elementwise (NaN always fails).
pub fn assert_close(what: &str, gpu: &[f32], reference: &[f64], atol: f64, rtol: f64) {
    assert_eq!(gpu.len(), reference.len(), "{what}: lengths differ");
    for (i, (&g, &r)) in gpu.iter().zip(reference).enumerate() {
        let ok = ((g as f64) - r).abs() <= atol + rtol * r.abs();
        assert!(
            ok,
            "{what}: element {i}: gpu {g} vs reference {r} (atol {atol}, rtol {rtol})"
        );
    }
}

/// Asserts |gpu - reference| <= bound elementwise (a per-element error bound).
pub fn assert_within(what: &str, gpu: &[f32], reference: &[f64], bound: &[f64]) {
    assert_eq!(gpu.len(), reference.len(), "{what}: lengths differ");
    assert_eq!(bound.len(), reference.len(), "{what}: bound length differs");
    for (i, ((&g, &r), &b)) in gpu.iter().zip(reference).zip(bound).enumerate() {
        let ok = ((g as f64) - r).abs() <= b;
        assert!(
            ok,
            "{what}: element {i}: gpu {g} vs reference {r} (|diff| {:e} > bound {b:e})",
            (g as f64 - r).abs()
        );
    }
}

/// Asserts two f32 slices are bit-for-bit identical.
pub fn assert_bits_eq(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}: element {i}: {x} vs {y}");
    }
}

/// Gradcheck options: central differences with step `eps`, a coordinate passes when
/// |autodiff - numeric| <= atol + rtol |numeric|; at most `checks` coordinates per input.
pub fn gc_opts(eps: f32, atol: f32, rtol: f32, checks: usize) -> GradcheckOptions {
    GradcheckOptions {
        eps,
        atol,
        rtol,
        max_checks_per_input: checks,
        seed: 7,
    }
}

/// Runs the engine's gradcheck and fails with its report when a coordinate disagrees.
pub fn assert_gradcheck(
    what: &str,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: &GradcheckOptions,
) {
    let report = gradcheck(f, inputs, opts)
        .unwrap_or_else(|e| panic!("{what}: gradcheck failed to run: {e}"));
    assert!(report.checked > 0, "{what}: nothing was checked");
    assert!(report.passed(), "{what}: {report}");
}

/// Proptest settings for GPU tests: few cases (lavapipe on two cores is slow) and a bounded
/// shrink, so a failure reports in seconds, not minutes. `PROPTEST_CASES`, when set,
/// overrides the count (for longer runs on a real GPU).
pub fn proptest_config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    }
}

/// A dimension: mostly small (including 1), sometimes an odd size just around a
/// workgroup or tile width (32-wide matmul tiles, 64/128-wide row reductions).
pub fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 1usize..=9,
        1 => prop::sample::select(vec![31usize, 33, 63, 65, 127, 129]),
    ]
}

/// A small dimension (1..=max), for inputs of gradcheck and of expensive references.
pub fn small_dim(max: usize) -> impl Strategy<Value = usize> {
    1usize..=max
}

/// Float64 reference: C[b] = op(A[b]) op(B[b]) with row-major storage and shared operands
/// when a batch count is 1.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ref(
    a: &[f32],
    b: &[f32],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    a_batched: bool,
    b_batched: bool,
) -> Vec<f64> {
    let mut c = vec![0.0f64; batch * m * n];
    for bi in 0..batch {
        let ao = if a_batched { bi * m * k } else { 0 };
        let bo = if b_batched { bi * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for kk in 0..k {
                    let av = if ta {
                        a[ao + kk * m + i]
                    } else {
                        a[ao + i * k + kk]
                    };
                    let bv = if tb {
                        b[bo + j * k + kk]
                    } else {
                        b[bo + kk * n + j]
                    };
                    acc += av as f64 * bv as f64;
                }
                c[bi * m * n + i * n + j] = acc;
            }
        }
    }
    c
}

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
