//! cross_entropy with ignore index -100 (`IGNORE_INDEX`): the forward (mean over counted
//! rows) against float64, the backward against the analytic (softmax - onehot) / count,
//! and gradcheck.
//!
//! Tolerances, with |logits| <= 4 and V classes (u = 2^-24, 1 ulp <= 2u): a row's log-sum-exp
//! is max + log(sum exp(x - max)); exp adds (3 + 2|z|) ulp with |z| <= 8, the sum gamma_V
//! (no cancellation), log 2^-21 absolute or 3 ulp: its absolute error is
//!   e_lse <= (V + 40) u + 2^-21 + 3 ulp(|lse|).
//! The mean adds gamma_N of the sum of |row losses|. We allow twice that.
//! Backward: exp(x - lse) inherits e_lse and (3 + 2 |x - lse|) ulp relative; divided by the
//! count (2.5 ulp) and multiplied by the upstream gradient (1 ulp):
//!   |error| <= 2 (p (e_lse + 60 u) + 4 u |grad|) per element, p = the softmax value.

mod common;

use common::reference;
use common::*;
use hydralora_engine::{cross_entropy, Tensor, IGNORE_INDEX};
use proptest::prelude::*;

fn e_lse(vocab: usize) -> f64 {
    (vocab + 40) as f64 * U + 1.0 / (1u64 << 21) as f64 + 6.0 * U * ((vocab as f64).ln() + 8.0)
}

fn check(rows: usize, vocab: usize, labels: &[i32], upstream: f32, seed: u64) {
    let dev = device();
    let logits = values(rows * vocab, -4.0, 4.0, seed);
    let what = format!("cross_entropy [{rows}, {vocab}] labels {labels:?}");
    let p = param(&logits, &[rows, vocab]);
    let labels_t = Tensor::from_i32(&dev, labels, &[rows]).unwrap();
    let loss = cross_entropy(&p, &labels_t).unwrap();
    assert_eq!(loss.shape(), &[1]);
    let (expected, grad) = reference::cross_entropy(&logits, labels, vocab);
    let row_losses: f64 =
        expected.abs() * labels.iter().filter(|&&l| l != IGNORE_INDEX).count() as f64;
    let bound = 2.0 * (e_lse(vocab) + (rows + 4) as f64 * U * row_losses);
    assert_within(
        &format!("{what} forward"),
        &read(&loss),
        &[expected],
        &[bound],
    );

    let grads = loss.backward_with(tensor(&[upstream], &[1])).unwrap();
    let grad: Vec<f64> = grad.iter().map(|g| g * upstream as f64).collect();
    let count = labels.iter().filter(|&&l| l != IGNORE_INDEX).count() as f64;
    let lse: Vec<f64> = logits
        .chunks(vocab)
        .map(|row| {
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            max + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
        })
        .collect();
    let bound: Vec<f64> = (0..rows * vocab)
        .map(|i| {
            let r = i / vocab;
            if labels[r] == IGNORE_INDEX {
                return 0.0; // ignored rows: exactly zero
            }
            let sm = (logits[i] as f64 - lse[r]).exp();
            2.0 * (sm * (e_lse(vocab) + 60.0 * U) * upstream.abs() as f64 / count
                + 4.0 * U * grad[i].abs())
                + 1e-30
        })
        .collect();
    let g = read(grads.get(&p).unwrap());
    assert_within(&format!("{what} backward"), &g, &grad, &bound);
}

/// Labels in [0, vocab) or -100, at least one counted.
fn labels(rows: usize, vocab: usize) -> impl Strategy<Value = Vec<i32>> {
    prop::collection::vec(
        prop_oneof![3 => 0..vocab as i32, 1 => Just(IGNORE_INDEX)],
        rows,
    )
    .prop_filter("at least one counted row", |l| {
        l.iter().any(|&x| x != IGNORE_INDEX)
    })
}

fn case() -> impl Strategy<Value = (usize, usize, Vec<i32>)> {
    (
        prop_oneof![4 => 1usize..=9, 1 => Just(33usize)],
        prop_oneof![3 => dim(), 1 => prop::sample::select(vec![128usize, 300, 1000])],
    )
        .prop_flat_map(|(rows, vocab)| (Just(rows), Just(vocab), labels(rows, vocab)))
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn cross_entropy_matches_f64((rows, vocab, labels) in case(), upstream in prop_oneof![Just(1.0f32), -2.0f32..2.0], seed in 0u64..1000) {
        check(rows, vocab, &labels, upstream, seed);
    }
}

#[test]
fn ignored_rows_count_for_nothing() {
    // Rows 1 and 3 ignored: the loss is the mean over rows 0, 2, 4 only, and the ignored
    // rows' gradients are exactly zero.
    check(5, 7, &[3, IGNORE_INDEX, 0, IGNORE_INDEX, 6], 1.0, 1);
    check(
        4,
        129,
        &[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 128],
        1.0,
        2,
    );
    check(1, 1, &[0], 1.0, 3); // one class: loss 0, gradient 0
    check(3, 32_000, &[17, 31_999, IGNORE_INDEX], 1.0, 4); // a LLaMA-sized vocabulary

    // Changing an ignored row's logits changes nothing.
    let dev = device();
    let labels = Tensor::from_i32(&dev, &[2, IGNORE_INDEX], &[2]).unwrap();
    let mut a = values(2 * 4, -1.0, 1.0, 5);
    let la = read(&cross_entropy(&tensor(&a, &[2, 4]), &labels).unwrap());
    a[4..].copy_from_slice(&[9.0, -9.0, 3.0, 0.0]);
    let lb = read(&cross_entropy(&tensor(&a, &[2, 4]), &labels).unwrap());
    assert_bits_eq("ignored row", &la, &lb);
}

#[test]
fn gradcheck_cross_entropy() {
    // Smooth (|third derivative| < 1 for softmax-based losses): eps 1e-3 gives truncation
    // error < 1e-6; L is one scalar of size ~2, so rounding adds ~1e-4. Default tolerances.
    let dev = device();
    let opts = gc_opts(1e-3, 1e-2, 1e-2, 24);
    let labels = Tensor::from_i32(&dev, &[1, IGNORE_INDEX, 4, 0], &[4]).unwrap();
    let logits = tensor(&values(4 * 5, -2.0, 2.0, 6), &[4, 5]);
    assert_gradcheck(
        "cross_entropy",
        |xs| cross_entropy(&xs[0], &labels),
        &[logits],
        &opts,
    );
}

#[test]
fn more_rows_than_one_grid_dimension_holds() {
    // One workgroup per row, at most 65535 per grid dimension: the rest spill into y.
    let rows = 65_535 + 7;
    let labels: Vec<i32> = (0..rows as i32)
        .map(|i| if i % 5 == 0 { IGNORE_INDEX } else { i % 3 })
        .collect();
    check(rows, 3, &labels, 1.0, 16);
}
