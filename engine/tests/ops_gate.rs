//! gate_expand: z[t, i r + j] = g[t, i] h[t, j], and routed_expand, the same with
//! g = softmax(logits) taken inside the kernel, on packed sources [T, r + N]. Forward and both gradients against float64,
//! and gradcheck; top_k_mask against a sort.
//!
//! Tolerances: each z is one f32 product of exact inputs (within u = 2^-24 relative).
//! dg[t, i] sums r products and dh[t, j] sums N products: within gamma_(r+1) and
//! gamma_(N+1) of the sums of |terms| (Higham's bound, any summation order).

mod common;

use common::reference;
use common::*;
use hydralora_engine::{gate_expand, routed_expand};
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

/// routed_expand against float64, on one packed source S [T, r + N] (h = S[:, ..r],
/// logits = S[:, r..], as HydraLoRA's x [A; Wg]^T) or on two (logits from L, h from H, the
/// dropout case): g = softmax(logits) per row, z = g_i h_j, dlogits = g (dg - sum_k g_k dg_k)
/// with dg_i = sum_j dz h_j, dh_j = sum_i dz g_i; the columns a source does not feed get a
/// zero gradient.
///
/// Tolerances: logits in [-3, 3], so exp's argument is in [-6, 0], where WGSL's exp is
/// within 3 + 2 * 6 ulp; with the N-term sum and the division each gate is within about
/// (15 + N + 2) u of exact, so 64 u relative (N <= 8) on z. The gradients add sums of r and N
/// products: 64 u + gamma of the sums of |terms| (the softmax backward's cancellation is
/// measured against |g| (|dg| + sum |g dg|), not against the small result).
fn check_routed(t: usize, n: usize, r: usize, packed: bool, seed: u64) {
    let w = r + n;
    // Row-wise: h columns in [-1, 1), logit columns in [-3, 3).
    let source = |s: u64| -> Vec<f32> {
        let (h, l) = (values(t * r, -1.0, 1.0, s), values(t * n, -3.0, 3.0, s + 1));
        (0..t)
            .flat_map(|row| [&h[row * r..(row + 1) * r], &l[row * n..(row + 1) * n]].concat())
            .collect()
    };
    let lsrc = source(seed);
    let hsrc = if packed {
        lsrc.clone()
    } else {
        source(seed + 5)
    };
    let dz = values(t * n * r, -1.0, 1.0, seed + 2);
    let what = format!("routed_expand t {t} n {n} r {r} packed {packed}");
    let logits: Vec<f32> = (0..t)
        .flat_map(|row| lsrc[row * w + r..(row + 1) * w].to_vec())
        .collect();
    let h: Vec<f32> = (0..t)
        .flat_map(|row| hsrc[row * w..row * w + r].to_vec())
        .collect();
    let g = reference::softmax(&logits, n, 1.0, None); // [t, n], f64
    let pl = param(&lsrc, &[t, w]);
    let ph = if packed {
        pl.clone()
    } else {
        param(&hsrc, &[t, w])
    };
    let z = routed_expand(&pl, &ph, r).unwrap();
    assert_eq!(z.shape(), &[t, n * r]);
    let mut z_ref = vec![0.0; t * n * r];
    let (mut dg, mut dg_abs) = (vec![0.0; t * n], vec![0.0; t * n]);
    let (mut dh, mut dh_abs) = (vec![0.0; t * r], vec![0.0; t * r]);
    for tt in 0..t {
        for i in 0..n {
            for j in 0..r {
                let at = tt * n * r + i * r + j;
                let (gi, hj, dzv) = (g[tt * n + i], h[tt * r + j] as f64, dz[at] as f64);
                z_ref[at] = gi * hj;
                dg[tt * n + i] += dzv * hj;
                dg_abs[tt * n + i] += (dzv * hj).abs();
                dh[tt * r + j] += dzv * gi;
                dh_abs[tt * r + j] += (dzv * gi).abs();
            }
        }
    }
    let z_bound: Vec<f64> = z_ref.iter().map(|v| 64.0 * U * v.abs() + 1e-30).collect();
    assert_within(&format!("{what} forward"), &read(&z), &z_ref, &z_bound);

    let grads = z.backward_with(tensor(&dz, &[t, n * r])).unwrap();
    let dl = reference::softmax_backward(&g, &dg, n, 1.0);
    // The expected gradient of each source and its bound, column by column.
    let (mut want_l, mut bound_l) = (vec![0.0; t * w], vec![1e-30; t * w]);
    let (mut want_h, mut bound_h) = (vec![0.0; t * w], vec![1e-30; t * w]);
    for tt in 0..t {
        let row = tt * n..(tt + 1) * n;
        let mixed: f64 = row.clone().map(|c| g[c] * dg_abs[c]).sum();
        for i in 0..n {
            let c = tt * n + i;
            want_l[tt * w + r + i] = dl[c];
            bound_l[tt * w + r + i] += (64.0 * U + gamma(r + n + 1)) * g[c] * (dg_abs[c] + mixed);
        }
        for j in 0..r {
            want_h[tt * w + j] = dh[tt * r + j];
            bound_h[tt * w + j] += (64.0 * U + gamma(n + 1)) * dh_abs[tt * r + j];
        }
    }
    if packed {
        // One source: both parts in one gradient.
        let want: Vec<f64> = want_l.iter().zip(&want_h).map(|(a, b)| a + b).collect();
        let bound: Vec<f64> = bound_l.iter().zip(&bound_h).map(|(a, b)| a + b).collect();
        assert_within(
            &format!("{what} d source"),
            &read(grads.get(&pl).unwrap()),
            &want,
            &bound,
        );
    } else {
        assert_within(
            &format!("{what} d logits source"),
            &read(grads.get(&pl).unwrap()),
            &want_l,
            &bound_l,
        );
        assert_within(
            &format!("{what} d h source"),
            &read(grads.get(&ph).unwrap()),
            &want_h,
            &bound_h,
        );
    }
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn routed_expand_matches_f64(t in dim(), n in 1usize..=8, r in dim(), packed in any::<bool>(), seed in 0u64..1000) {
        check_routed(t, n, r, packed, seed);
    }
}

#[test]
fn routed_expand_at_workgroup_edges() {
    for packed in [true, false] {
        check_routed(1, 1, 1, packed, 11); // one head: g = 1, dlogits = 0
        check_routed(65, 4, 16, packed, 12); // one past the 64-token workgroup
        check_routed(257, 3, 7, packed, 13);
    }
}

#[test]
fn routed_expand_is_softmax_then_gate_expand() {
    let (t, r, n) = (9, 8, 4);
    let hl = tensor(&values(t * (r + n), -3.0, 3.0, 21), &[t, r + n]);
    let fused = read(&routed_expand(&hl, &hl, r).unwrap());
    let g = hl.narrow(1, r, n).unwrap().softmax().unwrap();
    let composed = gate_expand(&g, &hl.narrow(1, 0, r).unwrap()).unwrap();
    let composed: Vec<f64> = read(&composed).iter().map(|&v| v as f64).collect();
    assert_close("fused vs composed", &fused, &composed, 1e-6, 1e-5);
    // Shapes are checked before any kernel runs: sources of different shapes, and no
    // logit columns past the rank.
    let other = tensor(&values(t * r, -1.0, 1.0, 1), &[t, r]);
    for e in [
        routed_expand(&hl, &other, r).unwrap_err(),
        routed_expand(&other, &other, r).unwrap_err(),
    ] {
        assert!(e.to_string().contains("routed_expand"), "{e}");
    }
}

#[test]
fn gradcheck_routed_expand() {
    // Smooth: the central difference's truncation error at eps 1e-2 is about 1e-5 here.
    let opts = gc_opts(1e-2, 1e-2, 1e-2, 16);
    let l = tensor(&values(3 * 6, -2.0, 2.0, 24), &[3, 6]);
    let h = tensor(&values(3 * 6, -1.0, 1.0, 25), &[3, 6]);
    // Two sources (h from columns 0..2 of one, logits from 2..6 of the other), then one.
    assert_gradcheck(
        "routed_expand",
        |xs| routed_expand(&xs[0], &xs[1], 2),
        &[l.clone(), h],
        &opts,
    );
    assert_gradcheck(
        "routed_expand packed",
        |xs| routed_expand(&xs[0], &xs[0], 2),
        &[l],
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
        let mask = hydralora_engine::top_k_mask(&tensor(&g, &[t, n]), k).unwrap();
        assert!(!mask.tracks_grad());
        assert_bits_eq("top_k_mask", &read(&mask), &top_k_reference(&g, n, k));
    }
}
