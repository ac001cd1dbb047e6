//! Determinism: the same training computation (an embedding, a small MLP with RMS norm,
//! cross-entropy, backward and AdamW steps) run twice gives bit-identical losses, gradients
//! and parameters, on the same device and on a second one. Every kernel reduces in a fixed
//! order (no atomics), so nothing may differ.

mod common;

use common::*;
use hydralora_engine::{
    cross_entropy, embedding, rms_norm, AdamW, AdamWConfig, Device, Tensor, IGNORE_INDEX,
};

struct Run {
    losses: Vec<f32>,
    grads: Vec<Vec<f32>>,
    params: Vec<Vec<f32>>,
}

fn train(dev: &Device) -> Run {
    let (vocab, dim, hidden, classes, tokens) = (23, 13, 37, 7, 33);
    let mk = |shape: &[usize], seed: u64| {
        Tensor::rand_uniform(dev, shape, -0.5, 0.5, seed)
            .unwrap()
            .into_param()
    };
    let params = vec![
        mk(&[vocab, dim], 1),                                    // embedding table
        mk(&[hidden, dim], 2),                                   // w1 (a linear layer's [out, in])
        mk(&[hidden], 3),                                        // b1
        Tensor::full(dev, &[hidden], 1.0).unwrap().into_param(), // norm weight
        mk(&[classes, hidden], 4),                               // w2
    ];
    let ids: Vec<u32> = (0..tokens).map(|i| (i * 7 % 5 + i % 3) as u32).collect(); // repeats
    let ids = Tensor::from_u32(dev, &ids, &[tokens]).unwrap();
    let labels: Vec<i32> = (0..tokens as i32)
        .map(|i| {
            if i % 6 == 5 {
                IGNORE_INDEX
            } else {
                i % classes as i32
            }
        })
        .collect();
    let labels = Tensor::from_i32(dev, &labels, &[tokens]).unwrap();
    let mut opt = AdamW::new(AdamWConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamWConfig::default()
    });
    let mut run = Run {
        losses: vec![],
        grads: vec![],
        params: vec![],
    };
    for _ in 0..3 {
        let x = embedding(&params[0], &ids).unwrap();
        let h = x
            .matmul_nt(&params[1])
            .unwrap()
            .add(&params[2])
            .unwrap()
            .silu()
            .unwrap();
        let h = rms_norm(&h, &params[3], 1e-5).unwrap();
        let logits = h.matmul_nt(&params[4]).unwrap();
        let loss = cross_entropy(&logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        run.losses.push(loss.to_scalar().unwrap());
        for p in &params {
            run.grads.push(read(grads.get(p).unwrap()));
        }
        opt.step(&params, &grads).unwrap();
    }
    run.params = params.iter().map(read).collect();
    run
}

fn assert_same(a: &Run, b: &Run, what: &str) {
    assert_bits_eq(&format!("{what}: losses"), &a.losses, &b.losses);
    for (i, (x, y)) in a.grads.iter().zip(&b.grads).enumerate() {
        assert_bits_eq(&format!("{what}: gradient {i}"), x, y);
    }
    for (i, (x, y)) in a.params.iter().zip(&b.params).enumerate() {
        assert_bits_eq(&format!("{what}: parameter {i}"), x, y);
    }
}

#[test]
fn training_steps_are_bit_identical_when_repeated() {
    let dev = device();
    let first = train(&dev);
    assert!(first.losses.iter().all(|l| l.is_finite()));
    assert!(
        first.losses[2] < first.losses[0],
        "the loss should fall: {:?}",
        first.losses
    );
    let second = train(&dev);
    assert_same(&first, &second, "same device");
    let other = Device::new().unwrap();
    let third = train(&other);
    assert_same(&first, &third, "a second device");
}
