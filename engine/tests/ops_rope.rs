//! Rotary position embeddings (rotate-half layout) with `RopeTables::new` and
//! `rope_inv_freq`, in both layouts: [B, T, H, D] with t_div = H and [B, H, T, D] with
//! t_div = 1, at positions that start past 0 (a KV cache offset). Forward and backward
//! against a float64 rotate-half reference, and gradcheck.
//!
//! Tolerance: the tables hold f32 roundings of the f64 cos and sin (each off by <= u
//! relative, u = 2^-24), and each output is x1 c - x2 s (two products and a difference),
//! so |error| <= (|x1| + |x2|) 4u per element: atol 8u for |x| <= 1. The backward rotates
//! the gradient back with the same tables: the same bound.

mod common;

use common::reference;
use common::*;
use hydralora_engine::{rope, rope_inv_freq, RopeTables};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Layout {
    /// [B, T, H, D], t_div = H
    Bthd,
    /// [B, H, T, D], t_div = 1
    Bhtd,
}

#[allow(clippy::too_many_arguments)]
fn check(
    layout: Layout,
    b: usize,
    t: usize,
    h: usize,
    d: usize,
    start: u32,
    theta: f64,
    seed: u64,
) {
    let dev = device();
    let (shape, t_div) = match layout {
        Layout::Bthd => ([b, t, h, d], h),
        Layout::Bhtd => ([b, h, t, d], 1),
    };
    let n = b * t * h * d;
    let x = values(n, -1.0, 1.0, seed);
    let dy = values(n, -1.0, 1.0, seed + 1);
    let positions: Vec<u32> = (start..start + t as u32).collect();
    let inv_freq = rope_inv_freq(d, theta);
    let tables = RopeTables::new(&dev, &positions, &inv_freq).unwrap();
    assert_eq!(tables.positions(), t);
    let what = format!("rope {layout:?} {shape:?} from position {start}, theta {theta}");

    let p = param(&x, &shape);
    let y = rope(&p, &tables, t_div).unwrap();
    let expected = reference::rope(&reference::f64s(&x), d, t_div, &positions, &inv_freq, 1.0);
    assert_close(
        &format!("{what} forward"),
        &read(&y),
        &expected,
        8.0 * U,
        0.0,
    );

    let grads = y.backward_with(tensor(&dy, &shape)).unwrap();
    let dx = reference::rope(&reference::f64s(&dy), d, t_div, &positions, &inv_freq, -1.0);
    assert_close(
        &format!("{what} backward"),
        &read(grads.get(&p).unwrap()),
        &dx,
        8.0 * U,
        0.0,
    );
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn rope_matches_f64_rotate_half(bthd in any::<bool>(), b in 1usize..=2, t in 1usize..=9, h in 1usize..=4,
                                    d in prop::sample::select(vec![2usize, 4, 6, 8, 16, 64, 130]),
                                    start in prop_oneof![Just(0u32), 0u32..5000], theta in prop::sample::select(vec![10_000.0f64, 500_000.0]),
                                    seed in 0u64..1000) {
        check(if bthd { Layout::Bthd } else { Layout::Bhtd }, b, t, h, d, start, theta, seed);
    }
}

#[test]
fn both_layouts_with_a_cache_offset() {
    for layout in [Layout::Bthd, Layout::Bhtd] {
        check(layout, 2, 5, 3, 8, 0, 10_000.0, 1);
        check(layout, 1, 7, 4, 64, 123, 10_000.0, 2);
        check(layout, 3, 1, 2, 16, 4095, 500_000.0, 3); // one decode step deep in the cache
    }
}

#[test]
fn rope_at_position_zero_is_the_identity() {
    let dev = device();
    let x = values(2 * 3 * 8, -1.0, 1.0, 4);
    let tables = RopeTables::new(&dev, &[0], &rope_inv_freq(8, 10_000.0)).unwrap();
    let y = rope(&tensor(&x, &[2, 1, 3, 8]), &tables, 3).unwrap();
    assert_bits_eq("position 0", &read(&y), &x);
}

#[test]
fn gradcheck_rope() {
    // RoPE is linear in x: no truncation error; eps 1e-2 keeps rounding of L (|L| < 20)
    // below 1e-3. atol and rtol 1e-2.
    let dev = device();
    let opts = gc_opts(1e-2, 1e-2, 1e-2, 16);
    let tables = RopeTables::new(&dev, &[3, 4, 5], &rope_inv_freq(4, 10_000.0)).unwrap();
    let x = tensor(&values(3 * 2 * 4, -1.0, 1.0, 6), &[1, 3, 2, 4]);
    assert_gradcheck(
        "rope bthd",
        |xs| rope(&xs[0], &tables, 2),
        std::slice::from_ref(&x),
        &opts,
    );
    let x = tensor(&values(2 * 3 * 4, -1.0, 1.0, 7), &[1, 2, 3, 4]);
    assert_gradcheck(
        "rope bhtd",
        |xs| rope(&xs[0], &tables, 1),
        std::slice::from_ref(&x),
        &opts,
    );
}
