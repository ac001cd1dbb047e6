//! rms_norm: y = w x / sqrt(mean(x^2) + eps) over the last axis. Forward and both gradients
//! (x and weight) against float64, and gradcheck.
//!
//! Tolerances. Forward: the sum of squares has no cancellation (relative gamma_dim), then a
//! division (2.5 ulp), + eps, inverseSqrt (2 ulp), two products: rtol (dim + 16) u, doubled.
//! dx = r (dy w - x r mean(dy w x r)) cancels, so it gets an absolute bound per element:
//!   r (|dy w| + |x| r mean|dy w x r|) (dim + 24) u, doubled;
//! dw = sum over rows of dy x r: gamma_(rows + dim + 16) sum |dy x r|, doubled.

mod common;

use common::reference;
use common::*;
use hydralora_engine::rms_norm;
use proptest::prelude::*;

fn check(rows: usize, dim: usize, eps: f32, seed: u64) {
    let x = values(rows * dim, -2.0, 2.0, seed);
    let w = values(dim, -1.5, 1.5, seed + 1);
    let dy = values(rows * dim, -1.0, 1.0, seed + 2);
    let what = format!("rms_norm [{rows}, {dim}] eps {eps}");
    let (px, pw) = (param(&x, &[rows, dim]), param(&w, &[dim]));
    let y = rms_norm(&px, &pw, eps).unwrap();
    let expected = reference::rms_norm(&x, &w, dim, eps as f64);
    assert_close(
        &format!("{what} forward"),
        &read(&y),
        &expected,
        1e-30,
        2.0 * (dim + 16) as f64 * U,
    );

    let grads = y.backward_with(tensor(&dy, &[rows, dim])).unwrap();
    let dy64 = reference::f64s(&dy);
    let (dx, dw) = reference::rms_norm_backward(&x, &w, &dy64, dim, eps as f64);
    let mut dx_bound = vec![0.0; rows * dim];
    let mut dw_abs = vec![0.0; dim];
    for r in 0..rows {
        let row = &x[r * dim..(r + 1) * dim];
        let rstd = 1.0
            / (row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64 + eps as f64)
                .sqrt();
        let mean_abs: f64 = (0..dim)
            .map(|i| (dy64[r * dim + i] * w[i] as f64 * row[i] as f64 * rstd).abs())
            .sum::<f64>()
            / dim as f64;
        for j in 0..dim {
            let g = (dy64[r * dim + j] * w[j] as f64).abs();
            dx_bound[r * dim + j] =
                2.0 * rstd * (g + (row[j] as f64).abs() * rstd * mean_abs) * (dim + 24) as f64 * U
                    + 1e-30;
            dw_abs[j] += (dy64[r * dim + j] * row[j] as f64 * rstd).abs();
        }
    }
    let dw_bound: Vec<f64> = dw_abs
        .iter()
        .map(|s| 2.0 * (rows + dim + 16) as f64 * U * s + 1e-30)
        .collect();
    assert_within(
        &format!("{what} dx"),
        &read(grads.get(&px).unwrap()),
        &dx,
        &dx_bound,
    );
    assert_within(
        &format!("{what} dw"),
        &read(grads.get(&pw).unwrap()),
        &dw,
        &dw_bound,
    );
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn rms_norm_matches_f64(rows in dim(), d in prop_oneof![3 => dim(), 1 => prop::sample::select(vec![128usize, 200, 257])],
                            eps in prop::sample::select(vec![1e-6f32, 1e-5, 0.1]), seed in 0u64..1000) {
        check(rows, d, eps, seed);
    }
}

#[test]
fn rms_norm_around_the_row_workgroup() {
    for dim in [1, 2, 127, 128, 129, 300] {
        check(3, dim, 1e-5, dim as u64);
    }
    // Rank 3 input: the norm is over the last axis of any shape.
    let x = values(2 * 3 * 7, -1.0, 1.0, 1);
    let w = values(7, 0.5, 1.5, 2);
    let y = rms_norm(&tensor(&x, &[2, 3, 7]), &tensor(&w, &[7]), 1e-6).unwrap();
    assert_eq!(y.shape(), &[2, 3, 7]);
    assert_close(
        "rank 3",
        &read(&y),
        &reference::rms_norm(&x, &w, 7, 1e-6),
        1e-30,
        2.0 * 23.0 * U,
    );
}

#[test]
fn gradcheck_rms_norm() {
    // Smooth for rows away from zero (|x| ~ 1 here): eps 1e-3 gives truncation error ~1e-6;
    // f32 rounding of L (|L| < 20) ~1e-3. Default 1e-2 tolerances.
    let opts = gc_opts(1e-3, 1e-2, 1e-2, 16);
    let x = tensor(&values(4 * 6, -2.0, 2.0, 4), &[4, 6]);
    let w = tensor(&values(6, -1.5, 1.5, 5), &[6]);
    assert_gradcheck(
        "rms_norm",
        |xs| rms_norm(&xs[0], &xs[1], 1e-5),
        &[x, w],
        &opts,
    );
}

#[test]
fn more_rows_than_one_grid_dimension_holds() {
    // One workgroup per row, at most 65535 per grid dimension: the rest spill into y.
    check(65_535 + 7, 3, 1e-5, 13);
}
