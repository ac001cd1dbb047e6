//! The row reductions (softmax, rms_norm, cross-entropy, sum) on both flavours of their
//! kernels: subgroup reductions (`+subgroup` variants, the default where the device has
//! SUBGROUP) and workgroup trees (the fallback), each on its own device so that neither test
//! changes the other's choice. Every entry point of both runs (rms_norm's weight gradient
//! too, and on a CPU device the per-row softmax and its backward for rows up to 4096) and is
//! checked against float64 with the same bounds; the shapes put rows past one workgroup's
//! 128 (or 64) lanes, and softmax rows past 4096 so that a CPU device also runs the
//! workgroup kernel. Each path must also repeat its results bit for bit.
//!
//! Bounds (u = 2^-24; the sums have no cancellation unless said): softmax as in
//! ops_softmax.rs; rms_norm forward rtol 2 (dim + 16) u, dx an absolute bound
//! 2 r (|dy w| + |x| r mean|dy w x r|) (dim + 24) u (it cancels), dw as in ops_norm.rs
//! (2 gamma_(rows + dim + 16) sum |dy x r|); cross-entropy per row
//! lse error (V + 40) u + 2^-21 + 6 u (ln V + 8), the mean twice that plus gamma_N of the
//! losses; a sum gamma_n sum |x|, doubled.

mod common;

use common::reference;
use common::*;
use hydralora_engine::{cross_entropy, rms_norm, softmax_scaled, CausalMask, Device, Tensor};

/// The test devices: the fallback always, the subgroup kernels where the adapter has them.
fn devices() -> Vec<(&'static str, Device)> {
    let fallback = Device::new().unwrap();
    fallback.set_subgroup_reductions(false).unwrap();
    assert!(!fallback.subgroup_reductions());
    let mut out = vec![("tree", fallback)];
    let sg = Device::new().unwrap();
    if sg.info().subgroup {
        assert!(sg.subgroup_reductions(), "on by default with SUBGROUP");
        out.push(("subgroup", sg));
    } else {
        assert!(sg.set_subgroup_reductions(true).is_err());
        eprintln!("note: this adapter has no SUBGROUP; only the fallback ran");
    }
    out
}

fn on(dev: &Device, data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(dev, data, shape).unwrap()
}

fn softmax_case(path: &str, dev: &Device, rows: usize, cols: usize, mask: Option<(usize, usize)>) {
    let x = values(rows * cols, -3.0, 3.0, 7);
    let dy = values(rows * cols, -1.0, 1.0, 8);
    let what = format!("{path}: softmax [{rows}, {cols}] mask {mask:?}");
    let run = || {
        let p = on(dev, &x, &[rows, cols]).into_param();
        let y = softmax_scaled(
            &p,
            1.0,
            mask.map(|(q_len, offset)| CausalMask { q_len, offset }),
        )
        .unwrap();
        let g = y.backward_with(on(dev, &dy, &[rows, cols])).unwrap();
        (read(&y), read(g.get(&p).unwrap()))
    };
    let (y, dx) = run();
    let (y2, dx2) = run();
    assert_bits_eq(&format!("{what} repeat"), &y, &y2);
    assert_bits_eq(&format!("{what} repeat dx"), &dx, &dx2);
    let expected = reference::softmax(&x, cols, 1.0, mask);
    let zmax = 6.0;
    let rtol_y = 2.0 * ((2.0 * (6.0 + 2.0 * zmax) + 2.0 * zmax + cols as f64 + 1.0) * U);
    assert_close(&format!("{what} forward"), &y, &expected, 1e-30, rtol_y);
    let dy64 = reference::f64s(&dy);
    let want = reference::softmax_backward(&expected, &dy64, cols, 1.0);
    let gamma = (cols + 2) as f64 * U / (1.0 - (cols + 2) as f64 * U);
    let mut bound = vec![0.0; rows * cols];
    for r in 0..rows {
        let row = r * cols..(r + 1) * cols;
        let dot: f64 = row.clone().map(|i| expected[i] * dy64[i]).sum();
        let abs_dot: f64 = row.clone().map(|i| (expected[i] * dy64[i]).abs()).sum();
        for i in row {
            bound[i] = 2.0
                * (expected[i] * ((dy64[i].abs() + dot.abs()) * rtol_y + gamma * abs_dot)
                    + 4.0 * U * want[i].abs())
                + 1e-30;
        }
    }
    assert_within(&format!("{what} backward"), &dx, &want, &bound);
}

fn rms_norm_case(path: &str, dev: &Device, rows: usize, dim: usize) {
    let eps = 1e-5;
    let x = values(rows * dim, -2.0, 2.0, 3);
    let w = values(dim, -1.5, 1.5, 4);
    let dy = values(rows * dim, -1.0, 1.0, 5);
    let what = format!("{path}: rms_norm [{rows}, {dim}]");
    let run = || {
        let px = on(dev, &x, &[rows, dim]).into_param();
        let pw = on(dev, &w, &[dim]).into_param();
        let y = rms_norm(&px, &pw, eps).unwrap();
        let g = y.backward_with(on(dev, &dy, &[rows, dim])).unwrap();
        (
            read(&y),
            read(g.get(&px).unwrap()),
            read(g.get(&pw).unwrap()),
        )
    };
    let (y, dx, dw) = run();
    let (y2, dx2, dw2) = run();
    assert_bits_eq(&format!("{what} repeat"), &y, &y2);
    assert_bits_eq(&format!("{what} repeat dx"), &dx, &dx2);
    assert_bits_eq(&format!("{what} repeat dw"), &dw, &dw2);
    let expected = reference::rms_norm(&x, &w, dim, eps as f64);
    let rtol = 2.0 * (dim + 16) as f64 * U;
    assert_close(&format!("{what} forward"), &y, &expected, 1e-30, rtol);
    let dy64 = reference::f64s(&dy);
    let (want, want_dw) = reference::rms_norm_backward(&x, &w, &dy64, dim, eps as f64);
    let mut bound = vec![0.0; rows * dim];
    let mut dw_abs = vec![0.0; dim];
    for r in 0..rows {
        let row = &x[r * dim..(r + 1) * dim];
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
        let rstd = 1.0 / (ms + eps as f64).sqrt();
        let mean_abs: f64 = (0..dim)
            .map(|i| (dy64[r * dim + i] * w[i] as f64 * row[i] as f64 * rstd).abs())
            .sum::<f64>()
            / dim as f64;
        for j in 0..dim {
            let g = (dy64[r * dim + j] * w[j] as f64).abs();
            bound[r * dim + j] =
                2.0 * rstd * (g + (row[j] as f64).abs() * rstd * mean_abs) * (dim + 24) as f64 * U
                    + 1e-30;
            dw_abs[j] += (dy64[r * dim + j] * row[j] as f64 * rstd).abs();
        }
    }
    assert_within(&format!("{what} dx"), &dx, &want, &bound);
    let dw_bound: Vec<f64> = dw_abs
        .iter()
        .map(|s| 2.0 * (rows + dim + 16) as f64 * U * s + 1e-30)
        .collect();
    assert_within(&format!("{what} dw"), &dw, &want_dw, &dw_bound);
}

fn cross_entropy_case(path: &str, dev: &Device, rows: usize, vocab: usize) {
    let logits = values(rows * vocab, -4.0, 4.0, 11);
    let labels: Vec<i32> = (0..rows)
        .map(|r| {
            if r % 3 == 1 {
                -100
            } else {
                ((r * 7919) % vocab) as i32
            }
        })
        .collect();
    let what = format!("{path}: cross_entropy [{rows}, {vocab}]");
    let run = || {
        let p = on(dev, &logits, &[rows, vocab]);
        let l = Tensor::from_i32(dev, &labels, &[rows]).unwrap();
        read(&cross_entropy(&p, &l).unwrap())
    };
    let loss = run();
    assert_bits_eq(&format!("{what} repeat"), &loss, &run());
    let (expected, _) = reference::cross_entropy(&logits, &labels, vocab);
    let counted = labels.iter().filter(|&&l| l != -100).count();
    let e_lse =
        (vocab + 40) as f64 * U + 1.0 / (1u64 << 21) as f64 + 6.0 * U * ((vocab as f64).ln() + 8.0);
    let bound = 2.0 * (e_lse + (rows + 4) as f64 * U * expected.abs() * counted as f64);
    assert_within(&format!("{what} loss"), &loss, &[expected], &[bound]);
}

fn sum_case(path: &str, dev: &Device, shape: &[usize], axis: usize) {
    let x = values(shape.iter().product(), -1.0, 1.0, 13);
    let what = format!("{path}: sum {shape:?} axis {axis}");
    let run = || read(&on(dev, &x, shape).sum(axis).unwrap());
    let got = run();
    assert_bits_eq(&format!("{what} repeat"), &got, &run());
    let x64 = reference::f64s(&x);
    let want = reference::sum_axis(&x64, shape, axis);
    let abs: Vec<f64> = x64.iter().map(|v| v.abs()).collect();
    let n = shape[axis] as f64;
    let bound: Vec<f64> = reference::sum_axis(&abs, shape, axis)
        .iter()
        .map(|s| 2.0 * n * U / (1.0 - n * U) * s + 1e-30)
        .collect();
    assert_within(&what, &got, &want, &bound);
}

#[test]
fn both_reduction_kernels_match_f64() {
    for (path, dev) in devices() {
        softmax_case(path, &dev, 3, 5000, None);
        softmax_case(path, &dev, 4, 4500, Some((2, 4400)));
        softmax_case(path, &dev, 5, 77, None); // GPU: one workgroup per row, short rows
        rms_norm_case(path, &dev, 5, 300);
        rms_norm_case(path, &dev, 3, 64); // fewer columns than lanes
        cross_entropy_case(path, &dev, 7, 1000);
        cross_entropy_case(path, &dev, 3, 50);
        sum_case(path, &dev, &[3, 1000, 2], 1);
        sum_case(path, &dev, &[70, 5], 0);
        sum_case(path, &dev, &[4, 9], 1);
    }
}
