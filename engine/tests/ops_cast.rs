//! f16 storage: f32 -> f16 -> f32 on the GPU against the `half` crate's conversion.

mod common;

use half::f16;
use hydralora_engine::{DType, Tensor};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Widening is exact; narrowing lands on one of the two f16 neighbours of the value (WGSL
    /// leaves the rounding of pack2x16float to the implementation), and exactly on values
    /// f16 can represent. Odd element counts exercise the half-filled last word.
    #[test]
    fn f16_round_trips(n in 1usize..600, scale in prop::sample::select(vec![1e-3f32, 1.0, 300.0, 6e4]), seed in 0u64..1000) {
        let dev = common::device();
        let values: Vec<f32> = common::values(n, -scale, scale, seed);
        let t = Tensor::from_slice(&dev, &values, &[n]).unwrap();
        let half_t = t.to_f16().unwrap();
        prop_assert_eq!(half_t.dtype(), DType::F16);
        prop_assert_eq!(half_t.size_in_bytes(), 2 * n as u64);
        let halves = half_t.to_vec_f16().unwrap();
        for (i, (&h, &v)) in halves.iter().zip(&values).enumerate() {
            let nearest = f16::from_f32(v);
            let ok = h == nearest || h.to_bits().abs_diff(nearest.to_bits()) == 1 && (h.to_f32() - v).abs() <= (nearest.to_f32() - v).abs() * 2.0 + f32::EPSILON;
            prop_assert!(ok, "element {}: {} -> {} (nearest {})", i, v, h, nearest);
        }
        let back = half_t.to_f32().unwrap().to_vec_f32().unwrap();
        for (b, h) in back.iter().zip(&halves) {
            prop_assert_eq!(*b, h.to_f32(), "widening is exact");
        }
        // Values f16 represents survive the round trip unchanged.
        let exact: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        let t = Tensor::from_f16(&dev, &exact, &[n]).unwrap();
        let again = t.to_f32().unwrap().to_f16().unwrap().to_vec_f16().unwrap();
        prop_assert_eq!(again, exact);
    }
}

#[test]
fn casts_check_the_dtype() {
    let dev = common::device();
    let t = Tensor::from_slice(&dev, &[1.0, 2.0], &[2]).unwrap();
    let e = t.to_f32().unwrap_err().to_string();
    assert!(
        e.contains("to_f32") && e.contains("F32") && e.contains("[2]"),
        "{e}"
    );
    let h = t.to_f16().unwrap();
    assert!(h.to_f16().is_err());
    assert!(h.add(&h).is_err(), "compute ops take f32 only");
}
