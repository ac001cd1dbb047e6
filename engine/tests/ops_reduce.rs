//! Reductions: sum, sum_keepdim and mean over each axis, sum_all and mean_all; forward
//! against float64, backward (a broadcast of the upstream gradient) exactly, and gradcheck.
//!
//! Tolerance: an f32 sum of n terms, in any order (the kernel uses strided partial sums
//! and a tree), is within gamma_(n-1) * sum |x| of the exact sum, gamma_n = n u / (1 - n u),
//! u = 2^-24 (Higham 4.2). A mean adds two roundings (1/n and the product): gamma_(n+1).
//! The backward of a sum copies the upstream gradient (exact: 0 + g = g); a mean's
//! multiplies it by the f32 1/n (2 roundings: rtol 2u).

mod common;

use common::reference::{self, numel};
use common::*;
use proptest::prelude::*;

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu) * 1.001 + 1e-30
}

#[derive(Clone, Copy, Debug)]
enum Reduce {
    Sum,
    SumKeepdim,
    Mean,
}

fn check_axis(shape: &[usize], axis: usize, how: Reduce, seed: u64) {
    let x = values(numel(shape), -1.0, 1.0, seed);
    let what = format!("{how:?} over axis {axis} of {shape:?}");
    let p = param(&x, shape);
    let y = match how {
        Reduce::Sum => p.sum(axis),
        Reduce::SumKeepdim => p.sum_keepdim(axis),
        Reduce::Mean => p.mean(axis),
    }
    .unwrap();
    let mut out_shape = shape.to_vec();
    match how {
        Reduce::SumKeepdim => out_shape[axis] = 1,
        _ => {
            out_shape.remove(axis);
        }
    }
    assert_eq!(y.shape(), out_shape.as_slice(), "{what}");
    let len = shape[axis];
    let div = if matches!(how, Reduce::Mean) {
        len as f64
    } else {
        1.0
    };
    let exact: Vec<f64> = reference::sum_axis(&reference::f64s(&x), shape, axis)
        .iter()
        .map(|s| s / div)
        .collect();
    let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let g = gamma(len + 1);
    let bound: Vec<f64> = reference::sum_axis(&reference::f64s(&abs), shape, axis)
        .iter()
        .map(|s| g * s / div)
        .collect();
    assert_within(&what, &read(&y), &exact, &bound);

    // Backward: every input element receives the upstream gradient of its output (/ len).
    let w = values(numel(&out_shape), -1.0, 1.0, seed + 1);
    let grads = y.backward_with(tensor(&w, &out_shape)).unwrap();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut expected = vec![0.0; x.len()];
    for o in 0..outer {
        for l in 0..len {
            for i in 0..inner {
                expected[(o * len + l) * inner + i] = w[o * inner + i] as f64 / div;
            }
        }
    }
    let rtol = if matches!(how, Reduce::Mean) {
        2.0 * U
    } else {
        0.0
    };
    assert_close(
        &format!("{what} backward"),
        &read(grads.get(&p).unwrap()),
        &expected,
        0.0,
        rtol,
    );
}

fn check_all(shape: &[usize], mean: bool, seed: u64) {
    let n = numel(shape);
    let x = values(n, -1.0, 1.0, seed);
    let p = param(&x, shape);
    let y = if mean { p.mean_all() } else { p.sum_all() }.unwrap();
    assert_eq!(y.shape(), &[1]);
    let div = if mean { n as f64 } else { 1.0 };
    let exact = x.iter().map(|&v| v as f64).sum::<f64>() / div;
    let bound = gamma(n + 1) * x.iter().map(|v| v.abs() as f64).sum::<f64>() / div;
    assert_within(
        &format!("{} of {shape:?}", if mean { "mean_all" } else { "sum_all" }),
        &read(&y),
        &[exact],
        &[bound],
    );
    let grads = y.backward_with(tensor(&[1.5], &[1])).unwrap();
    let expected = vec![1.5 / div; n];
    assert_close(
        "sum_all/mean_all backward",
        &read(grads.get(&p).unwrap()),
        &expected,
        0.0,
        if mean { 2.0 * U } else { 0.0 },
    );
}

fn shape_and_axis() -> impl Strategy<Value = (Vec<usize>, usize)> {
    prop::collection::vec(
        prop_oneof![3 => dim(), 1 => prop::sample::select(vec![64usize, 200, 257])],
        1..=4,
    )
    .prop_filter("keep tensors small", |s| numel(s) <= 40_000)
    .prop_flat_map(|s| {
        let r = s.len();
        (Just(s), 0..r)
    })
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn reductions_over_an_axis_match_f64((shape, axis) in shape_and_axis(), how in 0usize..3, seed in 0u64..1000) {
        check_axis(&shape, axis, [Reduce::Sum, Reduce::SumKeepdim, Reduce::Mean][how], seed);
    }

    #[test]
    fn sum_all_and_mean_all_match_f64(shape in prop::collection::vec(dim(), 1..=3), mean in any::<bool>(), seed in 0u64..1000) {
        check_all(&shape, mean, seed);
    }
}

#[test]
fn every_axis_of_a_rank_4_tensor() {
    // Axis lengths 1, 65 (one past the 64-wide reduction workgroup), 3 and 129.
    let shape = [1, 65, 3, 129];
    for axis in 0..4 {
        for how in [Reduce::Sum, Reduce::SumKeepdim, Reduce::Mean] {
            check_axis(&shape, axis, how, axis as u64);
        }
    }
    check_all(&shape, false, 1);
    check_all(&shape, true, 2);
    check_all(&[100_003], false, 3);
}

#[test]
fn gradcheck_reductions() {
    // Reductions are linear: no truncation error; a step of 1e-2 makes f32 rounding of L
    // (|L| < 20) contribute < 1e-3. atol and rtol 1e-2.
    let opts = gc_opts(1e-2, 1e-2, 1e-2, 16);
    let x = tensor(&values(2 * 3 * 4, -1.0, 1.0, 5), &[2, 3, 4]);
    for axis in 0..3 {
        assert_gradcheck(
            &format!("sum {axis}"),
            |xs| xs[0].sum(axis),
            std::slice::from_ref(&x),
            &opts,
        );
        assert_gradcheck(
            &format!("sum_keepdim {axis}"),
            |xs| xs[0].sum_keepdim(axis),
            std::slice::from_ref(&x),
            &opts,
        );
        assert_gradcheck(
            &format!("mean {axis}"),
            |xs| xs[0].mean(axis),
            std::slice::from_ref(&x),
            &opts,
        );
    }
    assert_gradcheck(
        "sum_all",
        |xs| xs[0].sum_all(),
        std::slice::from_ref(&x),
        &opts,
    );
    assert_gradcheck(
        "mean_all",
        |xs| xs[0].mean_all(),
        std::slice::from_ref(&x),
        &opts,
    );
}

#[test]
fn more_outputs_than_one_grid_dimension_holds() {
    // One workgroup per output element, at most 65535 per grid dimension.
    check_axis(&[65_535 + 7, 3], 1, Reduce::Sum, 14);
    check_axis(&[2, 65_535 + 7], 0, Reduce::Mean, 15);
}
