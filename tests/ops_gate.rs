//! gate_expand: z[t, i r + j] = g[t, i] h[t, j]. Forward and both gradients against
//! float64, and gradcheck.
//!
//! Tolerances: each z is one f32 product of exact inputs (within u = 2^-24 relative).
//! dg[t, i] sums r products and dh[t, j] sums N products: within gamma_(r+1) and
//! gamma_(N+1) of the sums of |terms| (Higham's bound, any summation order).

mod common;

use common::reference;
use common::*;
use hydralora::engine::gate_expand;
use proptest::prelude::*;

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu) * 1.001 + 1e-30
}

fn check(t: usize, n: usize, r: usize, seed: u64) {
    let g = values(t * n, -1.0, 1.0, seed);
    let h = values(t * r, -1.0, 1.0, seed + 1);
    let dz = values(t * n * r, -1.0, 1.0, seed + 2);
    let what = format!("gate_expand t {t} n {n} r {r}");
    let (pg, ph) = (param(&g, &[t, n]), param(&h, &[t, r]));
    let z = gate_expand(&pg, &ph).unwrap();
    assert_eq!(z.shape(), &[t, n * r]);
    assert_close(
        &format!("{what} forward"),
        &read(&z),
        &reference::gate_expand(&g, &h, t, n, r),
        0.0,
        U,
    );

    let grads = z.backward_with(tensor(&dz, &[t, n * r])).unwrap();
    let dz64 = reference::f64s(&dz);
    let (dg, dh) = reference::gate_expand_backward(&g, &h, &dz64, t, n, r);
    let abs_g: Vec<f32> = g.iter().map(|v| v.abs()).collect();
    let abs_h: Vec<f32> = h.iter().map(|v| v.abs()).collect();
    let abs_dz: Vec<f64> = dz64.iter().map(|v| v.abs()).collect();
    let (dg_abs, dh_abs) = reference::gate_expand_backward(&abs_g, &abs_h, &abs_dz, t, n, r);
    let dg_bound: Vec<f64> = dg_abs.iter().map(|s| gamma(r + 1) * s).collect();
    let dh_bound: Vec<f64> = dh_abs.iter().map(|s| gamma(n + 1) * s).collect();
    assert_within(
        &format!("{what} dg"),
        &read(grads.get(&pg).unwrap()),
        &dg,
        &dg_bound,
    );
    assert_within(
        &format!("{what} dh"),
        &read(grads.get(&ph).unwrap()),
        &dh,
        &dh_bound,
    );
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn gate_expand_matches_f64(t in dim(), n in 1usize..=8, r in dim(), seed in 0u64..1000) {
        check(t, n, r, seed);
    }
}

#[test]
fn gate_expand_at_workgroup_edges() {
    check(1, 1, 1, 1);
    check(65, 4, 16, 2); // 65 tokens: one past the backward's 64-wide workgroup
    check(257, 3, 7, 3); // 257 * 21 outputs, not a multiple of 256
}

#[test]
fn gradcheck_gate_expand() {
    // Bilinear: no truncation error; eps 1e-2 keeps rounding of L (|L| < 20) < 1e-3.
    // atol and rtol 1e-2.
    let opts = gc_opts(1e-2, 1e-2, 1e-2, 16);
    let g = tensor(&values(3 * 4, -1.0, 1.0, 4), &[3, 4]);
    let h = tensor(&values(3 * 2, -1.0, 1.0, 5), &[3, 2]);
    assert_gradcheck(
        "gate_expand",
        |xs| gate_expand(&xs[0], &xs[1]),
        &[g, h],
        &opts,
    );
}

/// 1 where g[t, i] is among its row's k largest (ties: the lower index ranks first).
fn top_k_reference(g: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut mask = vec![0.0; g.len()];
    for (row, out) in g.chunks(n).zip(mask.chunks_mut(n)) {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
        for &i in order.iter().take(k) {
            out[i] = 1.0;
        }
    }
    mask
}

proptest! {
    #![proptest_config(proptest_config(24))]

    #[test]
    fn top_k_mask_picks_the_k_largest(t in dim(), n in 1usize..=9, k in 1usize..=10, few_values in any::<bool>(), seed in 0u64..1000) {
        // With few distinct values, ties are common: the lower index must win.
        let g: Vec<f32> = values(t * n, -1.0, 1.0, seed).iter().map(|&v| if few_values { (v * 2.0).round() } else { v }).collect();
        let mask = hydralora::engine::top_k_mask(&tensor(&g, &[t, n]), k).unwrap();
        assert!(!mask.tracks_grad());
        assert_bits_eq("top_k_mask", &read(&mask), &top_k_reference(&g, n, k));
    }
}
