//! Softmax over the last axis, plain and `softmax_scaled` with a causal mask
//! (`CausalMask { q_len, offset }`): forward and backward against float64, and gradcheck.
//!
//! Tolerances, per element, relative to the f64 value. Forward: the exponent s x - max is
//! off by <= 2 u |s x|max (two roundings); exp adds (3 + 2 |z|) ulp (WGSL), |z| <= 2 |s x|max;
//! the row sum adds gamma_cols; the division 2.5 ulp. So
//!   rtol_y = 2 (6 + 2 zmax) u + 2 zmax u + (cols + 1) u, u = 2^-24 (1 ulp <= 2u),
//! doubled for margin. Backward dx = s y (dy - sum(dy y)): y carries rtol_y, the dot a sum
//! of cols terms (gamma_cols sum |dy y|) and the difference cancels, so the bound is
//!   |s| y ((|dy| + |dot|) rtol_y + gamma_(cols+2) sum |dy y|) + 4 u |dx|, doubled.

mod common;

use common::reference;
use common::*;
use hydralora_engine::{softmax_scaled, CausalMask};
use proptest::prelude::*;

fn check(rows: usize, cols: usize, scale: f32, mask: Option<(usize, usize)>, seed: u64) {
    let x = values(rows * cols, -3.0, 3.0, seed);
    let dy = values(rows * cols, -1.0, 1.0, seed + 1);
    let what = format!("softmax [{rows}, {cols}] scale {scale} mask {mask:?}");
    let p = param(&x, &[rows, cols]);
    let y = if scale == 1.0 && mask.is_none() {
        p.softmax()
    } else {
        softmax_scaled(
            &p,
            scale,
            mask.map(|(q_len, offset)| CausalMask { q_len, offset }),
        )
    }
    .unwrap();
    let expected = reference::softmax(&x, cols, scale as f64, mask);
    let zmax = 2.0 * (scale.abs() * 3.0) as f64;
    let rtol_y = 2.0 * ((2.0 * (6.0 + 2.0 * zmax) + 2.0 * zmax + cols as f64 + 1.0) * U);
    let y_gpu = read(&y);
    assert_close(&format!("{what} forward"), &y_gpu, &expected, 1e-30, rtol_y);
    // Masked entries are exactly zero.
    for r in 0..rows {
        for c in reference::visible(r, cols, mask)..cols {
            assert_eq!(y_gpu[r * cols + c], 0.0, "{what}: masked ({r}, {c})");
        }
    }

    let grads = y.backward_with(tensor(&dy, &[rows, cols])).unwrap();
    let dy64 = reference::f64s(&dy);
    let dx = reference::softmax_backward(&expected, &dy64, cols, scale as f64);
    let s = scale.abs() as f64;
    let gamma = (cols + 2) as f64 * U / (1.0 - (cols + 2) as f64 * U);
    let mut bound = vec![0.0; rows * cols];
    for r in 0..rows {
        let row = r * cols..(r + 1) * cols;
        let dot: f64 = row.clone().map(|i| expected[i] * dy64[i]).sum();
        let abs_dot: f64 = row.clone().map(|i| (expected[i] * dy64[i]).abs()).sum();
        for i in row {
            bound[i] = 2.0
                * (s * expected[i] * ((dy64[i].abs() + dot.abs()) * rtol_y + gamma * abs_dot)
                    + 4.0 * U * dx[i].abs())
                + 1e-30;
        }
    }
    assert_within(
        &format!("{what} backward"),
        &read(grads.get(&p).unwrap()),
        &dx,
        &bound,
    );
}

fn mask() -> impl Strategy<Value = Option<(usize, usize)>> {
    prop_oneof![Just(None), (1usize..=9, 0usize..=12).prop_map(Some)]
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn softmax_matches_f64(rows in dim(), cols in prop_oneof![3 => dim(), 1 => prop::sample::select(vec![128usize, 200, 257])],
                           scale in prop_oneof![Just(1.0f32), 0.1f32..3.0], mask in mask(), seed in 0u64..1000) {
        check(rows, cols, scale, mask, seed);
    }
}

#[test]
fn plain_and_masked_softmax_around_the_row_workgroup() {
    // Row lengths around the 128-wide workgroup; masks where some rows see one key only, where
    // the offset (cached keys) makes every key visible, and where q_len does not divide rows.
    for cols in [1, 127, 128, 129, 300] {
        check(5, cols, 1.0, None, cols as u64);
        check(6, cols, 0.35, Some((3, 0)), cols as u64 + 1);
        check(7, cols, 1.7, Some((4, 2)), cols as u64 + 2);
        check(4, cols, 1.0, Some((2, 400)), cols as u64 + 3);
    }
}

#[test]
fn gradcheck_softmax() {
    // Smooth, with |third derivative| < ~2 scale^3 and scale <= 1.5 here: eps 1e-3 leaves
    // truncation error < 1e-5; f32 rounding of L (|L| < 10) adds ~1e-3. Default 1e-2
    // tolerances. Masked entries have zero gradient both ways.
    let opts = gc_opts(1e-3, 1e-2, 1e-2, 20);
    let x = tensor(&values(6 * 5, -2.0, 2.0, 9), &[6, 5]);
    assert_gradcheck(
        "softmax",
        |xs| xs[0].softmax(),
        std::slice::from_ref(&x),
        &opts,
    );
    assert_gradcheck(
        "scaled",
        |xs| softmax_scaled(&xs[0], 1.5, None),
        std::slice::from_ref(&x),
        &opts,
    );
    assert_gradcheck(
        "causal",
        |xs| {
            softmax_scaled(
                &xs[0],
                0.7,
                Some(CausalMask {
                    q_len: 3,
                    offset: 1,
                }),
            )
        },
        std::slice::from_ref(&x),
        &opts,
    );
}

#[test]
fn more_rows_than_one_grid_dimension_holds() {
    // One workgroup per row and at most 65535 workgroups per grid dimension: rows past that
    // spill into y (long attention score tensors reach this).
    check(65_535 + 7, 3, 1.0, None, 11);
    check(65_535 + 7, 5, 0.5, Some((9, 1)), 12);
}
