//! Causal attention with grouped-query heads (Hq a multiple of Hkv, and Hq = Hkv), with
//! S > T (keys already cached: query t sees keys 0..=t + S - T): forward and the gradients
//! of q, k and v against a float64 reference, and gradcheck, on every kernel (composed,
//! flash, subgroup flash; pinned) and on whichever `causal_attention` picks, in both layouts
//! (heads first, and tokens first as `causal_attention_tokens_first` takes them). The flash forward walks keys
//! in blocks of 16, so the shapes include lengths under, at, past and not a multiple of
//! one block (the subgroup flash kernels take blocks of 8 rows).
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
use hydralora_engine::{
    attention_kernel, causal_attention, causal_attention_tokens_first,
    causal_attention_tokens_first_with, causal_attention_with, AttentionKernel, AttnDims, Tensor,
};
use proptest::prelude::*;

/// The kernels that can run head dim `d` on the test device (the subgroup flash kernels
/// need subgroups of 8 and d % 4 == 0; lavapipe has those, see `the_cpu_device_runs_...`).
fn kernels(d: usize) -> Vec<AttentionKernel> {
    AttentionKernel::ALL
        .into_iter()
        .filter(|k| k.unsupported(&device(), d).is_none())
        .collect()
}

/// How the test lays out q, k, v: heads first ([B, H, T, D], `causal_attention`) or tokens
/// first ([B, T, H, D], `causal_attention_tokens_first`); the references are heads first.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    HeadsFirst,
    TokensFirst,
}

fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kernel: Option<AttentionKernel>,
    layout: Layout,
) -> Tensor {
    match (kernel, layout) {
        (Some(kernel), Layout::HeadsFirst) => causal_attention_with(q, k, v, kernel),
        (None, Layout::HeadsFirst) => causal_attention(q, k, v),
        (Some(kernel), Layout::TokensFirst) => causal_attention_tokens_first_with(q, k, v, kernel),
        (None, Layout::TokensFirst) => causal_attention_tokens_first(q, k, v),
    }
    .unwrap()
}

fn check(sh: AttnShape, seed: u64) {
    for layout in [Layout::HeadsFirst, Layout::TokensFirst] {
        check_on(sh, seed, None, layout);
        for kernel in kernels(sh.d) {
            check_on(sh, seed, Some(kernel), layout);
        }
    }
}

/// Host data of a heads-first [B, H, L, D] tensor in `layout` (and its shape).
fn laid_out(x: &[f32], shape: [usize; 4], layout: Layout) -> (Vec<f32>, Vec<usize>) {
    match layout {
        Layout::HeadsFirst => (x.to_vec(), shape.to_vec()),
        Layout::TokensFirst => reference::transpose(x, &shape, 1, 2),
    }
}

/// A tensor in `layout` read back heads first.
fn read_heads_first(t: &Tensor, layout: Layout) -> Vec<f32> {
    match layout {
        Layout::HeadsFirst => read(t),
        Layout::TokensFirst => reference::transpose(&read(t), t.shape(), 1, 2).0,
    }
}

fn check_on(sh: AttnShape, seed: u64, kernel: Option<AttentionKernel>, layout: Layout) {
    let q = values(sh.b * sh.hq * sh.t * sh.d, -1.0, 1.0, seed);
    let k = values(sh.b * sh.hkv * sh.s * sh.d, -1.0, 1.0, seed + 1);
    let v = values(sh.b * sh.hkv * sh.s * sh.d, -1.0, 1.0, seed + 2);
    let dout = values(q.len(), -1.0, 1.0, seed + 3);
    let what = format!("{sh:?} on {kernel:?}, {layout:?}");
    let q_shape = [sh.b, sh.hq, sh.t, sh.d];
    let kv_shape = [sh.b, sh.hkv, sh.s, sh.d];
    let upload = |x: &[f32], shape| {
        let (data, shape) = laid_out(x, shape, layout);
        param(&data, &shape)
    };
    let (pq, pk, pv) = (
        upload(&q, q_shape),
        upload(&k, kv_shape),
        upload(&v, kv_shape),
    );
    let out = attend(&pq, &pk, &pv, kernel, layout);
    assert_eq!(out.shape(), pq.shape());
    let atol = 8.0 * (sh.d * sh.d + sh.s + 20) as f64 * U;
    assert_close(
        &format!("{what} forward"),
        &read_heads_first(&out, layout),
        &reference::attention(&q, &k, &v, sh),
        atol,
        0.0,
    );

    let (dout_data, dout_shape) = laid_out(&dout, q_shape, layout);
    let grads = out.backward_with(tensor(&dout_data, &dout_shape)).unwrap();
    let (dq, dk, dv) = reference::attention_backward(&q, &k, &v, &reference::f64s(&dout), sh);
    let atol = 16.0 * (sh.d * sh.d + sh.s + sh.hq / sh.hkv * sh.t + 20) as f64 * U;
    for (name, x, want) in [("dq", &pq, &dq), ("dk", &pk, &dk), ("dv", &pv, &dv)] {
        assert_close(
            &format!("{what} {name}"),
            &read_heads_first(grads.get(x).unwrap(), layout),
            want,
            atol,
            0.0,
        );
    }
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
        AttnShape {
            b: 1,
            hq: 2,
            hkv: 2,
            t: 16,
            s: 16,
            d: 4,
        }, // exactly one flash key block
        AttnShape {
            b: 2,
            hq: 6,
            hkv: 2,
            t: 37,
            s: 53,
            d: 12,
        }, // GQA, 3+ key blocks, the last one partial
        AttnShape {
            b: 1,
            hq: 2,
            hkv: 1,
            t: 20,
            s: 20,
            d: 128,
        }, // the largest head dim the flash kernels take
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
    let shapes = [
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
        AttnShape {
            b: 1,
            hq: 4,
            hkv: 2,
            t: 21,
            s: 26,
            d: 4,
        }, // GQA, two flash key blocks, the second partial
    ];
    for sh in shapes {
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
        for kernel in kernels(sh.d) {
            assert_gradcheck(
                &format!("{sh:?} on {kernel:?}"),
                |xs| causal_attention_with(&xs[0], &xs[1], &xs[2], kernel),
                &[q.clone(), k.clone(), v.clone()],
                &opts,
            );
            // Tokens first: the same tensors' data read as [B, T, H, D] (any data will do).
            let tf = |x: &Tensor| {
                x.reshape(&[x.dim(0), x.dim(2), x.dim(1), x.dim(3)])
                    .unwrap()
            };
            assert_gradcheck(
                &format!("{sh:?} on {kernel:?}, tokens first"),
                |xs| causal_attention_tokens_first_with(&xs[0], &xs[1], &xs[2], kernel),
                &[tf(&q), tf(&k), tf(&v)],
                &opts,
            );
        }
    }
}

#[test]
fn the_cpu_device_runs_the_subgroup_flash_kernels() {
    // Otherwise the tests above would leave them out without a word.
    let dev = device();
    if dev.is_cpu() && dev.info().subgroup {
        assert_eq!(
            AttentionKernel::FlashSubgroup.unsupported(&dev, 32),
            None,
            "lavapipe has subgroups of 8"
        );
        assert!(AttentionKernel::FlashSubgroup
            .unsupported(&dev, 6)
            .is_some());
    }
}

#[test]
fn the_default_kernel_follows_the_device_and_the_size() {
    let dev = device();
    let dims = |t, d| AttnDims {
        b: 4,
        hq: 8,
        hkv: 4,
        t,
        s: t,
        d,
    };
    assert_eq!(
        attention_kernel(&dev, &dims(128, 129)),
        AttentionKernel::Composed
    );
    let sg = AttentionKernel::FlashSubgroup;
    if dev.is_cpu() && sg.unsupported(&dev, 32).is_none() {
        assert_eq!(attention_kernel(&dev, &dims(128, 32)), sg);
        assert_eq!(attention_kernel(&dev, &dims(4096, 32)), sg);
    } else {
        // 2 MiB of scores: composed; 2 GiB: the flash kernels, linear in memory.
        assert_eq!(
            attention_kernel(&dev, &dims(128, 32)),
            AttentionKernel::Composed
        );
        assert_eq!(
            attention_kernel(&dev, &dims(4096, 32)),
            AttentionKernel::Flash
        );
    }
}

#[test]
fn flash_refuses_head_dims_past_its_registers() {
    let x = values(129, -1.0, 1.0, 1);
    let q = tensor(&x, &[1, 1, 1, 129]);
    let err = causal_attention_with(&q, &q, &q, AttentionKernel::Flash).unwrap_err();
    assert!(err.to_string().contains("head dims up to 128"), "{err}");
    // The default takes the composed path there: one key, so the output is v itself.
    let out = causal_attention(&q, &q, &q).unwrap();
    let want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    assert_close("one key", &read(&out), &want, 4.0 * U, 0.0);
}
