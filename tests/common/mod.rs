//! Shared test helpers: the GPU device (a test fails, never skips, without one) and
//! float64 CPU references that the GPU results are checked against.
#![allow(dead_code)]

use std::sync::OnceLock;

use hydralora::engine::Device;

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

/// max |a - b|, with NaN counted as infinitely wrong.
pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = (x as f64 - y).abs();
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

/// Asserts |gpu - reference| <= atol + rtol |reference| elementwise.
pub fn assert_close(what: &str, gpu: &[f32], reference: &[f64], atol: f64, rtol: f64) {
    assert_eq!(gpu.len(), reference.len(), "{what}: lengths differ");
    for (i, (&g, &r)) in gpu.iter().zip(reference).enumerate() {
        let ok = ((g as f64) - r).abs() <= atol + rtol * r.abs();
        assert!(ok, "{what}: element {i}: gpu {g} vs reference {r} (atol {atol}, rtol {rtol})");
    }
}

/// Float64 reference: C[b] = op(A[b]) op(B[b]) with row-major storage and shared operands
/// when a batch count is 1.
pub fn matmul_ref(a: &[f32], b: &[f32], batch: usize, m: usize, k: usize, n: usize, ta: bool, tb: bool, a_batched: bool, b_batched: bool) -> Vec<f64> {
    let mut c = vec![0.0f64; batch * m * n];
    for bi in 0..batch {
        let ao = if a_batched { bi * m * k } else { 0 };
        let bo = if b_batched { bi * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for kk in 0..k {
                    let av = if ta { a[ao + kk * m + i] } else { a[ao + i * k + kk] };
                    let bv = if tb { b[bo + j * k + kk] } else { b[bo + kk * n + j] };
                    acc += av as f64 * bv as f64;
                }
                c[bi * m * n + i * n + j] = acc;
            }
        }
    }
    c
}
