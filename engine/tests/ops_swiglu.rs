//! Fused SwiGLU, silu(g) * u: forward against float64, backward against gradcheck and the
//! unfused ops.

mod common;

use hydralora_engine::gradcheck::{gradcheck, GradcheckOptions};
use hydralora_engine::{swiglu, Tensor};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Tolerance: exp within 12 ulp and three roundings: 64 ulp of the value plus 1e-6.
    #[test]
    fn forward_matches_f64(rows in 1usize..9, cols in 1usize..70, seed in 0u64..1000) {
        let dev = common::device();
        let (g, u) = (common::values(rows * cols, -6.0, 6.0, seed), common::values(rows * cols, -2.0, 2.0, seed + 1));
        let y = swiglu(&Tensor::from_slice(&dev, &g, &[rows, cols]).unwrap(), &Tensor::from_slice(&dev, &u, &[rows, cols]).unwrap()).unwrap().to_vec_f32().unwrap();
        let reference: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| { let g = g as f64; g / (1.0 + (-g).exp()) * u as f64 }).collect();
        common::assert_close("swiglu", &y, &reference, 1e-6, 64.0 * f32::EPSILON as f64);
    }

    /// gradcheck's defaults (1e-2) for a 1e-3 step; and the fused gradients equal the
    /// unfused silu(g) * u ones to a few ulp.
    #[test]
    fn backward_matches_gradcheck_and_the_unfused_ops(n in 1usize..40, seed in 0u64..1000) {
        let dev = common::device();
        let g = Tensor::from_slice(&dev, &common::values(n, -4.0, 4.0, seed), &[n]).unwrap();
        let u = Tensor::from_slice(&dev, &common::values(n, -2.0, 2.0, seed + 7), &[n]).unwrap();
        let report = gradcheck(|xs| swiglu(&xs[0], &xs[1]), &[g.clone(), u.clone()], &GradcheckOptions { max_checks_per_input: 16, ..Default::default() }).unwrap();
        prop_assert!(report.passed(), "{}", report);
        let (gf, uf) = (g.clone().into_param(), u.clone().into_param());
        let fused = swiglu(&gf, &uf).unwrap().sum_all().unwrap().backward().unwrap();
        let (gp, up) = (g.into_param(), u.into_param());
        let plain = gp.silu().unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        for (a, b) in [(fused.get(&gf).unwrap(), plain.get(&gp).unwrap()), (fused.get(&uf).unwrap(), plain.get(&up).unwrap())] {
            let (a, b) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
            for (x, y) in a.iter().zip(&b) {
                prop_assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{} vs {}", x, y);
            }
        }
    }
}

#[test]
fn mismatched_shapes_are_an_error() {
    let dev = common::device();
    let a = Tensor::zeros(&dev, &[2, 3]).unwrap();
    let b = Tensor::zeros(&dev, &[3, 2]).unwrap();
    let e = swiglu(&a, &b).unwrap_err().to_string();
    assert!(
        e.contains("swiglu") && e.contains("[2, 3]") && e.contains("[3, 2]"),
        "{e}"
    );
}
