//! GGUF's block formats (`hydralora_engine::quant`, the matmul weight pieces
//! `shaders/lib/weights_q*.wgsl`) against llama.cpp: `tests/data/quant/` holds 16 rows of a
//! weight as f32, llama.cpp's own q8_0, q4_0, q4_K and q6_K blocks of them (from the files
//! llama.cpp quantized in `../shared/fixtures-gguf`), and those blocks dequantized by the
//! `gguf` Python package (`scripts/quant_reference.py` writes them).
//!
//! - our q8_0 and q4_0 quantizers write llama.cpp's bytes exactly;
//! - our dequantizer reads llama.cpp's blocks to the `gguf` package's values exactly;
//! - our K-quant quantizers (a direct fit, without llama.cpp's scale search) stay within a
//!   stated factor (1.2) of llama.cpp's own RMS error on the same weights (measured: q4_K
//!   1.11x, q6_K 1.07x; the test prints both);
//! - every matmul kernel, with and without split-K and summing into C, multiplies by
//!   llama.cpp's blocks in both products a frozen weight takes part in (`x Wᵀ` forward,
//!   `dY W` for the input gradient) within the f32 dot-product bound of `tests/matmul_variants.rs`
//!   around a float64 product with the reference's dequantized weights.

mod common;

use std::path::Path;

use common::*;
use hydralora_engine::ops::matmul::{matmul_accumulate_with, matmul_with, MatmulKernel};
use hydralora_engine::ops::matmul::{subgroups_of_8, MatmulVariant};
use hydralora_engine::{quant, DType, Error, Tensor};

const ROWS: usize = 16;
const COLS: usize = 256;

/// The block formats and their file names in `tests/data/quant/`.
const FORMATS: [(DType, &str); 4] = [
    (DType::Q8_0, "q8_0"),
    (DType::Q4_0, "q4_0"),
    (DType::Q4K, "q4_k"),
    (DType::Q6K, "q6_k"),
];

fn data(file: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/quant")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn floats(file: &str) -> Vec<f32> {
    data(file)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn rms(a: &[f32], b: &[f32]) -> f64 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    (sum / a.len() as f64).sqrt()
}

#[test]
fn q8_0_and_q4_0_quantize_to_llama_cpps_exact_bytes() {
    let input = floats("input.f32");
    for (dtype, name) in [(DType::Q8_0, "q8_0"), (DType::Q4_0, "q4_0")] {
        let ours = quant::quantize(dtype, &input, COLS).unwrap();
        let theirs = data(&format!("{name}.llamacpp.bin"));
        let first_difference = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        assert_eq!(ours.len(), theirs.len(), "{name}");
        assert_eq!(first_difference, None, "{name}: first differing byte");
    }
}

#[test]
fn llama_cpp_blocks_dequantize_to_the_gguf_packages_values() {
    for (dtype, name) in FORMATS {
        let ours =
            quant::dequantize(dtype, &data(&format!("{name}.llamacpp.bin")), ROWS * COLS).unwrap();
        let theirs = floats(&format!("{name}.llamacpp.f32"));
        assert_bits_eq(name, &ours, &theirs);
    }
}

#[test]
fn k_quant_quantizers_stay_near_llama_cpps_error() {
    let input = floats("input.f32");
    for (dtype, name, factor) in [(DType::Q4K, "q4_k", 1.2), (DType::Q6K, "q6_k", 1.2)] {
        let ours = quant::dequantize(
            dtype,
            &quant::quantize(dtype, &input, COLS).unwrap(),
            input.len(),
        )
        .unwrap();
        let theirs = floats(&format!("{name}.llamacpp.f32"));
        let (e_ours, e_theirs) = (rms(&ours, &input), rms(&theirs, &input));
        println!(
            "{name}: RMS error {e_ours:.3e} (ours) vs {e_theirs:.3e} (llama.cpp), ratio {:.3}",
            e_ours / e_theirs
        );
        assert!(
            e_ours <= factor * e_theirs,
            "{name}: our RMS error {e_ours:.3e} is over {factor} x llama.cpp's {e_theirs:.3e}"
        );
    }
}

/// x [m, k] times W^T for W [n, k] (`x Wᵀ`), or x [m, n] times W [n, k] (`dY W`), in f64,
/// with the bound of an f32 dot product (gamma_{K+1} sum |x w|).
fn reference(x: &[f32], w: &[f32], m: usize, transposed: bool) -> (Vec<f64>, Vec<f64>) {
    let (n, k) = (ROWS, COLS);
    let (inner, outer) = if transposed { (k, n) } else { (n, k) };
    let mut value = vec![0.0; m * outer];
    let mut bound = vec![0.0; m * outer];
    for i in 0..m {
        for o in 0..outer {
            let (mut s, mut a) = (0.0f64, 0.0f64);
            for j in 0..inner {
                let wv = if transposed {
                    w[o * k + j]
                } else {
                    w[j * k + o]
                } as f64;
                let p = x[i * inner + j] as f64 * wv;
                s += p;
                a += p.abs();
            }
            let nu = (inner + 1) as f64 * f64::from(f32::EPSILON) / 2.0;
            value[i * outer + o] = s;
            bound[i * outer + o] = nu / (1.0 - nu) * 1.01 * a + 1e-30;
        }
    }
    (value, bound)
}

#[test]
fn every_kernel_multiplies_by_llama_cpps_blocks_both_ways() {
    let dev = device();
    let subgroup_here = subgroups_of_8(&dev);
    let m = 12;
    for (dtype, name) in FORMATS {
        let w = Tensor::from_blocks(
            &dev,
            dtype,
            &data(&format!("{name}.llamacpp.bin")),
            &[ROWS, COLS],
        )
        .unwrap();
        let w_ref = floats(&format!("{name}.llamacpp.f32"));
        for transposed in [true, false] {
            let inner = if transposed { COLS } else { ROWS };
            let outer = if transposed { ROWS } else { COLS };
            let xv = values(m * inner, -1.0, 1.0, 7 + transposed as u64);
            let x = tensor(&xv, &[m, inner]);
            let (want, bound) = reference(&xv, &w_ref, m, transposed);
            for kernel in MatmulKernel::ALL {
                if kernel == MatmulKernel::Subgroup && !subgroup_here {
                    continue; // matmul_variants.rs checks the refusal
                }
                for splits in [1, 3] {
                    let variant = MatmulVariant::new(kernel, splits);
                    let what =
                        format!("{name} {variant} x W{}", if transposed { "^T" } else { "" });
                    let c = matmul_with(&x, &w, false, transposed, variant)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_within(&what, &read(&c), &want, &bound);
                    // C += the product: twice the product from a first copy of it.
                    let acc = matmul_with(&x, &w, false, transposed, variant).unwrap();
                    let sum = matmul_accumulate_with(acc, &x, &w, false, transposed, variant)
                        .unwrap_or_else(|e| panic!("{what} accumulate: {e}"));
                    let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
                    let bound2: Vec<f64> = bound.iter().map(|v| 2.0 * v).collect();
                    assert_within(&format!("{what} C+="), &read(&sum), &twice, &bound2);
                    assert_eq!(c.shape(), &[m, outer]);
                }
            }
        }
    }
}

#[test]
fn block_weights_refuse_what_they_cannot_be() {
    let dev = device();
    // A row that is not whole blocks.
    let err = Tensor::from_blocks(&dev, DType::Q4K, &[0; 144], &[2, 128]).unwrap_err();
    assert!(err.to_string().contains("blocks of 256"), "{err}");
    // The wrong byte count names both counts.
    let err = Tensor::from_blocks(&dev, DType::Q8_0, &[0; 30], &[1, 32]).unwrap_err();
    assert!(
        err.to_string().contains("30 bytes given, 34 needed"),
        "{err}"
    );
    // A block weight is a matmul's second operand only.
    // 127 in every value: the scale d = 127 / 127 = 1 is exact in f16.
    let w = Tensor::from_f32_as(&dev, &[127.0; 64], &[2, 32], DType::Q8_0).unwrap();
    let x = tensor(&[1.0; 64], &[2, 32]);
    assert!(matches!(
        hydralora_engine::matmul_t(&w, &x, false, true),
        Err(Error::DType { .. })
    ));
    assert!(matches!(w.add(&x), Err(Error::DType { .. })));
    // And it reads back as the values it stores.
    assert_eq!(w.to_vec_dequantized().unwrap(), vec![127.0; 64]);
}
