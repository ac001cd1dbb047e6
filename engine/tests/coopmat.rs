//! The cooperative-matrix matmul kernels (`MatmulKernel::CoopF16x16`, `CoopF32x8`).
//!
//! On a device that has them: each, pinned, against a float64 reference, writing C and
//! summing into it, with B stored as f32, f16 and bf16, every transpose layout, edges that
//! cut the 2x2-fragment tiles, a shared B under a batched A, and split-K; and the automatic
//! choice takes one for a large product and leaves the skinny LoRA products to the tiled
//! kernel. Where the device lacks them (lavapipe, every CI run): the fallback is taken, said
//! in the summary `hydralora info` prints, and a pinned cooperative kernel is refused before
//! any pipeline is built. With `HYDRALORA_REQUIRE_COOPMAT=1` (the GPU measurement script
//! sets it) a device without them fails instead.
//!
//! Tolerance. The f16 kernel rounds each A and B value to f16 (relative error at most
//! u16 = 2^-11 for values in f16's normal range, absolute at most 2^-25 below it), the
//! matrix units form the products exactly in f32 (an 11-bit by 11-bit product fits f32's
//! 24 bits) and sum them in f32 in an order of their own. So each element is within
//! `((1 + u16)^2 - 1 + gamma_{K+1}) sum_k |a_k b_k| + K 2^-24` of the exact product of the
//! f32 inputs (the last term covers the subnormal roundings of values in [-1, 1)), plus one
//! f32 rounding of the sum when accumulating. For values in [-1, 1) and K = 200 that is
//! about 1e-3 sum |a b|. The f32 kernel is f32 all through: the f32 bound
//! `gamma_{K+1} sum_k |a_k b_k|` of `tests/matmul_variants.rs`, so a device that quietly ran
//! f32 fragments at reduced precision (TF32) would fail here.

mod common;

use common::*;
use half::{bf16, f16};
use hydralora_engine::ops::matmul::{
    cooperative_kernel, cooperative_kernels, cooperative_matrix_summary, fallback_kernel,
    matmul_accumulate_with, matmul_variant, matmul_with, subgroups_of_8, MatmulKernel,
    MatmulVariant,
};
use hydralora_engine::{no_grad, CoopUse, DType, Error, Tensor};

/// Whether this run must have cooperative matrices (`HYDRALORA_REQUIRE_COOPMAT=1`).
fn required() -> bool {
    std::env::var("HYDRALORA_REQUIRE_COOPMAT").as_deref() == Ok("1")
}

/// Unit roundoff of f16.
const U16: f64 = 1.0 / 2048.0;

fn gamma(k: usize) -> f64 {
    let nu = (k + 1) as f64 * U;
    nu / (1.0 - nu) * 1.01
}

/// One product: `op(A) op(B)`, A [batch, m, k] (or [batch, k, m] with ta, batch 0: rank 2),
/// B rank 2 [k, n] (or [n, k] with tb).
#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
}

const CASES: [Case; 5] = [
    // A layer's forward x W^T, whole tiles.
    Case {
        batch: 0,
        m: 64,
        k: 64,
        n: 64,
        ta: false,
        tb: true,
    },
    // An input gradient dY W, edges in every dim.
    Case {
        batch: 0,
        m: 130,
        k: 96,
        n: 72,
        ta: false,
        tb: false,
    },
    // A weight-gradient layout (A^T B), odd sizes.
    Case {
        batch: 0,
        m: 33,
        k: 65,
        n: 47,
        ta: true,
        tb: false,
    },
    // Both transposed.
    Case {
        batch: 0,
        m: 40,
        k: 50,
        n: 36,
        ta: true,
        tb: true,
    },
    // Tokens [2, 37, 80] times a shared W^T [70, 80].
    Case {
        batch: 2,
        m: 37,
        k: 80,
        n: 70,
        ta: false,
        tb: true,
    },
];

/// The case's operands on the device (B stored as `weights`) and, from the values the
/// kernel reads, the f64 product and each element's error bound for `kernel`.
fn operands(
    case: Case,
    weights: DType,
    kernel: MatmulKernel,
    seed: u64,
) -> (Tensor, Tensor, Vec<f64>, Vec<f64>) {
    let rows = case.batch.max(1) * case.m;
    let a_shape = match (case.batch, case.ta) {
        (0, false) => vec![case.m, case.k],
        (0, true) => vec![case.k, case.m],
        (b, _) => vec![b, case.m, case.k],
    };
    let b_shape = if case.tb {
        vec![case.n, case.k]
    } else {
        vec![case.k, case.n]
    };
    let av = values(rows * case.k, -1.0, 1.0, seed);
    let mut bv = values(case.k * case.n, -1.0, 1.0, seed + 1);
    // The reference's B is what the weight slot widens: B rounded to its storage format.
    let a = tensor(&av, &a_shape);
    let b = match weights {
        DType::F16 => {
            let halves: Vec<f16> = bv.iter().map(|&x| f16::from_f32(x)).collect();
            bv = halves.iter().map(|h| h.to_f32()).collect();
            Tensor::from_f16(&device(), &halves, &b_shape).unwrap()
        }
        DType::BF16 => {
            let halves: Vec<bf16> = bv.iter().map(|&x| bf16::from_f32(x)).collect();
            bv = halves.iter().map(|h| h.to_f32()).collect();
            let bytes: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
            Tensor::from_blocks(&device(), DType::BF16, &bytes, &b_shape).unwrap()
        }
        _ => tensor(&bv, &b_shape),
    };
    let m = if case.ta { case.m } else { rows };
    let want = matmul_ref(
        &av, &bv, 1, m, case.k, case.n, case.ta, case.tb, false, false,
    );
    let magnitude = {
        let abs_a: Vec<f32> = av.iter().map(|x| x.abs()).collect();
        let abs_b: Vec<f32> = bv.iter().map(|x| x.abs()).collect();
        matmul_ref(
            &abs_a, &abs_b, 1, m, case.k, case.n, case.ta, case.tb, false, false,
        )
    };
    let k = case.k;
    let bound = magnitude
        .iter()
        .map(|s| match kernel {
            MatmulKernel::CoopF16x16 => {
                ((1.0 + U16) * (1.0 + U16) - 1.0 + gamma(k)) * s + k as f64 / (1u64 << 24) as f64
            }
            _ => gamma(k) * s + 1e-30,
        })
        .collect();
    (a, b, want, bound)
}

#[test]
fn cooperative_kernels_match_the_f64_reference_where_the_device_has_them() {
    let dev = device();
    let kernels = cooperative_kernels(&dev);
    if kernels.is_empty() {
        assert!(
            !required(),
            "HYDRALORA_REQUIRE_COOPMAT=1, but {} runs no cooperative-matrix kernel: {}",
            dev.info().name,
            cooperative_matrix_summary(&dev)
        );
        return; // `fallback_is_taken_where_the_device_has_none` covers this device
    }
    let mut seed = 1;
    for kernel in kernels {
        for case in CASES {
            for weights in [DType::F32, DType::F16, DType::BF16] {
                for splits in [1, 3] {
                    seed += 2;
                    let what = format!("{kernel} split {splits} {weights:?} {case:?}");
                    let variant = MatmulVariant::new(kernel, splits);
                    let (a, b, want, bound) = operands(case, weights, kernel, seed);
                    let c = matmul_with(&a, &b, case.ta, case.tb, variant)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_within(&what, &read(&c), &want, &bound);

                    // C += the product, into a sum so far (how backward adds gradients).
                    let before = values(want.len(), -1.0, 1.0, seed + 7);
                    let acc = tensor(&before, c.shape());
                    let sum =
                        no_grad(|| matmul_accumulate_with(acc, &a, &b, case.ta, case.tb, variant))
                            .unwrap_or_else(|e| panic!("{what} accumulate: {e}"));
                    let want_sum: Vec<f64> = want
                        .iter()
                        .zip(&before)
                        .map(|(w, c0)| w + *c0 as f64)
                        .collect();
                    let bound_sum: Vec<f64> = bound
                        .iter()
                        .zip(&want_sum)
                        .map(|(b, s)| b * 1.01 + 2.0 * U * s.abs())
                        .collect();
                    assert_within(
                        &format!("{what} accumulate"),
                        &read(&sum),
                        &want_sum,
                        &bound_sum,
                    );
                }
            }
        }
    }
}

#[test]
fn the_automatic_choice_takes_cooperative_matrices_for_large_products_only() {
    let dev = device();
    if cooperative_kernel(&dev).is_none() || dev.info().coop_use != CoopUse::Auto {
        return; // the fallback test covers this device; a pinned HYDRALORA_COOPMAT overrides
    }
    let x = tensor(&values(256 * 512, -1.0, 1.0, 3), &[256, 512]);
    let w = tensor(&values(512 * 512, -1.0, 1.0, 4), &[512, 512]);
    let lora_a = tensor(&values(16 * 512, -1.0, 1.0, 5), &[16, 512]);
    for weights in [w.clone(), w.to_f16().unwrap()] {
        // The f16 kernel rounds A to f16: only where B is already 16-bit; f32 weights get
        // the f32 fragments where the device has them, today's kernels otherwise.
        let expected = cooperative_kernels(&dev)
            .into_iter()
            .find(|&k| k == MatmulKernel::CoopF32x8 || weights.dtype() != DType::F32)
            .unwrap_or(fallback_kernel(&dev));
        let chosen = matmul_variant(&x, &weights, false, true).unwrap().kernel;
        assert_eq!(chosen, expected, "{:?} weights", weights.dtype());
    }
    // z = x A^T: [256, 16], one side of rank 16.
    let chosen = matmul_variant(&x, &lora_a, false, true).unwrap().kernel;
    assert!(!MatmulKernel::COOPERATIVE.contains(&chosen), "{chosen}");
}

#[test]
fn fallback_is_taken_where_the_device_has_none() {
    let dev = device();
    if cooperative_kernel(&dev).is_some() {
        return; // the reference test covers this device
    }
    assert!(
        !required(),
        "HYDRALORA_REQUIRE_COOPMAT=1, but {} has no cooperative matrices",
        dev.info().name
    );
    let fallback = fallback_kernel(&dev);
    assert_eq!(
        cooperative_matrix_summary(&dev),
        format!("no (fallback: {fallback} kernel)")
    );
    if dev.is_cpu() && subgroups_of_8(&dev) {
        // lavapipe: what `hydralora info` prints there.
        assert_eq!(
            cooperative_matrix_summary(&dev),
            "no (fallback: subgroup kernel)"
        );
    }
    // A large product (where a device with them would take them) runs the fallback...
    let x = tensor(&values(128 * 256, -1.0, 1.0, 11), &[128, 256]);
    let w = tensor(&values(256 * 256, -1.0, 1.0, 12), &[256, 256]);
    let chosen = matmul_variant(&x, &w, false, true).unwrap().kernel;
    assert!(!MatmulKernel::COOPERATIVE.contains(&chosen), "{chosen}");
    assert!(MatmulKernel::ALL.contains(&chosen), "{chosen}");
    // ...and a pinned cooperative kernel is refused before its pipeline is built: a device
    // without the feature would reject the module.
    let built = dev.pipelines_created();
    for kernel in MatmulKernel::COOPERATIVE {
        match matmul_with(&x, &w, false, true, MatmulVariant::new(kernel, 1)) {
            Err(Error::Unsupported(why)) => assert!(why.contains(kernel.name()), "{why}"),
            Err(e) => panic!("{kernel}: expected Unsupported, got {e}"),
            Ok(_) => panic!("{kernel} ran on a device without cooperative matrices"),
        }
    }
    assert_eq!(
        dev.pipelines_created(),
        built,
        "a cooperative pipeline was built"
    );
}

#[test]
fn kernel_names_round_trip() {
    for kernel in MatmulKernel::ALL
        .into_iter()
        .chain(MatmulKernel::COOPERATIVE)
    {
        assert_eq!(MatmulKernel::from_name(kernel.name()), Some(kernel));
    }
    assert_eq!(MatmulKernel::from_name("coop"), None);
}

/// `matmul_half_inputs` (`--precision mixed`): where the device has the f16 cooperative
/// kernel, a large product runs on it and matches the float64 product of the f16-rounded
/// operands within f32 summation error; everywhere else it is `round_half(a)` then the
/// ordinary product, bit for bit.
#[test]
fn half_input_products_round_both_operands_to_f16() {
    let dev = device();
    let (m, k, n) = (128, 192, 96);
    let a_host = values(m * k, -1.0, 1.0, 11);
    let b_host = values(n * k, -1.0, 1.0, 12);
    let a = Tensor::from_slice(&dev, &a_host, &[m, k]).unwrap();
    let b = Tensor::from_slice(&dev, &b_host, &[n, k])
        .unwrap()
        .to_f16()
        .unwrap();
    let got = no_grad(|| hydralora_engine::matmul_half_inputs(&a, &b, false, true))
        .unwrap()
        .to_vec_f32()
        .unwrap();
    if cooperative_kernels(&dev).contains(&MatmulKernel::CoopF16x16) {
        let round =
            |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| f64::from(f16::from_f32(x))).collect() };
        let (ra, rb) = (round(&a_host), round(&b_host));
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut size) = (0.0, 0.0);
                for t in 0..k {
                    exact += ra[i * k + t] * rb[j * k + t];
                    size += (ra[i * k + t] * rb[j * k + t]).abs();
                }
                let err = (f64::from(got[i * n + j]) - exact).abs();
                // Either f16 neighbour may be taken on load (2u16 per term), sums in f32.
                let bound = (2.0 * U16 + gamma(k + 1)) * size + 1e-6;
                assert!(err <= bound, "({i}, {j}): {err:e} > {bound:e}");
            }
        }
    } else {
        assert!(
            !required(),
            "HYDRALORA_REQUIRE_COOPMAT=1 but no f16 cooperative kernel"
        );
        let reference = no_grad(|| a.round_half()?.matmul_nt(&b))
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert_eq!(got, reference);
    }
}
