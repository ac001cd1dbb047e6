//! Causal attention with grouped-query heads (Hq a multiple of Hkv, and Hq = Hkv), with
//! S > T (keys already cached: query t sees keys 0..=t + S - T): forward and the gradients
//! of q, k and v against a float64 reference, and gradcheck.
//!
//! Tolerance, with |q|, |k|, |v| <= 1 and head dim D: each score is a D-term dot product
//! (error <= gamma_D D), scaled by 1/sqrt(D); the softmax adds exp's (3 + 2|z|) ulp and a
//! sum of S terms; the output sums S products. That gives an absolute error of order
//! (D^2 + S + 20) u; we allow 8 (D^2 + S + 20) u (u = 2^-24). The gradients add one more
//! pass through the same products and, for k and v, sums over the (Hq / Hkv) T queries
//! that read each key: 16 (D^2 + S + Hq/Hkv T + 20) u, scaled by the size of the upstream
//! gradient (<= 1 here).

mod common;

use common::reference::{self, AttnShape};
use common::*;
use hydralora::engine::causal_attention;
use proptest::prelude::*;

fn check(sh: AttnShape, seed: u64) {
    let q = values(sh.b * sh.hq * sh.t * sh.d, -1.0, 1.0, seed);
    let k = values(sh.b * sh.hkv * sh.s * sh.d, -1.0, 1.0, seed + 1);
    let v = values(sh.b * sh.hkv * sh.s * sh.d, -1.0, 1.0, seed + 2);
    let dout = values(q.len(), -1.0, 1.0, seed + 3);
    let what = format!("{sh:?}");
    let q_shape = [sh.b, sh.hq, sh.t, sh.d];
    let kv_shape = [sh.b, sh.hkv, sh.s, sh.d];
    let (pq, pk, pv) = (
        param(&q, &q_shape),
        param(&k, &kv_shape),
        param(&v, &kv_shape),
    );
    let out = causal_attention(&pq, &pk, &pv).unwrap();
    assert_eq!(out.shape(), &q_shape);
    let atol = 8.0 * (sh.d * sh.d + sh.s + 20) as f64 * U;
    assert_close(
        &format!("{what} forward"),
        &read(&out),
        &reference::attention(&q, &k, &v, sh),
        atol,
        0.0,
    );

    let grads = out.backward_with(tensor(&dout, &q_shape)).unwrap();
    let (dq, dk, dv) = reference::attention_backward(&q, &k, &v, &reference::f64s(&dout), sh);
    let atol = 16.0 * (sh.d * sh.d + sh.s + sh.hq / sh.hkv * sh.t + 20) as f64 * U;
    assert_close(
        &format!("{what} dq"),
        &read(grads.get(&pq).unwrap()),
        &dq,
        atol,
        0.0,
    );
    assert_close(
        &format!("{what} dk"),
        &read(grads.get(&pk).unwrap()),
        &dk,
        atol,
        0.0,
    );
    assert_close(
        &format!("{what} dv"),
        &read(grads.get(&pv).unwrap()),
        &dv,
        atol,
        0.0,
    );
}

fn shape() -> impl Strategy<Value = AttnShape> {
    (
        1usize..=2,
        1usize..=3,
        1usize..=3,
        1usize..=7,
        0usize..=5,
        1usize..=9,
    )
        .prop_map(|(b, hkv, group, t, cached, d)| AttnShape {
            b,
            hq: hkv * group,
            hkv,
            t,
            s: t + cached,
            d,
        })
}

proptest! {
    #![proptest_config(proptest_config(16))]

    #[test]
    fn attention_matches_f64(sh in shape(), seed in 0u64..1000) {
        check(sh, seed);
    }
}

#[test]
fn grouped_query_and_cache_offsets() {
    let cases = [
        AttnShape {
            b: 1,
            hq: 4,
            hkv: 2,
            t: 5,
            s: 5,
            d: 8,
        }, // GQA, no cache
        AttnShape {
            b: 2,
            hq: 4,
            hkv: 2,
            t: 3,
            s: 7,
            d: 4,
        }, // GQA, 4 cached keys
        AttnShape {
            b: 1,
            hq: 3,
            hkv: 3,
            t: 4,
            s: 9,
            d: 6,
        }, // Hq = Hkv, cached keys
        AttnShape {
            b: 2,
            hq: 2,
            hkv: 2,
            t: 1,
            s: 6,
            d: 4,
        }, // one decode step
        AttnShape {
            b: 1,
            hq: 4,
            hkv: 1,
            t: 6,
            s: 6,
            d: 5,
        }, // multi-query, odd head dim
        AttnShape {
            b: 1,
            hq: 4,
            hkv: 2,
            t: 33,
            s: 40,
            d: 16,
        }, // past a 32-wide matmul tile
        AttnShape {
            b: 1,
            hq: 2,
            hkv: 1,
            t: 70,
            s: 130,
            d: 8,
        }, // score rows past 128 columns
    ];
    for (i, sh) in cases.into_iter().enumerate() {
        check(sh, 10 * i as u64);
    }
}

#[test]
fn gradcheck_attention() {
    // Smooth in q, k, v (|x| <= 1): with eps 1e-3 truncation error is ~1e-6; f32 rounding
    // of L (|L| < 10) ~1e-3. Default 1e-2 tolerances.
    let opts = gc_opts(1e-3, 1e-2, 1e-2, 16);
    for sh in [
        AttnShape {
            b: 1,
            hq: 4,
            hkv: 2,
            t: 3,
            s: 5,
            d: 4,
        },
        AttnShape {
            b: 1,
            hq: 2,
            hkv: 2,
            t: 3,
            s: 3,
            d: 3,
        },
    ] {
        let q = tensor(
            &values(sh.b * sh.hq * sh.t * sh.d, -1.0, 1.0, 1),
            &[sh.b, sh.hq, sh.t, sh.d],
        );
        let k = tensor(
            &values(sh.b * sh.hkv * sh.s * sh.d, -1.0, 1.0, 2),
            &[sh.b, sh.hkv, sh.s, sh.d],
        );
        let v = tensor(
            &values(sh.b * sh.hkv * sh.s * sh.d, -1.0, 1.0, 3),
            &[sh.b, sh.hkv, sh.s, sh.d],
        );
        assert_gradcheck(
            &format!("{sh:?}"),
            |xs| causal_attention(&xs[0], &xs[1], &xs[2]),
            &[q, k, v],
            &opts,
        );
    }
}
