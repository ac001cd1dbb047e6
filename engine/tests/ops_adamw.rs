//! AdamW against a float64 reference with PyTorch's semantics, over several steps:
//!   p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//!   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
//!
//! Tolerance: per step the kernel rounds a handful of f32 operations. The decay costs u |p|
//! (u = 2^-24); m and v carry a few u relative each, which moves the update
//! lr / bc1 * m / denom by ~10 u of its size (<= lr / (1 - b1) in the worst case). Over
//! `steps` steps with |p| <= 2 and lr = 1e-2 that stays below steps * (2 u * 2 + 10 u * 0.1)
//! ~ 1.5e-6 for 5 steps; we check |p - p_ref| <= 2e-6. The moments: m can cancel (gradients
//! of alternating sign), so it is checked against an absolute bound tracked step by step
//! (`reference::AdamW::m_bound`, doubled); v sums positive terms, so its relative error
//! grows by at most ~4u a step: rtol (4 t + 4) u after t steps.

mod common;

use common::reference;
use common::*;
use hydralora_engine::{AdamW, AdamWConfig, Gradients, Tensor};

const ATOL: f64 = 2e-6;

fn run(config: AdamWConfig, shapes: &[Vec<usize>], lrs: &[f32], seed: u64) {
    let mut opt = AdamW::new(config);
    let params: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| param(&values(s.iter().product(), -2.0, 2.0, seed + i as u64), s))
        .collect();
    let mut host: Vec<Vec<f64>> = params.iter().map(|p| reference::f64s(&read(p))).collect();
    let mut refs: Vec<reference::AdamW> = host
        .iter()
        .map(|h| {
            reference::AdamW::new(
                config.lr,
                config.beta1,
                config.beta2,
                config.eps,
                config.weight_decay,
                h.len(),
            )
        })
        .collect();
    for (step, &lr) in lrs.iter().enumerate() {
        let mut grads = Gradients::default();
        for (i, p) in params.iter().enumerate() {
            // Gradients of mixed sizes and signs, some tiny (where eps matters).
            let scale = if step % 2 == 0 { 1.0 } else { 1e-3 };
            let g = values(
                p.numel(),
                -scale,
                scale,
                1000 * seed + 10 * step as u64 + i as u64,
            );
            grads.insert(p, tensor(&g, p.shape()));
            refs[i].step(&mut host[i], &g, lr as f64);
        }
        opt.step_with_lr(&params, &grads, lr).unwrap();
        assert_eq!(opt.steps(), step as u64 + 1);
        for (i, p) in params.iter().enumerate() {
            let what = format!("{config:?} param {i} after step {}", step + 1);
            assert_close(&what, &read(p), &host[i], ATOL, 0.0);
            let (m, v) = opt.moments(p).unwrap();
            let m_bound: Vec<f64> = refs[i].m_bound.iter().map(|b| 2.0 * b + 1e-30).collect();
            assert_within(&format!("{what}: m"), &read(m), &refs[i].m, &m_bound);
            assert_close(
                &format!("{what}: v"),
                &read(v),
                &refs[i].v,
                1e-30,
                (4 * step + 8) as f64 * U,
            );
        }
    }
}

#[test]
fn adamw_matches_pytorch_semantics_over_several_steps() {
    let config = AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    // 257 elements (one past a workgroup), a matrix, and a single element.
    run(config, &[vec![257], vec![3, 5], vec![1]], &[1e-2; 5], 1);
}

#[test]
fn adamw_without_weight_decay_and_with_a_schedule() {
    let config = AdamWConfig {
        lr: 1e-2,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.0,
    };
    run(
        config,
        &[vec![33, 9]],
        &[1e-2, 5e-3, 2.5e-3, 1e-3, 1e-2, 0.0],
        2,
    );
}

#[test]
fn adamw_step_uses_the_configured_learning_rate() {
    let config = AdamWConfig {
        lr: 3e-3,
        ..AdamWConfig::default()
    };
    let x = values(40, -1.0, 1.0, 3);
    let g = values(40, -1.0, 1.0, 4);
    let (a, b) = (param(&x, &[40]), param(&x, &[40]));
    let (mut oa, mut ob) = (AdamW::new(config), AdamW::new(config));
    let mut ga = Gradients::default();
    ga.insert(&a, tensor(&g, &[40]));
    let mut gb = Gradients::default();
    gb.insert(&b, tensor(&g, &[40]));
    oa.step(std::slice::from_ref(&a), &ga).unwrap();
    ob.step_with_lr(std::slice::from_ref(&b), &gb, 3e-3)
        .unwrap();
    assert_bits_eq("step == step_with_lr(config.lr)", &read(&a), &read(&b));
}

#[test]
fn parameters_without_a_gradient_are_left_alone() {
    let x = values(10, -1.0, 1.0, 5);
    let (a, b) = (param(&x, &[10]), param(&x, &[10]));
    let mut grads = Gradients::default();
    grads.insert(&a, tensor(&values(10, -1.0, 1.0, 6), &[10]));
    let mut opt = AdamW::new(AdamWConfig {
        lr: 0.1,
        weight_decay: 0.5,
        ..AdamWConfig::default()
    });
    opt.step(&[a.clone(), b.clone()], &grads).unwrap();
    assert_bits_eq("no gradient: unchanged (no decay either)", &read(&b), &x);
    assert!(opt.moments(&b).is_none());
    assert!(read(&a).iter().zip(&x).all(|(p, q)| p != q));
}

#[test]
fn adamw_descends_a_quadratic_with_backward_gradients() {
    // L = sum((p - target)^2): gradients from backward, several steps, against f64 (whose
    // gradient 2 (p - target) is computed from the engine's own p each step).
    let config = AdamWConfig {
        lr: 5e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let target = values(7, -1.0, 1.0, 7);
    let t = tensor(&target, &[7]);
    let p = param(&values(7, -1.0, 1.0, 8), &[7]);
    let mut host = reference::f64s(&read(&p));
    let mut r = reference::AdamW::new(
        config.lr,
        config.beta1,
        config.beta2,
        config.eps,
        config.weight_decay,
        7,
    );
    let mut opt = AdamW::new(config);
    let first = read(&p)
        .iter()
        .zip(&target)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>();
    for _ in 0..8 {
        let d = p.sub(&t).unwrap();
        let grads = d.mul(&d).unwrap().sum_all().unwrap().backward().unwrap();
        let g = read(grads.get(&p).unwrap());
        r.step(&mut host, &g, config.lr as f64);
        opt.step(std::slice::from_ref(&p), &grads).unwrap();
        assert_close("quadratic", &read(&p), &host, ATOL, 0.0);
    }
    let last = read(&p)
        .iter()
        .zip(&target)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>();
    assert!(last < first, "AdamW did not descend: {first} -> {last}");
}
