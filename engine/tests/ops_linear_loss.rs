//! linear_cross_entropy: cross_entropy(hidden W^T, labels) over chunks of rows, W in row
//! parts. Its loss and gradients (hidden's, and each trainable part's) against a float64
//! reference and the unchunked engine path (matmul_nt, concat, cross_entropy), over several
//! chunks, an uneven last chunk, ignored labels and a weight split in parts; gradcheck; a
//! frozen f16 weight.
//!
//! Error bounds, with |h|, |w| <= 1, H inner dims and V classes (u = 2^-24): a logit is an
//! H-term dot product, off by at most e_x = gamma_H sum|h w| <= (H + 1) u H. A row's
//! log-sum-exp adds ops_loss.rs's e_lse (exp, a V-term sum, log). The loss, a mean of row
//! losses lse - x_label, is off by 2 e_x + e_lse plus gamma_N of the row-loss sum.
//! A gradient element dlogit = (exp(x - lse) - onehot) s, s = grad / count, is off by
//! p (2 e_x + e_lse + 10 u) |s| + 4 u |dlogit| (p the softmax value); d hidden = dlogits W
//! and dW_i = dlogits_i^T h add gamma of their sum's length times the sum of |terms|.
//! Every bound is doubled.

mod common;

use common::*;
use hydralora_engine::{
    cross_entropy, linear_cross_entropy, linear_cross_entropy_chunked, loss_chunk_rows, no_grad,
    DType, Tensor, IGNORE_INDEX, LOSS_CHUNK_BYTES,
};

/// The float64 reference of one case: the loss, d hidden [N, H] and dW [V, H] for upstream
/// gradient `g`, and the per-element bounds of the f32 results.
struct Reference {
    loss: f64,
    loss_bound: f64,
    dh: Vec<f64>,
    dh_bound: Vec<f64>,
    dw: Vec<f64>,
    dw_bound: Vec<f64>,
}

fn e_lse(vocab: usize) -> f64 {
    (vocab + 40) as f64 * U + 1.0 / (1u64 << 21) as f64 + 6.0 * U * ((vocab as f64).ln() + 8.0)
}

fn reference(
    h: &[f32],
    w: &[f32],
    labels: &[i32],
    (n, hd, v): (usize, usize, usize),
    g: f64,
) -> Reference {
    let gamma = |k: usize| (k + 2) as f64 * U;
    let e_x = gamma(hd) * hd as f64;
    let rel = 2.0 * e_x + e_lse(v) + 10.0 * U;
    let count = labels.iter().filter(|&&l| l != IGNORE_INDEX).count() as f64;
    let s = g / count;
    let mut dl = vec![0.0f64; n * v]; // [N, V] dlogits
    let mut dl_err = vec![0.0f64; n * v]; // [N, V] their error bounds
    let (mut loss, mut loss_abs) = (0.0, 0.0);
    for r in 0..n {
        if labels[r] == IGNORE_INDEX {
            continue;
        }
        let x: Vec<f64> = (0..v)
            .map(|c| {
                (0..hd)
                    .map(|k| h[r * hd + k] as f64 * w[c * hd + k] as f64)
                    .sum()
            })
            .collect();
        let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + x.iter().map(|&xc| (xc - max).exp()).sum::<f64>().ln();
        let label = labels[r] as usize;
        loss += lse - x[label];
        loss_abs += (lse - x[label]).abs();
        for c in 0..v {
            let p = (x[c] - lse).exp();
            let d = (p - if c == label { 1.0 } else { 0.0 }) * s;
            dl[r * v + c] = d;
            dl_err[r * v + c] = p * rel * s.abs() + 4.0 * U * d.abs();
        }
    }
    let loss_bound = 2.0 * (2.0 * e_x + e_lse(v) + gamma(n) * loss_abs / count);
    let mut dh = vec![0.0; n * hd];
    let mut dh_bound = vec![0.0; n * hd];
    for r in 0..n {
        for k in 0..hd {
            let (mut sum, mut abs, mut err) = (0.0, 0.0, 0.0);
            for c in 0..v {
                let wk = w[c * hd + k] as f64;
                sum += dl[r * v + c] * wk;
                abs += (dl[r * v + c] * wk).abs();
                err += dl_err[r * v + c] * wk.abs();
            }
            dh[r * hd + k] = sum;
            dh_bound[r * hd + k] = 2.0 * (err + gamma(v) * abs) + 1e-30;
        }
    }
    let mut dw = vec![0.0; v * hd];
    let mut dw_bound = vec![0.0; v * hd];
    for c in 0..v {
        for k in 0..hd {
            let (mut sum, mut abs, mut err) = (0.0, 0.0, 0.0);
            for r in 0..n {
                let hk = h[r * hd + k] as f64;
                sum += dl[r * v + c] * hk;
                abs += (dl[r * v + c] * hk).abs();
                err += dl_err[r * v + c] * hk.abs();
            }
            dw[c * hd + k] = sum;
            dw_bound[c * hd + k] = 2.0 * (err + gamma(n) * abs) + 1e-30;
        }
    }
    Reference {
        loss: loss / count,
        loss_bound,
        dh,
        dh_bound,
        dw,
        dw_bound,
    }
}

/// Splits W [V, H] into parameters of the given row counts.
fn parts_of(w: &[f32], hd: usize, rows: &[usize], trainable: bool) -> Vec<Tensor> {
    let mut start = 0;
    rows.iter()
        .map(|&r| {
            let part = tensor(&w[start * hd..(start + r) * hd], &[r, hd]);
            start += r;
            if trainable {
                part.into_param()
            } else {
                part
            }
        })
        .collect()
}

/// The fused loss on `chunk` rows at a time, and the unchunked engine path, against the
/// float64 reference: the loss and every gradient.
fn check(
    n: usize,
    hd: usize,
    part_rows: &[usize],
    chunk: usize,
    trainable: bool,
    g: f32,
    seed: u64,
) {
    let v: usize = part_rows.iter().sum();
    let what = format!(
        "N {n}, H {hd}, parts {part_rows:?}, chunk {chunk}, trainable W {trainable}, grad {g}"
    );
    let h = values(n * hd, -1.0, 1.0, seed);
    let w = values(v * hd, -1.0, 1.0, seed + 1);
    // Every third row ignored (the first row always counts).
    let labels: Vec<i32> = (0..n)
        .map(|r| {
            if r % 3 == 2 {
                IGNORE_INDEX
            } else {
                ((r * 7 + seed as usize) % v) as i32
            }
        })
        .collect();
    let want = reference(&h, &w, &labels, (n, hd, v), g as f64);
    let labels_t = Tensor::from_i32(&device(), &labels, &[n]).unwrap();
    let upstream = || tensor(&[g], &[1]);

    let hidden = param(&h, &[n, hd]);
    let parts = parts_of(&w, hd, part_rows, trainable);
    let fused = linear_cross_entropy_chunked(&hidden, &parts, &labels_t, chunk).unwrap();
    assert_eq!(fused.shape(), &[1]);
    let grads = fused.backward_with(upstream()).unwrap();
    let fused_loss = read(&fused);
    let fused_dh = read(grads.get(&hidden).unwrap());

    // The unchunked path: the whole logits, then cross_entropy.
    let hidden2 = param(&h, &[n, hd]);
    let parts2 = parts_of(&w, hd, part_rows, trainable);
    let logits: Vec<Tensor> = parts2
        .iter()
        .map(|p| hidden2.matmul_nt(p).unwrap())
        .collect();
    let whole = cross_entropy(&Tensor::concat(&logits, 1).unwrap(), &labels_t).unwrap();
    let grads2 = whole.backward_with(upstream()).unwrap();

    for (path, loss, dh) in [
        ("fused", &fused_loss, &fused_dh),
        (
            "unchunked",
            &read(&whole),
            &read(grads2.get(&hidden2).unwrap()),
        ),
    ] {
        assert_within(
            &format!("{what}: {path} loss"),
            loss,
            &[want.loss],
            &[want.loss_bound],
        );
        assert_within(
            &format!("{what}: {path} d hidden"),
            dh,
            &want.dh,
            &want.dh_bound,
        );
    }
    // The two paths agree with each other within both bounds.
    let both = |b: &[f64]| b.iter().map(|x| 2.0 * x).collect::<Vec<_>>();
    let unchunked_dh: Vec<f64> = read(grads2.get(&hidden2).unwrap())
        .iter()
        .map(|&x| x as f64)
        .collect();
    assert_within(
        &format!("{what}: fused vs unchunked d hidden"),
        &fused_dh,
        &unchunked_dh,
        &both(&want.dh_bound),
    );

    let mut row = 0;
    for (p, p2) in parts.iter().zip(&parts2) {
        let range = row * hd..(row + p.dim(0)) * hd;
        row += p.dim(0);
        if !trainable {
            assert!(
                grads.get(p).is_none(),
                "{what}: a frozen part has no gradient"
            );
            continue;
        }
        for (path, dw) in [("fused", grads.get(p)), ("unchunked", grads2.get(p2))] {
            let dw = read(dw.expect("a trainable part has a gradient"));
            assert_within(
                &format!("{what}: {path} dW rows {range:?}"),
                &dw,
                &want.dw[range.clone()],
                &want.dw_bound[range.clone()],
            );
        }
    }
}

#[test]
fn chunked_loss_and_gradients_match_f64_and_the_unchunked_path() {
    // 11 rows: chunks of 1, 3 (3+3+3+2: an uneven last chunk), 4, 11 (one) and 64 (more
    // than all rows); W whole and in three uneven row parts; W trainable and frozen.
    for (chunk, seed) in [(1, 10), (3, 20), (4, 30), (11, 40), (64, 50)] {
        for parts in [&[29usize][..], &[13, 7, 9]] {
            for trainable in [true, false] {
                check(11, 8, parts, chunk, trainable, 1.0, seed);
            }
        }
    }
    // A scaled upstream gradient, and a wider model.
    check(11, 8, &[13, 7, 9], 3, true, -1.75, 60);
    check(37, 24, &[100, 28], 8, true, 0.5, 70);
}

#[test]
fn gradcheck_linear_cross_entropy() {
    // Smooth in every input; eps 1e-3 as for cross_entropy (ops_loss.rs).
    let dev = device();
    let opts = gc_opts(1e-3, 1e-2, 1e-2, 24);
    let labels = Tensor::from_i32(&dev, &[1, IGNORE_INDEX, 4, 0, 8], &[5]).unwrap();
    let inputs = [
        tensor(&values(5 * 3, -1.0, 1.0, 80), &[5, 3]),
        tensor(&values(6 * 3, -1.0, 1.0, 81), &[6, 3]),
        tensor(&values(4 * 3, -1.0, 1.0, 82), &[4, 3]),
    ];
    assert_gradcheck(
        "linear_cross_entropy, chunks of 2",
        |xs| linear_cross_entropy_chunked(&xs[0], &xs[1..], &labels, 2),
        &inputs,
        &opts,
    );
}

#[test]
fn an_f16_frozen_weight_is_read_as_the_matmul_reads_it() {
    // The f16 weight's values, widened, are the reference's weights.
    let (n, hd, v) = (9, 16, 40);
    let h = values(n * hd, -1.0, 1.0, 90);
    let w16 = tensor(&values(v * hd, -1.0, 1.0, 91), &[v, hd])
        .to_f16()
        .unwrap();
    assert_eq!(w16.dtype(), DType::F16);
    let w = read(&w16.to_f32().unwrap());
    let labels: Vec<i32> = (0..n as i32).map(|r| (r * 5) % v as i32).collect();
    let want = reference(&h, &w, &labels, (n, hd, v), 1.0);
    let hidden = param(&h, &[n, hd]);
    let labels_t = Tensor::from_i32(&device(), &labels, &[n]).unwrap();
    let loss = linear_cross_entropy_chunked(&hidden, &[w16], &labels_t, 4).unwrap();
    let grads = loss.backward().unwrap();
    assert_within("f16 W loss", &read(&loss), &[want.loss], &[want.loss_bound]);
    assert_within(
        "f16 W d hidden",
        &read(grads.get(&hidden).unwrap()),
        &want.dh,
        &want.dh_bound,
    );
}

#[test]
fn the_loss_is_the_same_with_and_without_recording() {
    let (n, hd, v) = (10, 8, 30);
    let h = values(n * hd, -1.0, 1.0, 100);
    let w = values(v * hd, -1.0, 1.0, 101);
    let labels: Vec<i32> = (0..n as i32).map(|r| (r * 3) % v as i32).collect();
    let labels_t = Tensor::from_i32(&device(), &labels, &[n]).unwrap();
    let hidden = param(&h, &[n, hd]);
    let w_t = param(&w, &[v, hd]);
    let recorded =
        linear_cross_entropy_chunked(&hidden, std::slice::from_ref(&w_t), &labels_t, 3).unwrap();
    let plain =
        no_grad(|| linear_cross_entropy_chunked(&hidden, std::slice::from_ref(&w_t), &labels_t, 3))
            .unwrap();
    assert!(recorded.tracks_grad() && !plain.tracks_grad());
    assert_bits_eq(
        "loss with and without recording",
        &read(&recorded),
        &read(&plain),
    );
}

#[test]
fn the_default_chunk_keeps_logits_to_the_target() {
    let dev = device();
    for vocab in [7usize, 32_000, 128_256, 40_000_000] {
        let rows = loss_chunk_rows(&dev, vocab);
        assert!(rows >= 1);
        let bytes = (rows * vocab * 4) as u64;
        let cap = LOSS_CHUNK_BYTES.min(dev.info().max_binding_bytes());
        assert!(
            rows == 1 || bytes <= cap,
            "vocab {vocab}: {rows} rows, {bytes} bytes"
        );
        // As many rows as fit, to a whole 64-row tile.
        assert!(
            bytes + 64 * vocab as u64 * 4 > cap || rows < 64,
            "vocab {vocab}: {rows} rows"
        );
    }
    assert_eq!(loss_chunk_rows(&dev, 32_000), 256);
    assert_eq!(loss_chunk_rows(&dev, 128_256), 64);
}

#[test]
fn bad_shapes_are_errors() {
    let dev = device();
    let hidden = tensor(&values(4 * 3, -1.0, 1.0, 110), &[4, 3]);
    let labels = Tensor::from_i32(&dev, &[0, 1, 2, 3], &[4]).unwrap();
    let w = tensor(&values(5 * 3, -1.0, 1.0, 111), &[5, 3]);
    let wrong_h = tensor(&values(5 * 2, -1.0, 1.0, 112), &[5, 2]);
    assert!(linear_cross_entropy(&hidden, &[], &labels).is_err());
    assert!(linear_cross_entropy(&hidden, &[w.clone(), wrong_h], &labels).is_err());
    let short = Tensor::from_i32(&dev, &[0, 1], &[2]).unwrap();
    assert!(linear_cross_entropy(&hidden, std::slice::from_ref(&w), &short).is_err());
    assert!(linear_cross_entropy(&hidden, &[w], &labels).is_ok());
}
