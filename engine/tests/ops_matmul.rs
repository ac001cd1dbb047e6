//! matmul: all four transpose flag combinations, batched, and a rank-2 operand shared
//! across the batch on either side; forward against a float64 reference, backward against
//! a float64 analytic backward and the engine's gradcheck; and one product with M, N, K
//! above 500.
//!
//! Tolerance: a K-term f32 dot product (whatever the order of its additions, with or
//! without fused multiply-add) is within gamma_K * sum_k |a_k b_k| of the exact value,
//! gamma_K = K u / (1 - K u), u = 2^-24 (Higham, "Accuracy and Stability of Numerical
//! Algorithms", 3.1). Each element is checked against that bound, computed in f64 from the
//! same inputs, so the test is as tight as f32 allows at every size.

mod common;

use common::*;
use hydralora_engine::matmul_t;
use proptest::prelude::*;

/// gamma_n = n u / (1 - n u), with one extra term for the rounding of a product.
fn gamma(n: usize) -> f64 {
    let nu = (n + 1) as f64 * U;
    nu / (1.0 - nu) * 1.001 + 1e-30
}

/// How the batch dims are laid out.
#[derive(Clone, Copy, Debug)]
enum Batching {
    /// Both operands rank 2.
    None,
    /// Both operands carry the same batch dims.
    Both,
    /// A is rank 2, shared by every batch of B.
    AShared,
    /// B is rank 2, shared by every batch of A.
    BShared,
}

#[derive(Clone, Debug)]
struct Case {
    batching: Batching,
    lead: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    seed: u64,
}

/// Reference values and per-element error bounds of C, dA and dB (stored layouts) for
/// L = sum(C * W).
struct Expected {
    c: Vec<f64>,
    c_bound: Vec<f64>,
    da: Vec<f64>,
    da_bound: Vec<f64>,
    db: Vec<f64>,
    db_bound: Vec<f64>,
}

fn expected(case: &Case, a: &[f32], b: &[f32], w: &[f32]) -> Expected {
    let (m, k, n) = (case.m, case.k, case.n);
    let batch: usize = case.lead.iter().product();
    let a_batched = matches!(case.batching, Batching::Both | Batching::BShared);
    let b_batched = matches!(case.batching, Batching::Both | Batching::AShared);
    let ai = |bi: usize, i: usize, kk: usize| {
        (if a_batched { bi * m * k } else { 0 }) + if case.ta { kk * m + i } else { i * k + kk }
    };
    let bi_ = |bi: usize, kk: usize, j: usize| {
        (if b_batched { bi * k * n } else { 0 }) + if case.tb { j * k + kk } else { kk * n + j }
    };
    let mut e = Expected {
        c: vec![0.0; batch * m * n],
        c_bound: vec![0.0; batch * m * n],
        da: vec![0.0; a.len()],
        da_bound: vec![0.0; a.len()],
        db: vec![0.0; b.len()],
        db_bound: vec![0.0; b.len()],
    };
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let wv = w[(bi * m + i) * n + j] as f64;
                let (mut acc, mut abs) = (0.0, 0.0);
                for kk in 0..k {
                    let (av, bv) = (a[ai(bi, i, kk)] as f64, b[bi_(bi, kk, j)] as f64);
                    acc += av * bv;
                    abs += (av * bv).abs();
                    e.da[ai(bi, i, kk)] += wv * bv;
                    e.da_bound[ai(bi, i, kk)] += (wv * bv).abs();
                    e.db[bi_(bi, kk, j)] += wv * av;
                    e.db_bound[bi_(bi, kk, j)] += (wv * av).abs();
                }
                e.c[(bi * m + i) * n + j] = acc;
                e.c_bound[(bi * m + i) * n + j] = gamma(k) * abs;
            }
        }
    }
    // dA sums n terms per batch, then (for a shared A) the batches; likewise dB with m.
    let (ga, gb) = (gamma(n + batch), gamma(m + batch));
    e.da_bound.iter_mut().for_each(|x| *x *= ga);
    e.db_bound.iter_mut().for_each(|x| *x *= gb);
    e
}

fn shapes(case: &Case) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (m, k, n) = (case.m, case.k, case.n);
    let a_mat = if case.ta { [k, m] } else { [m, k] };
    let b_mat = if case.tb { [n, k] } else { [k, n] };
    let with = |lead: bool, mat: [usize; 2]| {
        let mut s = if lead { case.lead.clone() } else { vec![] };
        s.extend(mat);
        s
    };
    let (a_lead, b_lead) = match case.batching {
        Batching::None => (false, false),
        Batching::Both => (true, true),
        Batching::AShared => (false, true),
        Batching::BShared => (true, false),
    };
    let mut c = case.lead.clone();
    c.extend([m, n]);
    (with(a_lead, a_mat), with(b_lead, b_mat), c)
}

fn check(case: &Case) {
    let (a_shape, b_shape, c_shape) = shapes(case);
    let a = values(a_shape.iter().product(), -1.0, 1.0, case.seed);
    let b = values(b_shape.iter().product(), -1.0, 1.0, case.seed + 1);
    let w = values(c_shape.iter().product(), -1.0, 1.0, case.seed + 2);
    let e = expected(case, &a, &b, &w);
    let (pa, pb) = (param(&a, &a_shape), param(&b, &b_shape));
    let c = matmul_t(&pa, &pb, case.ta, case.tb).unwrap();
    assert_eq!(c.shape(), c_shape.as_slice(), "{case:?}");
    assert_within(&format!("C of {case:?}"), &read(&c), &e.c, &e.c_bound);
    let grads = c.backward_with(tensor(&w, &c_shape)).unwrap();
    assert_eq!(grads.len(), 2);
    let (da, db) = (grads.get(&pa).unwrap(), grads.get(&pb).unwrap());
    assert_eq!(da.shape(), a_shape.as_slice());
    assert_eq!(db.shape(), b_shape.as_slice());
    assert_within(&format!("dA of {case:?}"), &read(da), &e.da, &e.da_bound);
    assert_within(&format!("dB of {case:?}"), &read(db), &e.db, &e.db_bound);
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let batching = prop_oneof![
        Just(Batching::None),
        Just(Batching::Both),
        Just(Batching::AShared),
        Just(Batching::BShared)
    ];
    let lead = prop::collection::vec(1usize..=3, 1..=2);
    (
        batching,
        lead,
        dim(),
        dim(),
        dim(),
        any::<bool>(),
        any::<bool>(),
        0u64..1000,
    )
        .prop_map(|(batching, lead, m, k, n, ta, tb, seed)| Case {
            lead: if matches!(batching, Batching::None) {
                vec![]
            } else {
                lead
            },
            batching,
            m,
            k,
            n,
            ta,
            tb,
            seed,
        })
}

proptest! {
    #![proptest_config(proptest_config(24))]

    #[test]
    fn matmul_forward_and_backward_match_f64(case in case_strategy()) {
        check(&case);
    }
}

#[test]
fn every_flag_combination_and_batching_at_tile_edges() {
    // Sizes one off the 32-wide tile and the 4-wide per-thread block, and 1.
    let mut seed = 100;
    for batching in [
        Batching::None,
        Batching::Both,
        Batching::AShared,
        Batching::BShared,
    ] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for (m, k, n) in [(33, 31, 65), (1, 7, 1), (5, 1, 3)] {
                let lead = if matches!(batching, Batching::None) {
                    vec![]
                } else {
                    vec![2, 3]
                };
                seed += 3;
                check(&Case {
                    batching,
                    lead,
                    m,
                    k,
                    n,
                    ta,
                    tb,
                    seed,
                });
            }
        }
    }
}

#[test]
fn large_matmul_above_500_in_every_dim() {
    // M, N, K all above 500 and none a multiple of the 32-wide tile or the 4-wide block:
    // many tiles, partial tiles on both edges, and the backward's transposed products
    // (dA = W B^T, dB = A^T W) at the same size.
    check(&Case {
        batching: Batching::None,
        lead: vec![],
        m: 517,
        k: 541,
        n: 529,
        ta: false,
        tb: false,
        seed: 9,
    });
}

#[test]
fn large_transposed_batched_matmul() {
    check(&Case {
        batching: Batching::BShared,
        lead: vec![2],
        m: 130,
        k: 257,
        n: 99,
        ta: true,
        tb: true,
        seed: 11,
    });
}

#[test]
fn gradcheck_all_flag_combinations() {
    // matmul is linear in each operand, so central differences have no truncation error and
    // a large step (1e-2) keeps f32 rounding of L (|L| < ~30 here, error ~1e-6 absolute)
    // down to ~1e-4 in the quotient; atol 5e-3 and rtol 1e-3 leave a wide margin while a
    // wrong gradient (off by an O(1) term) still fails.
    let opts = gc_opts(1e-2, 5e-3, 1e-3, 16);
    for batching in [
        Batching::None,
        Batching::Both,
        Batching::AShared,
        Batching::BShared,
    ] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let lead = if matches!(batching, Batching::None) {
                vec![]
            } else {
                vec![2]
            };
            let case = Case {
                batching,
                lead,
                m: 3,
                k: 5,
                n: 4,
                ta,
                tb,
                seed: 1,
            };
            let (a_shape, b_shape, _) = shapes(&case);
            let a = tensor(&values(a_shape.iter().product(), -1.0, 1.0, 1), &a_shape);
            let b = tensor(&values(b_shape.iter().product(), -1.0, 1.0, 2), &b_shape);
            assert_gradcheck(
                &format!("{case:?}"),
                |xs| matmul_t(&xs[0], &xs[1], ta, tb),
                &[a, b],
                &opts,
            );
        }
    }
}

#[test]
fn matmul_and_matmul_nt_are_the_flagged_products() {
    let a = values(6 * 5, -1.0, 1.0, 1);
    let b = values(5 * 4, -1.0, 1.0, 2);
    let w = values(4 * 5, -1.0, 1.0, 3);
    let (ta, tb, tw) = (
        tensor(&a, &[6, 5]),
        tensor(&b, &[5, 4]),
        tensor(&w, &[4, 5]),
    );
    assert_bits_eq(
        "matmul",
        &read(&ta.matmul(&tb).unwrap()),
        &read(&matmul_t(&ta, &tb, false, false).unwrap()),
    );
    assert_bits_eq(
        "matmul_nt",
        &read(&ta.matmul_nt(&tw).unwrap()),
        &read(&matmul_t(&ta, &tw, false, true).unwrap()),
    );
}
