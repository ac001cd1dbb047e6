//! Reverse-mode autodiff semantics: gradients accumulate over every use of a tensor;
//! frozen tensors get no gradient and build no graph; `no_grad` records nothing; `detach`
//! stops gradients; only parameters' gradients are returned; `backward` on a non-scalar
//! uses an implied gradient of ones. Values here are small integers and halves, so every
//! expected gradient is exact in f32 unless stated.

mod common;

use common::*;
use hydralora_engine::gradcheck::gradcheck;
use hydralora_engine::{
    add_matmul_scaled, checkpoint, is_recording, no_grad, pool_bytes, Error, NoGradGuard, Tensor,
};

#[test]
fn a_tensor_used_twice_accumulates_both_gradients() {
    let x = param(&[1.0, -2.0, 0.5, 3.0], &[4]);
    // d/dx sum(x * x) = 2x
    let g = x.mul(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(read(g.get(&x).unwrap()), [2.0, -4.0, 1.0, 6.0]);
    // d/dx sum(x + x) = 2
    let g = x.add(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(read(g.get(&x).unwrap()), [2.0; 4]);
    // Three uses along different paths: d/dx sum(x * y + x - x * 3) = y + 1 - 3
    let y = tensor(&[4.0, 5.0, 6.0, 7.0], &[4]);
    let l = x
        .mul(&y)
        .unwrap()
        .add(&x)
        .unwrap()
        .sub(&x.scale(3.0).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = l.backward().unwrap();
    assert_eq!(read(g.get(&x).unwrap()), [2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn a_shared_intermediate_accumulates_before_its_own_rule_runs() {
    // z = exp(x) feeds two branches: L = sum(z * z + z), dL/dx = (2 z + 1) z.
    let xs = [0.0f32, 0.5, -1.0];
    let x = param(&xs, &[3]);
    let z = x.exp().unwrap();
    let l = z.mul(&z).unwrap().add(&z).unwrap().sum_all().unwrap();
    let g = read(l.backward().unwrap().get(&x).unwrap());
    let expected: Vec<f64> = xs
        .iter()
        .map(|&v| (2.0 * (v as f64).exp() + 1.0) * (v as f64).exp())
        .collect();
    // exp is within 3 + 2|x| ulp (WGSL); the rest adds a few roundings: rtol 1e-6.
    assert_close("diamond", &g, &expected, 0.0, 1e-6);
}

#[test]
fn gradients_of_an_input_shared_by_several_products_add_up() {
    // x [5, 8] is the left operand of x W1^T and x W2, the right one of W3 x, and feeds an
    // elementwise term, so matmul parts arrive both first and after other parts (backward
    // sums matmul parts into the gradient so far, in place):
    // L = sum(c1 * (x W1^T)) + sum(c2 * (x W2)) + sum(c3 * x) + sum(c4 * (W3 x)),
    // dL/dx = c1 W1 + c2 W2^T + c3 + W3^T c4.
    let (t, d, n, m) = (5, 8, 6, 4);
    let xv = values(t * d, -1.0, 1.0, 1);
    let (w1, w2, w3) = (
        values(n * d, -1.0, 1.0, 2),
        values(d * n, -1.0, 1.0, 3),
        values(m * t, -1.0, 1.0, 4),
    );
    let (c1, c2, c3, c4) = (
        values(t * n, -1.0, 1.0, 5),
        values(t * n, -1.0, 1.0, 6),
        values(t * d, -1.0, 1.0, 7),
        values(m * d, -1.0, 1.0, 8),
    );
    let x = param(&xv, &[t, d]);
    let term = |y: Tensor, c: &[f32]| y.mul(&tensor(c, y.shape())).unwrap().sum_all().unwrap();
    let l = term(x.matmul_nt(&tensor(&w1, &[n, d])).unwrap(), &c1)
        .add(&term(x.clone(), &c3))
        .unwrap()
        .add(&term(x.matmul(&tensor(&w2, &[d, n])).unwrap(), &c2))
        .unwrap()
        .add(&term(tensor(&w3, &[m, t]).matmul(&x).unwrap(), &c4))
        .unwrap();
    let g = read(l.backward().unwrap().get(&x).unwrap());
    let mut want = vec![0.0f64; t * d];
    for i in 0..t {
        for j in 0..d {
            let mut s = c3[i * d + j] as f64;
            for k in 0..n {
                s += c1[i * n + k] as f64 * w1[k * d + j] as f64;
                s += c2[i * n + k] as f64 * w2[j * n + k] as f64;
            }
            for k in 0..m {
                s += w3[k * t + i] as f64 * c4[k * d + j] as f64;
            }
            want[i * d + j] = s;
        }
    }
    // About 20 f32 roundings of terms below 1 each.
    assert_close("shared input", &g, &want, 1e-5, 1e-5);
}

#[test]
fn add_matmul_scaled_sums_into_a_fresh_product_and_differentiates_like_its_parts() {
    // y = x W^T + 0.5 z B^T, as an adapted layer computes it: the base product's buffer
    // takes the sum. Values, then every input's gradient by gradcheck.
    let (t, d, o, r) = (4, 6, 5, 3);
    let (xv, wv, zv, bv) = (
        values(t * d, -1.0, 1.0, 31),
        values(o * d, -1.0, 1.0, 32),
        values(t * r, -1.0, 1.0, 33),
        values(o * r, -1.0, 1.0, 34),
    );
    let layer = |xs: &[Tensor]| {
        let y = xs[0].matmul_nt(&xs[1])?; // [t, o], fresh: summed into in place
        add_matmul_scaled(y, &xs[2], &xs[3], (false, true, 0.5))
    };
    let inputs = [
        param(&xv, &[t, d]),
        param(&wv, &[o, d]),
        param(&zv, &[t, r]),
        param(&bv, &[o, r]),
    ];
    let out = read(&layer(&inputs).unwrap());
    let mut want = vec![0.0f64; t * o];
    for i in 0..t {
        for j in 0..o {
            let base: f64 = (0..d)
                .map(|k| xv[i * d + k] as f64 * wv[j * d + k] as f64)
                .sum();
            let lora: f64 = (0..r)
                .map(|k| zv[i * r + k] as f64 * bv[j * r + k] as f64)
                .sum();
            want[i * o + j] = base + 0.5 * lora;
        }
    }
    assert_close("x W^T + 0.5 z B^T", &out, &want, 1e-5, 1e-5);
    let report = gradcheck(layer, &inputs, &gc_opts(1e-2, 1e-2, 1e-2, 12)).unwrap();
    assert!(report.passed(), "{report}");

    // A sum someone else still holds is never written: a product and an add instead.
    let y = tensor(&values(t * o, -1.0, 1.0, 35), &[t, o]);
    let kept = y.clone();
    let before = read(&kept);
    let z = tensor(&zv, &[t, r]);
    let b = tensor(&bv, &[o, r]);
    let sum = add_matmul_scaled(y, &z, &b, (false, true, 0.5)).unwrap();
    assert_eq!(read(&kept), before);
    assert_ne!(sum.id(), kept.id());
}

#[test]
fn frozen_tensors_get_no_gradient_and_build_no_graph() {
    let w = tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2]); // not into_param: frozen
    assert!(!w.requires_grad() && !w.tracks_grad());
    let y = w.matmul(&w).unwrap().exp().unwrap().sum_all().unwrap();
    assert!(
        !y.tracks_grad(),
        "ops on frozen tensors only must not record a graph"
    );
    assert!(y.backward().unwrap().is_empty());

    // Mixed: only the parameter gets a gradient; the frozen operand none.
    let p = param(&[0.5, -1.0], &[1, 2]);
    let out = p.matmul(&w).unwrap();
    assert!(out.tracks_grad());
    let g = out.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.len(), 1);
    assert!(g.get(&w).is_none());
    // d/dp sum(p W) = rows sums of W: [1 + 2, 3 + 4]
    assert_eq!(read(g.get(&p).unwrap()), [3.0, 7.0]);

    // into_param makes a new leaf; the tensor it came from stays frozen.
    let base = tensor(&[2.0], &[1]);
    let q = base.clone().into_param();
    assert!(q.requires_grad() && !base.requires_grad());
    assert_ne!(q.id(), base.id());
    let g = q.mul(&base).unwrap().backward().unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(read(g.get(&q).unwrap()), [2.0]);
    assert!(g.get(&base).is_none());
}

#[test]
fn no_grad_records_nothing() {
    let p = param(&[1.0, 2.0], &[2]);
    assert!(is_recording());
    let y = no_grad(|| {
        assert!(!is_recording());
        p.mul(&p).unwrap().exp().unwrap().sum_all().unwrap()
    });
    assert!(is_recording());
    assert!(
        !y.tracks_grad(),
        "a result computed under no_grad is not in the graph"
    );
    assert!(y.backward().unwrap().is_empty());

    // The guard form, nested: recording resumes only when the outermost guard drops.
    {
        let _outer = NoGradGuard::new();
        {
            let _inner = NoGradGuard::new();
            assert!(!is_recording());
        }
        assert!(!is_recording());
        assert!(!p.add(&p).unwrap().tracks_grad());
    }
    assert!(is_recording());
    assert!(p.add(&p).unwrap().tracks_grad());

    // A no_grad value mixed into a recorded graph is a constant there.
    let c = no_grad(|| p.scale(3.0).unwrap());
    let g = p.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(read(g.get(&p).unwrap()), [3.0, 6.0]); // not 2 * 3p
}

#[test]
fn detach_stops_gradients() {
    let p = param(&[1.0, 2.0, -1.0], &[3]);
    let d = p.scale(2.0).unwrap().detach();
    assert!(!d.tracks_grad() && !d.requires_grad());
    assert_eq!(read(&d), [2.0, 4.0, -2.0]);
    // L = sum(d * p): with d constant, dL/dp = d (not d + 2p).
    let g = d.mul(&p).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(read(g.get(&p).unwrap()), [2.0, 4.0, -2.0]);
    // Detaching a parameter gives a constant copy of it.
    let g = p
        .detach()
        .mul(&p)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(read(g.get(&p).unwrap()), [1.0, 2.0, -1.0]);
}

#[test]
fn only_parameter_gradients_are_returned() {
    let a = param(&values(6, -1.0, 1.0, 1), &[2, 3]);
    let b = param(&values(12, -1.0, 1.0, 2), &[3, 4]);
    let frozen = tensor(&values(4, -1.0, 1.0, 3), &[4]);
    let h = a.matmul(&b).unwrap();
    let s = h.silu().unwrap();
    let l = s.mul(&frozen).unwrap().sum_all().unwrap();
    let g = l.backward().unwrap();
    assert_eq!(g.len(), 2, "only a and b");
    assert!(
        g.get(&h).is_none()
            && g.get(&s).is_none()
            && g.get(&l).is_none()
            && g.get(&frozen).is_none()
    );
    assert_eq!(g.get(&a).unwrap().shape(), &[2, 3]);
    assert_eq!(g.get(&b).unwrap().shape(), &[3, 4]);
    let ids: Vec<_> = g.iter().map(|(id, _)| *id).collect();
    assert!(ids.contains(&a.id()) && ids.contains(&b.id()));
    // The graph can be differentiated again, with the same result.
    let again = l.backward().unwrap();
    assert_bits_eq(
        "second backward",
        &read(again.get(&a).unwrap()),
        &read(g.get(&a).unwrap()),
    );
}

#[test]
fn backward_of_a_non_scalar_uses_implied_ones() {
    let p = param(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let y = p.mul(&p).unwrap(); // [2, 3], not a scalar
    let implied = y.backward().unwrap();
    let explicit = y
        .backward_with(Tensor::full(&device(), &[2, 3], 1.0).unwrap())
        .unwrap();
    let summed = y.sum_all().unwrap().backward().unwrap();
    let expected = [2.0, 4.0, 6.0, 8.0, 10.0, 12.0];
    assert_eq!(read(implied.get(&p).unwrap()), expected);
    assert_eq!(read(explicit.get(&p).unwrap()), expected);
    assert_eq!(read(summed.get(&p).unwrap()), expected);
    // A parameter's own backward: the implied ones.
    assert_eq!(read(p.backward().unwrap().get(&p).unwrap()), [1.0; 6]);
}

#[test]
fn backward_with_a_gradient_of_the_wrong_shape_is_an_error() {
    let p = param(&[1.0, 2.0], &[2]);
    let y = p.scale(2.0).unwrap();
    let Err(e) = y.backward_with(tensor(&[1.0, 1.0, 1.0], &[3])) else {
        panic!("a [3] gradient for a [2] tensor was accepted")
    };
    assert!(matches!(e, Error::Backward(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("[3]") && msg.contains("[2]"), "{msg}");
}

#[test]
fn gradients_flow_through_every_layout_and_reduction_op_together() {
    // A chain of reshape, transpose, narrow, concat, sum and mean: every gradient element
    // is a multiple of 1/4 (exact in f32).
    let xs: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let x = param(&xs, &[3, 4]);
    let t = x.transpose(0, 1).unwrap(); // [4, 3]
    let n = t.narrow(1, 1, 2).unwrap(); // [4, 2]: columns 1, 2 of t = rows 1, 2 of x
    let c = Tensor::concat(&[n.clone(), n], 1).unwrap(); // [4, 4]
    let l = c
        .reshape(&[16])
        .unwrap()
        .mean(0)
        .unwrap()
        .add(&x.sum(0).unwrap().sum_all().unwrap())
        .unwrap();
    let g = read(l.backward().unwrap().get(&x).unwrap());
    // mean over 16 of two copies of rows 1, 2: 2/16 each; plus 1 from the plain sum.
    let expected: Vec<f32> = (0..12)
        .map(|i| if (4..12).contains(&i) { 1.125 } else { 1.0 })
        .collect();
    assert_eq!(g, expected);
}

/// The parameters' and the input's gradients of `sum(f(x) * weights)`, each as bits.
fn grads_bits(y: &Tensor, wanted: &[&Tensor]) -> Vec<Vec<u32>> {
    let w = tensor(&values(y.numel(), 0.5, 1.5, 9), y.shape()); // weights, y's shape
    let grads = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    wanted
        .iter()
        .map(|t| {
            let g = grads.get(t).expect("a gradient for every parameter");
            read(g).iter().map(|v| v.to_bits()).collect()
        })
        .collect()
}

#[test]
fn a_checkpoint_gives_bitwise_the_gradients_of_the_recorded_function_and_keeps_only_its_inputs() {
    // x [6, 8] -> silu(x W1^T + x) W2^T, W1 [8, 8], W2 [5, 8]: x is read twice (a sum of two
    // gradient parts inside the checkpoint), W1 and W2 are read inside only.
    let x = param(&values(48, -1.0, 1.0, 1), &[6, 8]);
    let w1 = param(&values(64, -0.5, 0.5, 2), &[8, 8]);
    let w2 = param(&values(40, -0.5, 0.5, 3), &[5, 8]);
    let (a, b) = (w1.clone(), w2.clone());
    let f = move |xs: &[Tensor]| -> hydralora_engine::Result<Tensor> {
        xs[0].matmul_nt(&a)?.add(&xs[0])?.silu()?.matmul_nt(&b)
    };
    let recorded = f(std::slice::from_ref(&x)).unwrap(); // [6, 5]
    let checkpointed = checkpoint(&[&x], f.clone()).unwrap(); // [6, 5]
    assert_eq!(
        read(&recorded)
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>(),
        read(&checkpointed)
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    );
    let want = [&x, &w1, &w2];
    let expected = grads_bits(&recorded, &want);
    assert!(expected.iter().all(|g| g.iter().any(|&v| v != 0)));
    assert_eq!(grads_bits(&checkpointed, &want), expected);

    // Only the input is kept: the checkpoint's graph holds no intermediate buffer. (A device
    // of its own: the tests of this binary run at once on the shared one.)
    let dev = hydralora_engine::Device::new().unwrap();
    let on_dev = |t: &Tensor| {
        Tensor::from_slice(&dev, &read(t), t.shape())
            .unwrap()
            .into_param()
    };
    let (x, a, b) = (on_dev(&x), on_dev(&w1), on_dev(&w2));
    let f = move |xs: &[Tensor]| -> hydralora_engine::Result<Tensor> {
        xs[0].matmul_nt(&a)?.add(&xs[0])?.silu()?.matmul_nt(&b)
    };
    dev.synchronize().unwrap();
    let before = dev.pool_stats().in_use;
    let y = checkpoint(&[&x], f.clone()).unwrap(); // [6, 5]
    assert_eq!(dev.pool_stats().in_use - before, pool_bytes(6 * 5 * 4));
    drop(y);
    let y = f(std::slice::from_ref(&x)).unwrap(); // and x W1^T, + x, silu: [6, 8] each
    assert_eq!(
        dev.pool_stats().in_use - before,
        pool_bytes(6 * 5 * 4) + 3 * pool_bytes(6 * 8 * 4)
    );
    drop(y);
}

#[test]
fn a_checkpoint_on_a_frozen_input_nested_or_unrecorded_still_gives_the_parameters_gradients() {
    let x = tensor(&values(12, -1.0, 1.0, 4), &[3, 4]); // frozen input [3, 4]
    let w = param(&values(16, -0.5, 0.5, 5), &[4, 4]);
    let v = w.clone();
    let inner = move |xs: &[Tensor]| xs[0].matmul_nt(&v)?.silu();
    let plain = inner(&[inner(std::slice::from_ref(&x)).unwrap()]).unwrap(); // [3, 4]
    let expected = grads_bits(&plain, &[&w]);
    // Nothing that tracks gradients goes in, yet w's gradient comes out; and a checkpoint
    // inside a checkpoint (re-run when the outer one re-runs).
    let i2 = inner.clone();
    let nested = checkpoint(&[&x], move |xs| {
        let h = checkpoint(&[&xs[0]], i2.clone())?;
        i2(&[h])
    })
    .unwrap();
    assert!(nested.tracks_grad());
    assert_eq!(grads_bits(&nested, &[&w]), expected);
    // Unrecorded, a checkpoint is just the function.
    let y = no_grad(|| checkpoint(&[&x], inner.clone())).unwrap();
    assert!(!y.tracks_grad());
    // A parameter read inside and outside collects both parts.
    let both = checkpoint(&[&x], inner.clone())
        .unwrap()
        .matmul_nt(&w)
        .unwrap();
    let direct = inner(std::slice::from_ref(&x))
        .unwrap()
        .matmul_nt(&w)
        .unwrap();
    assert_eq!(grads_bits(&both, &[&w]), grads_bits(&direct, &[&w]));
}

#[test]
fn training_mode_holds_in_a_checkpoint_forward_and_its_re_run_is_marked() {
    let x = param(&[1.0, 2.0], &[2]);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let y = checkpoint(&[&x], move |xs| {
        log.lock().unwrap().push((
            is_recording(),
            hydralora_engine::is_training(),
            hydralora_engine::is_recomputing(),
        ));
        xs[0].mul(&xs[0])
    })
    .unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(read(g.get(&x).unwrap()), [2.0, 4.0]);
    // The forward: unrecorded, training; the re-run: recorded, training, recomputing.
    assert_eq!(
        *seen.lock().unwrap(),
        [(false, true, false), (true, true, true)]
    );
    assert!(is_recording() && hydralora_engine::is_training());
    assert!(!hydralora_engine::is_recomputing());
}
