//! `--weights FORMAT`: how the frozen base weights are stored on the device, and
//! `--precision`: how their products take their inputs.

use hydralora::engine::DType;
use hydralora::model::Precision;

/// Parses `f32` or `mixed`.
pub fn parse_precision(name: &str) -> Result<Precision, String> {
    Precision::parse(name).map_err(|e| e.to_string())
}

/// Parses `f32`, `f16`, `bf16`, `q8_0`, `q4_0`, `q4_k` or `q6_k` (any case).
pub fn parse_weight_format(name: &str) -> Result<DType, String> {
    DType::from_weight_name(name).ok_or_else(|| {
        format!("unknown weight format `{name}`: use f32, f16, bf16, q8_0, q4_0, q4_k or q6_k")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_parses_by_its_name_and_others_are_refused() {
        for d in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4K,
            DType::Q6K,
        ] {
            assert_eq!(parse_weight_format(d.name()), Ok(d));
            assert_eq!(parse_weight_format(&d.name().to_uppercase()), Ok(d));
        }
        assert!(parse_weight_format("q5_k").unwrap_err().contains("q4_k"));
    }
}
