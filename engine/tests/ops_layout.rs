//! Layout ops: reshape, transpose, narrow and concat, forward and backward. They only move
//! values, so everything is compared exactly (bit for bit) against a host reference,
//! including the u32 and i32 dtypes; plus gradcheck of a composite.

mod common;

use common::reference::{self, numel};
use common::*;
use hydralora_engine::Tensor;
use proptest::prelude::*;

fn shape(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(dim(), 2..=max_rank)
        .prop_filter("keep tensors small", |s| numel(s) <= 50_000)
}

fn check_transpose(shape: &[usize], d0: usize, d1: usize, seed: u64) {
    let x = values(numel(shape), -1.0, 1.0, seed);
    let p = param(&x, shape);
    let y = p.transpose(d0, d1).unwrap();
    let (expected, out_shape) = reference::transpose(&x, shape, d0, d1);
    assert_eq!(y.shape(), out_shape.as_slice());
    assert_bits_eq(
        &format!("transpose {d0} {d1} of {shape:?}"),
        &read(&y),
        &expected,
    );
    // Backward: the upstream gradient transposed back.
    let w = values(numel(shape), -1.0, 1.0, seed + 1);
    let g = y.backward_with(tensor(&w, &out_shape)).unwrap();
    let (back, back_shape) = reference::transpose(&w, &out_shape, d0, d1);
    assert_eq!(back_shape, shape);
    assert_bits_eq("transpose backward", &read(g.get(&p).unwrap()), &back);
}

fn check_narrow(shape: &[usize], axis: usize, start: usize, len: usize, seed: u64) {
    let x = values(numel(shape), -1.0, 1.0, seed);
    let p = param(&x, shape);
    let y = p.narrow(axis, start, len).unwrap();
    let mut out_shape = shape.to_vec();
    out_shape[axis] = len;
    assert_eq!(y.shape(), out_shape.as_slice());
    assert_bits_eq(
        &format!("narrow {axis} {start}..+{len} of {shape:?}"),
        &read(&y),
        &reference::narrow(&x, shape, axis, start, len),
    );
    // Backward: the upstream gradient in the slice, zeros elsewhere.
    let w = values(numel(&out_shape), -1.0, 1.0, seed + 1);
    let g = y.backward_with(tensor(&w, &out_shape)).unwrap();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut expected = vec![0.0f32; x.len()];
    for o in 0..outer {
        for l in 0..len {
            for i in 0..inner {
                expected[(o * shape[axis] + start + l) * inner + i] = w[(o * len + l) * inner + i];
            }
        }
    }
    assert_bits_eq("narrow backward", &read(g.get(&p).unwrap()), &expected);
}

fn check_concat(shapes: &[Vec<usize>], axis: usize, seed: u64) {
    let data: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| values(numel(s), -1.0, 1.0, seed + i as u64))
        .collect();
    let params: Vec<Tensor> = data.iter().zip(shapes).map(|(d, s)| param(d, s)).collect();
    let y = Tensor::concat(&params, axis).unwrap();
    let mut out_shape = shapes[0].clone();
    out_shape[axis] = shapes.iter().map(|s| s[axis]).sum();
    assert_eq!(y.shape(), out_shape.as_slice());
    let parts: Vec<(&[f32], &[usize])> = data
        .iter()
        .zip(shapes)
        .map(|(d, s)| (d.as_slice(), s.as_slice()))
        .collect();
    assert_bits_eq(
        &format!("concat {shapes:?} on {axis}"),
        &read(&y),
        &reference::concat(&parts, axis),
    );
    // Backward: each part gets its own slice of the upstream gradient.
    let w = values(numel(&out_shape), -1.0, 1.0, seed + 100);
    let g = y.backward_with(tensor(&w, &out_shape)).unwrap();
    assert_eq!(g.len(), shapes.len());
    let mut at = 0;
    for (p, s) in params.iter().zip(shapes) {
        let expected = reference::narrow(&w, &out_shape, axis, at, s[axis]);
        assert_bits_eq(
            &format!("concat backward part at {at}"),
            &read(g.get(p).unwrap()),
            &expected,
        );
        at += s[axis];
    }
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn transpose_is_exact((shape, d0, d1) in shape(4).prop_flat_map(|s| { let r = s.len(); (Just(s), 0..r, 0..r) }), seed in 0u64..1000) {
        check_transpose(&shape, d0, d1, seed);
    }

    #[test]
    fn narrow_is_exact((shape, axis, start, len) in shape(4).prop_flat_map(|s| {
        let r = s.len();
        (Just(s), 0..r)
    }).prop_flat_map(|(s, axis)| {
        let n = s[axis];
        (Just(s), Just(axis), 0..n)
    }).prop_flat_map(|(s, axis, start)| {
        let left = s[axis] - start;
        (Just(s), Just(axis), Just(start), 1..=left)
    }), seed in 0u64..1000) {
        check_narrow(&shape, axis, start, len, seed);
    }

    #[test]
    fn concat_is_exact((shapes, axis) in shape(4).prop_flat_map(|s| {
        let r = s.len();
        (Just(s), 0..r, prop::collection::vec(1usize..=5, 1..=3))
    }).prop_map(|(s, axis, sizes)| {
        let shapes = sizes.iter().map(|&n| { let mut p = s.clone(); p[axis] = n; p }).collect::<Vec<_>>();
        (shapes, axis)
    }), seed in 0u64..1000) {
        check_concat(&shapes, axis, seed);
    }
}

#[test]
fn layout_ops_at_odd_sizes() {
    check_transpose(&[33, 257], 0, 1, 1);
    check_transpose(&[2, 3, 5, 7], 1, 3, 2);
    check_transpose(&[1, 9, 1], 0, 2, 3);
    check_narrow(&[4, 129, 3], 1, 64, 65, 4);
    check_narrow(&[5, 1], 0, 4, 1, 5);
    check_concat(&[vec![3, 1, 4], vec![3, 2, 4], vec![3, 7, 4]], 1, 6);
    check_concat(&[vec![2, 257]], 0, 7);
}

#[test]
fn reshape_shares_data_and_reshapes_the_gradient_back() {
    let x = values(2 * 3 * 4, -1.0, 1.0, 8);
    let p = param(&x, &[2, 3, 4]);
    let y = p.reshape(&[4, 6]).unwrap();
    assert_eq!(y.shape(), &[4, 6]);
    assert_bits_eq("reshape", &read(&y), &x);
    let w = values(24, -1.0, 1.0, 9);
    let g = y
        .reshape(&[24])
        .unwrap()
        .backward_with(tensor(&w, &[24]))
        .unwrap();
    let gx = g.get(&p).unwrap();
    assert_eq!(gx.shape(), &[2, 3, 4]);
    assert_bits_eq("reshape backward", &read(gx), &w);
}

#[test]
fn layout_ops_move_u32_and_i32_words() {
    let dev = device();
    let ids: Vec<u32> = (0..6 * 5).map(|i| i * 3 + 1).collect();
    let t = Tensor::from_u32(&dev, &ids, &[6, 5]).unwrap();
    let (tr, _) = reference::transpose(&ids, &[6, 5], 0, 1);
    assert_eq!(t.transpose(0, 1).unwrap().to_vec_u32().unwrap(), tr);
    assert_eq!(
        t.narrow(0, 2, 3).unwrap().to_vec_u32().unwrap(),
        reference::narrow(&ids, &[6, 5], 0, 2, 3)
    );
    let labels: Vec<i32> = vec![-100, 5, -7, 0, 3, 2];
    let l = Tensor::from_i32(&dev, &labels, &[2, 3]).unwrap();
    let both = Tensor::concat(&[l.clone(), l], 0).unwrap();
    assert_eq!(
        both.to_vec_i32().unwrap(),
        [labels.clone(), labels].concat()
    );
}

#[test]
fn gradcheck_layout_composite() {
    // Linear: no truncation error; eps 1e-2 keeps rounding of L (|L| < 20) < 1e-3.
    let opts = gc_opts(1e-2, 1e-2, 1e-2, 24);
    let x = tensor(&values(3 * 4, -1.0, 1.0, 10), &[3, 4]);
    let y = tensor(&values(4 * 2, -1.0, 1.0, 11), &[4, 2]);
    assert_gradcheck(
        "concat(narrow(x), transpose(y)).reshape",
        |xs| {
            let a = xs[0].narrow(0, 1, 2)?; // [2, 4]
            let b = xs[1].transpose(0, 1)?; // [2, 4]
            Tensor::concat(&[a, b, xs[0].narrow(0, 0, 1)?], 0)?.reshape(&[5, 2, 2])
        },
        &[x, y],
        &opts,
    );
}
