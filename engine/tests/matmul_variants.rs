//! Every matmul kernel (`MatmulKernel::{General, Tiled, Subgroup}`), pinned with
//! `matmul_with`, with and without split-K, against a float64 CPU reference: all four
//! transpose combinations, batched operands, a rank-2 operand shared across the batch on
//! either side, odd sizes (1, 3, 5, 33, 65, 127), one product above 500 in every dim, and
//! the skinny LoRA shapes. Plus: the automatic choice (`matmul_t`) on the same cases, the
//! subgroup kernel's refusals, and split-K determinism. And summing a product into an
//! existing tensor (`matmul_accumulate`, how backward adds up input gradients) on every
//! kernel and split: in place when nothing else holds the sum, a copy otherwise.
//!
//! Every kernel reads B (the weights) through the same weight slot, so each of these runs
//! with B stored as f32, f16 and bf16. The 16-bit cases draw B, round it, and use the
//! rounded values as the reference's B: widening either to f32 is exact, so the f32 bound
//! below holds unchanged.
//!
//! Tolerance: a K-term f32 dot product, whatever the order of its additions (split-K
//! included) and with or without fused multiply-add, is within gamma_{K+1} sum_k |a_k b_k|
//! of the exact value, gamma_n = n u / (1 - n u), u = 2^-24 (Higham, "Accuracy and
//! Stability of Numerical Algorithms", 3.1). Each element is checked against that bound,
//! computed in f64 from the same inputs (for K = 600 and values in [-1, 1) it is at most
//! about 2e-5 * K: 1e-2, and typically 1e-3 or less).
//!
//! The subgroup kernel runs only where subgroups are exactly 8 wide (lavapipe); on other
//! devices its cases check that it refuses, and the other kernels still run.

mod common;

use common::*;
use half::{bf16, f16};
use hydralora_engine::gradcheck::gradcheck;
use hydralora_engine::ops::matmul::{
    matmul_accumulate, matmul_accumulate_with, matmul_scaled_with, matmul_variant, matmul_with,
    subgroups_of_8, MatmulKernel, MatmulVariant,
};
use hydralora_engine::{matmul_scaled, no_grad};
use hydralora_engine::{matmul_t, DType, Error, Tensor};

/// gamma_{k+1}, with a little slack for the f64 reference's own rounding.
fn gamma(k: usize) -> f64 {
    let nu = (k + 1) as f64 * U;
    nu / (1.0 - nu) * 1.01 + 1e-30
}

#[derive(Clone, Copy, Debug)]
enum Batching {
    /// Both operands rank 2.
    None,
    /// Both operands carry the same batch dim.
    Both(usize),
    /// A is rank 2, shared by every batch of B.
    AShared(usize),
    /// B is rank 2, shared by every batch of A.
    BShared(usize),
}

impl Batching {
    fn count(self) -> usize {
        match self {
            Batching::None => 1,
            Batching::Both(b) | Batching::AShared(b) | Batching::BShared(b) => b,
        }
    }
    fn a_batched(self) -> bool {
        matches!(self, Batching::Both(_) | Batching::BShared(_))
    }
    fn b_batched(self) -> bool {
        matches!(self, Batching::Both(_) | Batching::AShared(_))
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    batching: Batching,
    /// How B is stored: f32, or f16 (the weight slot widens it).
    weights: DType,
}

/// The element storage formats of B every kernel takes (the GGUF block formats, which need
/// whole blocks along a row, are in `tests/quant.rs`).
const WEIGHTS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

impl Case {
    fn new(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Case {
        Case {
            m,
            k,
            n,
            ta,
            tb,
            batching: Batching::None,
            weights: DType::F32,
        }
    }

    fn batched(self, batching: Batching) -> Case {
        Case { batching, ..self }
    }

    fn weights(self, weights: DType) -> Case {
        Case { weights, ..self }
    }

    /// Stored shapes of A and B.
    fn shapes(&self) -> (Vec<usize>, Vec<usize>) {
        let a2 = if self.ta {
            [self.k, self.m]
        } else {
            [self.m, self.k]
        };
        let b2 = if self.tb {
            [self.n, self.k]
        } else {
            [self.k, self.n]
        };
        let bc = self.batching.count();
        let with = |batched: bool, s: [usize; 2]| {
            if batched {
                vec![bc, s[0], s[1]]
            } else {
                s.to_vec()
            }
        };
        (
            with(self.batching.a_batched(), a2),
            with(self.batching.b_batched(), b2),
        )
    }

    /// Whether the subgroup kernel takes this case: N and the contiguous dim of each
    /// operand multiples of 4, and K too unless the product is A^T B.
    fn subgroup_aligned(&self) -> bool {
        self.n % 4 == 0
            && (!self.ta || self.m % 4 == 0)
            && (self.k % 4 == 0 || (self.ta && !self.tb))
    }
}

struct Inputs {
    a: Tensor,
    b: Tensor,
    reference: Vec<f64>,
    bound: Vec<f64>,
}

fn inputs(case: &Case, seed: u64) -> Inputs {
    let (sa, sb) = case.shapes();
    let na: usize = sa.iter().product();
    let nb: usize = sb.iter().product();
    let av = values(na, -1.0, 1.0, seed);
    let mut bv = values(nb, -1.0, 1.0, seed + 1);
    let b = match case.weights {
        DType::F32 => tensor(&bv, &sb),
        DType::F16 => {
            let halves: Vec<f16> = bv.iter().map(|&x| f16::from_f32(x)).collect();
            bv = halves.iter().map(|h| h.to_f32()).collect();
            Tensor::from_f16(&device(), &halves, &sb).unwrap()
        }
        DType::BF16 => {
            let halves: Vec<bf16> = bv.iter().map(|&x| bf16::from_f32(x)).collect();
            bv = halves.iter().map(|h| h.to_f32()).collect();
            let bytes: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
            Tensor::from_blocks(&device(), DType::BF16, &bytes, &sb).unwrap()
        }
        other => unreachable!("{other:?} weights"),
    };
    assert_eq!(b.dtype(), case.weights);
    let r = |a: &[f32], b: &[f32]| {
        matmul_ref(
            a,
            b,
            case.batching.count(),
            case.m,
            case.k,
            case.n,
            case.ta,
            case.tb,
            case.batching.a_batched(),
            case.batching.b_batched(),
        )
    };
    let reference = r(&av, &bv);
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
    let g = gamma(case.k);
    let bound = r(&abs(&av), &abs(&bv))
        .into_iter()
        .map(|s| g * s + 1e-30)
        .collect();
    Inputs {
        a: tensor(&av, &sa),
        b,
        reference,
        bound,
    }
}

fn expected_shape(case: &Case) -> Vec<usize> {
    match case.batching {
        Batching::None => vec![case.m, case.n],
        _ => vec![case.batching.count(), case.m, case.n],
    }
}

fn subgroup_here() -> bool {
    subgroups_of_8(&device())
}

/// Runs `case` on `variant` and checks it; a subgroup case the kernel cannot take must be
/// refused with `Error::Unsupported`.
fn check(case: Case, variant: MatmulVariant, seed: u64) {
    let x = inputs(&case, seed);
    let what = format!("{variant} {case:?}");
    let result = matmul_with(&x.a, &x.b, case.ta, case.tb, variant);
    let runs =
        variant.kernel != MatmulKernel::Subgroup || (subgroup_here() && case.subgroup_aligned());
    if !runs {
        match result {
            Err(Error::Unsupported(_)) => return,
            Err(e) => panic!("{what}: expected Unsupported, got {e}"),
            Ok(_) => panic!("{what}: the subgroup kernel accepted a case it cannot run"),
        }
    }
    let c = result.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(c.shape(), expected_shape(&case).as_slice(), "{what}");
    assert_within(&what, &read(&c), &x.reference, &x.bound);
}

const KERNELS: [MatmulKernel; 3] = MatmulKernel::ALL;

/// Every kernel with every storage format of B.
fn kernels_and_weights() -> impl Iterator<Item = (MatmulKernel, DType)> {
    KERNELS
        .into_iter()
        .flat_map(|k| WEIGHTS.into_iter().map(move |w| (k, w)))
}

/// All four transpose flag combinations.
const FLAGS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

#[test]
fn odd_sizes_every_layout_every_kernel() {
    let sizes = [1, 3, 5, 33, 65, 127];
    let mut seed = 1;
    for (kernel, weights) in kernels_and_weights() {
        for (ta, tb) in FLAGS {
            // Every size in each role at least once, with the others varied.
            for (i, &m) in sizes.iter().enumerate() {
                let k = sizes[(i + 2) % sizes.len()];
                let n = sizes[(i + 4) % sizes.len()];
                check(
                    Case::new(m, k, n, ta, tb).weights(weights),
                    MatmulVariant::new(kernel, 1),
                    seed,
                );
                seed += 2;
            }
        }
    }
}

#[test]
fn aligned_sizes_every_layout_every_kernel() {
    // Multiples of 4 (the subgroup kernel's vec4 loads) around its 8- and 32-row and
    // 64-column tiles, and around the tiled kernel's 64 and 16.
    let shapes = [
        (4, 4, 4),
        (8, 12, 64),
        (32, 16, 68),
        (36, 64, 60),
        (4, 20, 132),
        (132, 28, 4),
        (68, 100, 128),
        (128, 4, 8),
        // K not a multiple of 4: only A^T B runs on the subgroup kernel.
        (12, 33, 16),
        (36, 6, 68),
    ];
    let mut seed = 100;
    for (kernel, weights) in kernels_and_weights() {
        for (ta, tb) in FLAGS {
            for &(m, k, n) in &shapes {
                check(
                    Case::new(m, k, n, ta, tb).weights(weights),
                    MatmulVariant::new(kernel, 1),
                    seed,
                );
                seed += 2;
            }
        }
    }
}

#[test]
fn batched_and_shared_operands_every_kernel() {
    let mut seed = 200;
    for (kernel, weights) in kernels_and_weights() {
        for (ta, tb) in FLAGS {
            for batching in [
                Batching::Both(3),
                Batching::AShared(2),
                Batching::BShared(3),
            ] {
                // One odd case (the subgroup kernel refuses it) and one aligned.
                for (m, k, n) in [(5, 33, 3), (36, 40, 68)] {
                    let case = Case::new(m, k, n, ta, tb)
                        .batched(batching)
                        .weights(weights);
                    check(case, MatmulVariant::new(kernel, 1), seed);
                    seed += 2;
                }
            }
        }
    }
}

#[test]
fn large_product_every_kernel() {
    // Above 500 in every dim: odd (general and tiled) and aligned (all three).
    for (kernel, weights) in kernels_and_weights() {
        for (i, (ta, tb)) in FLAGS.into_iter().enumerate() {
            let (m, k, n) = if i % 2 == 0 {
                (513, 515, 517)
            } else {
                (516, 600, 520)
            };
            check(
                Case::new(m, k, n, ta, tb).weights(weights),
                MatmulVariant::new(kernel, 1),
                300 + i as u64,
            );
        }
    }
}

#[test]
fn split_k_every_kernel_and_layout() {
    let mut seed = 400;
    for (kernel, weights) in kernels_and_weights() {
        for (ta, tb) in FLAGS {
            for splits in [2, 3, 7] {
                // k not a multiple of the split: the last split is short.
                for (m, k, n) in [(5, 129, 3), (8, 260, 36), (36, 1000, 8), (8, 131, 36)] {
                    let case = Case::new(m, k, n, ta, tb).weights(weights);
                    check(case, MatmulVariant::new(kernel, splits), seed);
                    check(
                        case.batched(Batching::Both(2)),
                        MatmulVariant::new(kernel, splits),
                        seed + 1,
                    );
                    seed += 2;
                }
            }
        }
    }
}

#[test]
fn split_k_is_deterministic() {
    for (kernel, weights) in kernels_and_weights() {
        if kernel == MatmulKernel::Subgroup && !subgroup_here() {
            continue;
        }
        let case = Case::new(8, 2048, 64, true, false).weights(weights);
        let x = inputs(&case, 500);
        let v = MatmulVariant::new(kernel, 16);
        let first = read(&matmul_with(&x.a, &x.b, true, false, v).unwrap());
        for _ in 0..3 {
            let again = read(&matmul_with(&x.a, &x.b, true, false, v).unwrap());
            assert_bits_eq(&format!("{v} {weights:?} rerun"), &again, &first);
        }
        assert_within(&format!("{v} {case:?}"), &first, &x.reference, &x.bound);
    }
}

/// The products of a LoRA layer (tokens T, model dim d, rank r), with the flags the
/// engine's autodiff uses: x A^T, h B^T, dA = dh^T x, dB = dy^T h, dx = dh A, dh = dy B.
fn lora_cases(t: usize, d: usize, r: usize) -> [Case; 6] {
    [
        Case::new(t, d, r, false, true),
        Case::new(t, r, d, false, true),
        Case::new(r, t, d, true, false),
        Case::new(d, t, r, true, false),
        Case::new(t, r, d, false, false),
        Case::new(t, d, r, false, false),
    ]
}

#[test]
fn lora_shapes_every_kernel_and_the_automatic_choice() {
    let mut seed = 600;
    // T = 254 (not a multiple of 4): the weight gradients still take the subgroup kernel.
    for (t, d, r) in [(256, 64, 8), (512, 128, 16), (96, 36, 4), (254, 36, 8)] {
        for case in lora_cases(t, d, r)
            .into_iter()
            .flat_map(|c| WEIGHTS.map(|w| c.weights(w)))
        {
            for kernel in KERNELS {
                for splits in [1, 4] {
                    check(case, MatmulVariant::new(kernel, splits), seed);
                }
            }
            let x = inputs(&case, seed);
            let c = matmul_t(&x.a, &x.b, case.ta, case.tb).unwrap();
            assert_within(&format!("auto {case:?}"), &read(&c), &x.reference, &x.bound);
            seed += 2;
        }
    }
}

#[test]
fn automatic_choice_every_layout() {
    let mut seed = 700;
    for (ta, tb) in FLAGS {
        for (m, k, n) in [(3, 5, 1), (127, 65, 33), (64, 64, 64), (8, 1024, 36)] {
            for (batching, weights) in [Batching::None, Batching::Both(2), Batching::BShared(2)]
                .into_iter()
                .flat_map(|b| WEIGHTS.map(|w| (b, w)))
            {
                let case = Case::new(m, k, n, ta, tb)
                    .batched(batching)
                    .weights(weights);
                let x = inputs(&case, seed);
                let v = matmul_variant(&x.a, &x.b, ta, tb).unwrap();
                let c = matmul_t(&x.a, &x.b, ta, tb).unwrap();
                assert_eq!(c.shape(), expected_shape(&case).as_slice());
                assert_within(
                    &format!("auto ({v}) {case:?}"),
                    &read(&c),
                    &x.reference,
                    &x.bound,
                );
                // Where the subgroup kernel runs, it is the choice for shapes it takes,
                // whatever B's storage format.
                if subgroup_here() && case.subgroup_aligned() {
                    assert_eq!(v.kernel, MatmulKernel::Subgroup, "{case:?}");
                }
                seed += 2;
            }
        }
    }
}

#[test]
fn subgroup_kernel_refuses_what_it_cannot_run() {
    let a = tensor(&values(6 * 10, -1.0, 1.0, 1), &[6, 10]);
    let b = tensor(&values(10 * 8, -1.0, 1.0, 2), &[10, 8]);
    // K = 10 is not a multiple of 4.
    let r = matmul_with(
        &a,
        &b,
        false,
        false,
        MatmulVariant::new(MatmulKernel::Subgroup, 1),
    );
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
    // Shape errors come first, whatever the kernel.
    let r = matmul_with(
        &a,
        &a,
        false,
        false,
        MatmulVariant::new(MatmulKernel::General, 1),
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
}

#[test]
fn empty_inner_dim_gives_zeros_on_every_kernel() {
    let a = Tensor::zeros(&device(), &[8, 0]).unwrap();
    let b32 = Tensor::zeros(&device(), &[0, 12]).unwrap();
    let b16 = Tensor::from_f16(&device(), &[], &[0, 12]).unwrap();
    for (kernel, b) in KERNELS.into_iter().flat_map(|k| [(k, &b32), (k, &b16)]) {
        if kernel == MatmulKernel::Subgroup && !subgroup_here() {
            continue;
        }
        for splits in [1, 3] {
            let v = MatmulVariant::new(kernel, splits);
            let c = matmul_with(&a, b, false, false, v).unwrap();
            assert_eq!(c.shape(), &[8, 12]);
            assert!(read(&c).iter().all(|&x| x == 0.0), "{v} {:?}", b.dtype());
        }
    }
}

/// prior + the f64 product, elementwise: what summing a product into `prior` should give.
fn prior_plus_product(prior: &[f32], x: &Inputs) -> Vec<f64> {
    x.reference
        .iter()
        .zip(prior)
        .map(|(r, &p)| r + p as f64)
        .collect()
}

/// `acc + op(a) op(b)` against `acc + reference` (one more f32 rounding: the bound grows by
/// u |acc + reference|): in place (the same tensor back) on every kernel, split or not.
#[test]
fn accumulate_into_a_sum_every_kernel_and_split() {
    let mut seed = 900;
    for (kernel, weights) in kernels_and_weights() {
        for (ta, tb) in FLAGS {
            for splits in [1, 3] {
                for case in [
                    Case::new(36, 40, 68, ta, tb),
                    Case::new(5, 129, 3, ta, tb),
                    Case::new(8, 260, 36, ta, tb).batched(Batching::Both(2)),
                ] {
                    let case = case.weights(weights);
                    let variant = MatmulVariant::new(kernel, splits);
                    let x = inputs(&case, seed);
                    let shape = expected_shape(&case);
                    let prior = values(shape.iter().product(), -1.0, 1.0, seed + 7);
                    let sum = tensor(&prior, &shape);
                    let id = sum.id();
                    let what = format!("accumulate {variant} {case:?}");
                    let result =
                        no_grad(|| matmul_accumulate_with(sum, &x.a, &x.b, ta, tb, variant));
                    let runs = kernel != MatmulKernel::Subgroup
                        || (subgroup_here() && case.subgroup_aligned());
                    if !runs {
                        assert!(matches!(result, Err(Error::Unsupported(_))), "{what}");
                        continue;
                    }
                    let c = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(c.id(), id, "{what}: not summed in place");
                    let want = prior_plus_product(&prior, &x);
                    let bound: Vec<f64> = x
                        .bound
                        .iter()
                        .zip(&want)
                        .map(|(b, w)| b + 2.0 * U * w.abs())
                        .collect();
                    assert_within(&what, &read(&c), &want, &bound);
                    seed += 2;
                }
            }
        }
    }
}

/// A sum someone else still holds is left as it was: the result is a new tensor.
#[test]
fn accumulate_never_writes_a_shared_sum() {
    let case = Case::new(36, 40, 68, false, true);
    let x = inputs(&case, 990);
    let prior = values(36 * 68, -1.0, 1.0, 991);
    let sum = tensor(&prior, &[36, 68]);
    let kept = sum.clone();
    let c = no_grad(|| matmul_accumulate(sum, &x.a, &x.b, false, true)).unwrap();
    assert_ne!(c.id(), kept.id());
    assert_bits_eq("the shared sum", &read(&kept), &prior);
    let want = prior_plus_product(&prior, &x);
    let bound: Vec<f64> = x.bound.iter().map(|b| b + 4.0 * U * 40.0).collect();
    assert_within("shared sum", &read(&c), &want, &bound);
    // A sum of the wrong shape is refused, naming both shapes.
    let wrong = tensor(&prior, &[68, 36]);
    let r = no_grad(|| matmul_accumulate(wrong, &x.a, &x.b, false, true));
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
}

/// `alpha op(a) op(b)` in one kernel: every kernel, split or not, against alpha times the
/// f64 product (one more rounding: |alpha| u |product| on top of the product's bound); and
/// its gradients (alpha times the plain product's) by gradcheck.
#[test]
fn scaled_products_every_kernel_and_their_gradients() {
    let alpha = -0.37f32;
    let mut seed = 1100;
    for (ta, tb) in FLAGS {
        for case in [Case::new(36, 40, 68, ta, tb), Case::new(8, 260, 36, ta, tb)]
            .into_iter()
            .flat_map(|c| WEIGHTS.map(|w| c.weights(w)))
        {
            let x = inputs(&case, seed);
            let want: Vec<f64> = x.reference.iter().map(|r| alpha as f64 * r).collect();
            let bound: Vec<f64> = x
                .bound
                .iter()
                .zip(&want)
                .map(|(b, w)| alpha.abs() as f64 * b + 2.0 * U * w.abs())
                .collect();
            let c = matmul_scaled(&x.a, &x.b, ta, tb, alpha).unwrap();
            assert_within(&format!("scaled auto {case:?}"), &read(&c), &want, &bound);
            for kernel in KERNELS {
                if kernel == MatmulKernel::Subgroup && !(subgroup_here() && case.subgroup_aligned())
                {
                    continue;
                }
                for splits in [1, 3] {
                    let v = MatmulVariant::new(kernel, splits);
                    let c = matmul_scaled_with(&x.a, &x.b, (ta, tb, alpha), v).unwrap();
                    assert_within(&format!("scaled {v} {case:?}"), &read(&c), &want, &bound);
                }
            }
            seed += 2;
        }
    }
    let opts = gc_opts(1e-2, 1e-2, 1e-2, 12);
    let a = tensor(&values(5 * 6, -1.0, 1.0, 1200), &[5, 6]);
    let b = tensor(&values(4 * 6, -1.0, 1.0, 1201), &[4, 6]);
    let report = gradcheck(
        |xs| matmul_scaled(&xs[0], &xs[1], false, true, 2.5),
        &[a, b],
        &opts,
    )
    .unwrap();
    assert!(report.passed(), "{report}");
}
