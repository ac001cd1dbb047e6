//! Elementwise binary ops (add, sub, mul, div) with NumPy broadcasting: forward against a
//! float64 reference, backward (which sums the gradient back over broadcast axes) against a
//! float64 analytic backward and the engine's gradcheck.
//!
//! Tolerances. Forward: one correctly rounded f32 operation on exact inputs is within
//! u = 2^-24 relative of the exact result; WGSL allows division 2.5 ulp, so rtol 4 ulp
//! (2^-21 ~ 4.8e-7) covers all four ops. Backward: each gradient element is a sum of up to
//! `count` terms (count = how many outputs read that input) summed in f32: Higham's bound
//! for any summation order is gamma_count * sum |terms|. Each term carries its own error
//! too: one rounding for add, sub and mul, but div's rule -(dy * out) / b reuses the
//! forward quotient (2.5 ulp = 5u) and divides again (5u), plus a product (u): 11u. So the
//! bound is gamma_(count+12) * sum |terms| (an H200 does use the 2.5 ulp that WGSL allows:
//! a bound assuming correctly rounded division failed there by 8%).

mod common;

use common::reference::{self, numel};
use common::*;
use hydralora_engine::Tensor;
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Add,
    Sub,
    Mul,
    Div,
}

const KINDS: [Kind; 4] = [Kind::Add, Kind::Sub, Kind::Mul, Kind::Div];

fn apply(kind: Kind, a: &Tensor, b: &Tensor) -> hydralora_engine::Result<Tensor> {
    match kind {
        Kind::Add => a.add(b),
        Kind::Sub => a.sub(b),
        Kind::Mul => a.mul(b),
        Kind::Div => a.div(b),
    }
}

fn f(kind: Kind, x: f64, y: f64) -> f64 {
    match kind {
        Kind::Add => x + y,
        Kind::Sub => x - y,
        Kind::Mul => x * y,
        Kind::Div => x / y,
    }
}

/// (d out / d a, d out / d b) at one element.
fn partials(kind: Kind, x: f64, y: f64) -> (f64, f64) {
    match kind {
        Kind::Add => (1.0, 1.0),
        Kind::Sub => (1.0, -1.0),
        Kind::Mul => (y, x),
        Kind::Div => (1.0 / y, -x / (y * y)),
    }
}

const FWD_RTOL: f64 = 8.0 * U; // 4 ulp of the result (2.5 ulp allowed for division)

fn check(kind: Kind, a_shape: &[usize], b_shape: &[usize], seed: u64) {
    let out_shape = reference::broadcast_shape(a_shape, b_shape);
    let a = values(numel(a_shape), -2.0, 2.0, seed);
    // Divisors stay away from zero, where the quotient's condition number explodes.
    let b = values_away_from_zero(numel(b_shape), 0.5, 2.0, seed + 1);
    let w = values(numel(&out_shape), -1.0, 1.0, seed + 2);
    let what = format!("{kind:?} {a_shape:?} x {b_shape:?}");

    let (pa, pb) = (param(&a, a_shape), param(&b, b_shape));
    let out = apply(kind, &pa, &pb).unwrap();
    assert_eq!(out.shape(), out_shape.as_slice(), "{what}");
    let expected = reference::binary_ref(&a, a_shape, &b, b_shape, |x, y| f(kind, x, y));
    assert_close(&what, &read(&out), &expected, 1e-30, FWD_RTOL);

    // Backward of L = sum(out * w): da = unbroadcast(w * d out/da), likewise db.
    let grads = out.backward_with(tensor(&w, &out_shape)).unwrap();
    let n = numel(&out_shape);
    let (mut ta, mut tb) = (vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let c = reference::coords(i, &out_shape);
        let (x, y) = (
            a[reference::broadcast_source(&c, a_shape)] as f64,
            b[reference::broadcast_source(&c, b_shape)] as f64,
        );
        let (pa_, pb_) = partials(kind, x, y);
        ta[i] = w[i] as f64 * pa_;
        tb[i] = w[i] as f64 * pb_;
    }
    for (name, p, terms, shape) in [("da", &pa, &ta, a_shape), ("db", &pb, &tb, b_shape)] {
        let exact = reference::unbroadcast(terms, &out_shape, shape);
        let abs: Vec<f64> = terms.iter().map(|t| t.abs()).collect();
        let count = n / numel(shape).max(1);
        let bound: Vec<f64> = reference::unbroadcast(&abs, &out_shape, shape)
            .iter()
            .map(|s| (count + 12) as f64 * U / (1.0 - (count + 12) as f64 * U) * s * 1.001 + 1e-30)
            .collect();
        let g = grads.get(p).unwrap();
        assert_eq!(g.shape(), shape, "{what} {name}");
        assert_within(&format!("{what} {name}"), &read(g), &exact, &bound);
    }
}

/// Two shapes that broadcast: an output shape of rank 1..=4; each operand takes a suffix of
/// it with some dims set to 1.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(dim(), 1..=4)
        .prop_flat_map(|out| {
            let r = out.len();
            (
                Just(out),
                1..=r,
                1..=r,
                prop::collection::vec(any::<bool>(), r),
                prop::collection::vec(any::<bool>(), r),
            )
        })
        .prop_map(|(out, ra, rb, ones_a, ones_b)| {
            let take = |rank: usize, ones: &[bool]| -> Vec<usize> {
                let lead = out.len() - rank;
                (lead..out.len())
                    .map(|d| if ones[d] { 1 } else { out[d] })
                    .collect()
            };
            (take(ra, &ones_a), take(rb, &ones_b))
        })
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn binary_ops_broadcast_like_numpy((a_shape, b_shape) in broadcast_pair(), k in 0usize..4, seed in 0u64..1000) {
        check(KINDS[k], &a_shape, &b_shape, seed);
    }
}

#[test]
fn broadcasting_both_ways_and_across_ranks() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 1], &[1, 4]), // each side broadcasts along the other's axis
        (&[1, 4], &[3, 1]),
        (&[5], &[2, 3, 5]), // rank 1 against rank 3
        (&[2, 3, 5], &[5]),
        (&[2, 1, 5], &[3, 1]), // rank 3 against rank 2, both broadcasting
        (&[1], &[7, 9]),       // a scalar-like operand
        (&[7, 9], &[1]),       // b one value: the kernels' flat path
        (&[2, 3, 5], &[1, 1, 1]),
        (&[257], &[1]),
        (&[257], &[257]), // same shape (the kernel's fast path), odd past a workgroup
        (&[2, 1, 3, 1, 2, 1], &[1, 4, 1, 5, 1, 3]), // rank 6, the kernels' limit
    ];
    for (i, (a, b)) in cases.iter().enumerate() {
        for kind in KINDS {
            check(kind, a, b, 10 * i as u64);
        }
    }
}

#[test]
fn gradcheck_broadcast_binary_ops() {
    // Sums and products are (bi)linear, and div is smooth on |b| >= 0.5, so with a 1e-2 step
    // truncation error is < 1e-4 (|d^3/db^3 (a/b)| <= 6 |a| / |b|^4 ~ 200 times eps^2 / 6)
    // while f32 rounding of L (|L| < 50) adds ~1e-4; atol and rtol 1e-2 sit far above both.
    let opts = gc_opts(1e-2, 1e-2, 1e-2, 16);
    for (a_shape, b_shape) in [(vec![3, 1], vec![1, 4]), (vec![4], vec![2, 3, 4])] {
        for kind in KINDS {
            let a = tensor(&values(numel(&a_shape), -2.0, 2.0, 1), &a_shape);
            let b = tensor(
                &values_away_from_zero(numel(&b_shape), 0.5, 2.0, 2),
                &b_shape,
            );
            assert_gradcheck(
                &format!("{kind:?} {a_shape:?} x {b_shape:?}"),
                |xs| apply(kind, &xs[0], &xs[1]),
                &[a, b],
                &opts,
            );
        }
    }
}

#[test]
fn more_elements_than_one_grid_row_holds() {
    // 65535 workgroups of 256 is the most one grid dimension dispatches; past it the kernels
    // spill into y. Check every element of such a tensor: same shapes and b one value (the
    // flat kernel), a one value (the general one). (Small integers and halves: every result
    // is exact in f32.)
    let n = 65535 * 256 + 1001;
    let a: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let ta = tensor(&a, &[n]);
    let half = tensor(&[0.5], &[1]);
    let sum = read(&ta.add(&half).unwrap());
    let diff = read(&half.sub(&ta).unwrap());
    let same = read(&ta.add(&ta).unwrap());
    for i in 0..n {
        assert_eq!(sum[i], a[i] + 0.5, "broadcast add at {i}");
        assert_eq!(diff[i], 0.5 - a[i], "broadcast sub at {i}");
        assert_eq!(same[i], a[i] * 2.0, "same-shape add at {i}");
    }
}
