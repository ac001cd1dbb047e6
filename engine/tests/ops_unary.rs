//! Unary ops (neg, exp, log on positive inputs, sqrt on positive inputs, silu, scale, round-to-f16):
//! forward and backward against float64, and the engine's gradcheck.
//!
//! Tolerances follow WGSL's accuracy guarantees for f32 (WGSL spec, "Floating Point
//! Accuracy"), in ulps of the result (1 ulp <= 2^-23 relative):
//!   neg: exact. scale: one rounding (u = 2^-24 relative).
//!   exp: 3 + 2|x| ulp; on [-4, 4] that is <= 11 ulp, so rtol 12 * 2^-23.
//!   log: 3 ulp outside [0.5, 2], absolute 2^-21 inside: atol 2^-21, rtol 4 * 2^-23.
//!   sqrt: inherited from 1 / inverseSqrt (2 ulp + 2.5 ulp): rtol 6 * 2^-23.
//!   silu = x / (1 + exp(-x)) on [-6, 6]: exp's 15 ulp + add + div + mul, all without
//!   cancellation: rtol 24 * 2^-23.
//! Backward is dy * f'(x) from the saved x or y: one or two more roundings, except silu's
//! s (1 + x (1 - s)), which cancels near f'(x) = 0 (x ~ -1.28) and in 1 - s: its absolute
//! error is <= |dy| (1 + |x|) |error of s| <= 7 * 16 ulp(1) ~ 1.4e-5, so atol 2e-5.

mod common;

use common::*;
use hydralora_engine::Tensor;
use proptest::prelude::*;

const ULP: f64 = 1.0 / (1u64 << 23) as f64;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Neg,
    Exp,
    Log,
    Sqrt,
    Silu,
    Scale(f32),
}

fn kinds() -> Vec<Kind> {
    vec![
        Kind::Neg,
        Kind::Exp,
        Kind::Log,
        Kind::Sqrt,
        Kind::Silu,
        Kind::Scale(-1.75),
        Kind::Scale(0.3),
    ]
}

impl Kind {
    fn apply(self, x: &Tensor) -> hydralora_engine::Result<Tensor> {
        match self {
            Kind::Neg => x.neg(),
            Kind::Exp => x.exp(),
            Kind::Log => x.log(),
            Kind::Sqrt => x.sqrt(),
            Kind::Silu => x.silu(),
            Kind::Scale(s) => x.scale(s),
        }
    }
    /// The input range the op is tested on.
    fn domain(self) -> (f32, f32) {
        match self {
            Kind::Exp => (-4.0, 4.0),
            Kind::Log | Kind::Sqrt => (0.05, 4.0),
            Kind::Silu => (-6.0, 6.0),
            _ => (-2.0, 2.0),
        }
    }
    /// (f(x), f'(x)) in f64.
    fn reference(self, x: f64) -> (f64, f64) {
        match self {
            Kind::Neg => (-x, -1.0),
            Kind::Exp => (x.exp(), x.exp()),
            Kind::Log => (x.ln(), 1.0 / x),
            Kind::Sqrt => (x.sqrt(), 0.5 / x.sqrt()),
            Kind::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                (x * s, s * (1.0 + x * (1.0 - s)))
            }
            Kind::Scale(s) => (x * s as f64, s as f64),
        }
    }
    /// (atol, rtol) of the forward and of the backward (see the file's header).
    fn tolerances(self) -> ((f64, f64), (f64, f64)) {
        match self {
            Kind::Neg => ((0.0, 0.0), (0.0, 0.0)),
            Kind::Scale(_) => ((0.0, U), (0.0, U)),
            Kind::Exp => ((0.0, 12.0 * ULP), (0.0, 13.0 * ULP)),
            Kind::Log => ((1.0 / (1u64 << 21) as f64, 4.0 * ULP), (0.0, 3.0 * ULP)),
            Kind::Sqrt => ((0.0, 6.0 * ULP), (0.0, 10.0 * ULP)),
            Kind::Silu => ((1e-30, 24.0 * ULP), (2e-5, 24.0 * ULP)),
        }
    }
}

fn check(kind: Kind, shape: &[usize], seed: u64) {
    let n: usize = shape.iter().product();
    let (lo, hi) = kind.domain();
    let x = values(n, lo, hi, seed);
    let w = values(n, -1.0, 1.0, seed + 1);
    let what = format!("{kind:?} on {shape:?}");
    let p = param(&x, shape);
    let y = kind.apply(&p).unwrap();
    assert_eq!(y.shape(), shape);
    let ((fa, fr), (ba, br)) = kind.tolerances();
    let (fwd, grad): (Vec<f64>, Vec<f64>) = x
        .iter()
        .zip(&w)
        .map(|(&v, &g)| {
            let (f, d) = kind.reference(v as f64);
            (f, g as f64 * d)
        })
        .unzip();
    assert_close(&format!("{what} forward"), &read(&y), &fwd, fa, fr);
    let grads = y.backward_with(tensor(&w, shape)).unwrap();
    assert_close(
        &format!("{what} backward"),
        &read(grads.get(&p).unwrap()),
        &grad,
        ba,
        br,
    );
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        prop::collection::vec(dim(), 1..=3),
        // element counts just around the 256-wide workgroup
        prop::sample::select(vec![vec![255], vec![256], vec![257], vec![3, 171], vec![1]]),
    ]
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn unary_ops_match_f64(shape in shape(), k in 0usize..7, seed in 0u64..1000) {
        check(kinds()[k], &shape, seed);
    }
}

#[test]
fn every_unary_op_on_odd_sizes() {
    for (i, kind) in kinds().into_iter().enumerate() {
        for shape in [vec![1], vec![257], vec![3, 5, 7]] {
            check(kind, &shape, i as u64);
        }
    }
}

#[test]
fn gradcheck_unary_ops() {
    // Smooth functions on their domains: with eps 1e-3 the central difference's truncation
    // error is eps^2 / 6 |f'''| <= 1e-5 (|f'''| < 55 for exp on [-4, 4], 2 / x^3 < 16000 for
    // log at x >= 0.05 gives 3e-3, so log and sqrt use x >= 0.5 here). f32 rounding of L
    // (|L| < 30 for these 12 elements) adds ~1e-3. The engine's default 1e-2 tolerances
    // hold both with margin.
    let opts = gc_opts(1e-3, 1e-2, 1e-2, 12);
    for kind in kinds() {
        let (lo, hi) = match kind {
            Kind::Log | Kind::Sqrt => (0.5, 3.0),
            _ => kind.domain(),
        };
        let x = tensor(&values(12, lo, hi, 3), &[3, 4]);
        assert_gradcheck(&format!("{kind:?}"), |xs| kind.apply(&xs[0]), &[x], &opts);
    }
}

/// Whether `r` is one of the two f16 values next to `x`: an f16 value closer to x than
/// f16's spacing at |x| (WGSL lets a conversion to a narrower float give either neighbour
/// of a value it cannot represent).
fn is_f16_neighbour(x: f32, r: f32) -> bool {
    let representable = half::f16::from_f32(r).to_f32() == r;
    let exponent = (x.abs() as f64).log2().floor().max(-14.0); // subnormals: 2^-24 apart
    let spacing = 2f64.powf(exponent - 10.0);
    representable && (f64::from(r) - f64::from(x)).abs() <= spacing
}

proptest! {
    #![proptest_config(proptest_config(32))]

    /// round_half gives an f16 value next to x (the nearest, or with WGSL's freedom its
    /// other neighbour), across f16's normal and subnormal range; its gradient is dy.
    #[test]
    fn round_half_rounds_to_f16_and_passes_the_gradient_through(n in 1usize..300, seed in 0u64..1000) {
        let mut xs = values(n, -70000.0, 70000.0, seed);
        // Also small magnitudes, where f16 is subnormal (below 6.1e-5) or underflows.
        for (i, v) in xs.iter_mut().enumerate() {
            if i % 3 == 1 { *v *= 1e-9; }
            if i % 3 == 2 { *v /= 7.0e4; }
        }
        let dev = device();
        let x = Tensor::from_slice(&dev, &xs, &[n]).unwrap().into_param();
        let y = x.round_half().unwrap();
        let got = y.to_vec_f32().unwrap();
        for (&v, &r) in xs.iter().zip(&got) {
            if v.abs() > 65519.0 {
                prop_assert!(r.is_infinite() && r.signum() == v.signum(), "{v} -> {r}");
                continue;
            }
            prop_assert!(is_f16_neighbour(v, r), "{v} -> {r}, nearest f16 {}", half::f16::from_f32(v));
        }
        let dy = values(n, -1.0, 1.0, seed + 1);
        let w = Tensor::from_slice(&dev, &dy, &[n]).unwrap();
        let clipped: Vec<f32> = xs.iter().map(|v| v.clamp(-6e4, 6e4)).collect();
        let x = Tensor::from_slice(&dev, &clipped, &[n]).unwrap().into_param();
        let grads = x.round_half().unwrap().mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        prop_assert_eq!(grads.get(&x).unwrap().to_vec_f32().unwrap(), dy);
    }
}
