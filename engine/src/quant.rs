//! Frozen-weight storage formats on the host: GGUF's own block layouts (`q8_0`, `q4_0`,
//! `q4_K`, `q6_K`) and the 16-bit floats, byte for byte as a GGUF file (or a safetensors
//! checkpoint, for bf16) stores them, so a file's tensor data uploads as it is and the
//! matmul kernels' weight pieces (`shaders/lib/weights_*.wgsl`) decode the same bytes.
//!
//! A block format cuts each row of a weight into blocks of [`DType::block_elements`]
//! values along its contiguous (last) dim, each stored in [`DType::block_bytes`] bytes:
//!
//! | format | values | bytes | a block, in order | value |
//! |---|---|---|---|---|
//! | q8_0 | 32 | 34 | d: f16, q: 32 × i8 | d q |
//! | q4_0 | 32 | 18 | d: f16, 16 bytes: value j in the low nibble of byte j, j + 16 in the high | d (q − 8) |
//! | q4_K | 256 | 144 | d, dmin: f16, 12 bytes of 6-bit (scale, min) per 32 values, 128 bytes of nibbles | d·sc q − dmin·m |
//! | q6_K | 256 | 210 | 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 × i8 scales (one per 16 values), d: f16 | d·sc (q − 32) |
//!
//! [`quantize`] writes q8_0 and q4_0 exactly as llama.cpp's reference quantizer does
//! (round half away from zero; the block's largest-magnitude value sets the scale). For
//! the K-quants it uses a direct min/max fit without llama.cpp's iterative scale search;
//! `engine/tests/quant.rs` measures its error against llama.cpp's own q4_K and q6_K of the
//! same weights.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::tensor::DType;

/// Values per K-quant super-block.
const QK_K: usize = 256;

/// Checks that `bytes` holds exactly `numel` values of `dtype`, whole blocks.
fn expect_length(op: &'static str, dtype: DType, numel: usize, bytes: usize) -> Result<()> {
    let per_block = dtype.block_elements();
    if numel % per_block != 0 {
        return Err(Error::InvalidArgument {
            op,
            shape: vec![numel],
            why: format!("{dtype:?} stores values in blocks of {per_block}"),
        });
    }
    let want = dtype.storage_bytes(numel);
    if bytes as u64 != want {
        return Err(Error::InvalidArgument {
            op,
            shape: vec![numel],
            why: format!("{numel} values of {dtype:?} take {want} bytes, not {bytes}"),
        });
    }
    Ok(())
}

/// `data` (row-major, rows of `row_len` values) stored as `dtype`: f32, f16, bf16 or a
/// block format. A block format needs `row_len` to be a multiple of its block.
pub fn quantize(dtype: DType, data: &[f32], row_len: usize) -> Result<Vec<u8>> {
    let per_block = dtype.block_elements();
    if per_block > 1 && (row_len % per_block != 0 || data.len() % row_len.max(1) != 0) {
        return Err(Error::InvalidArgument {
            op: "quantize",
            shape: vec![data.len() / row_len.max(1), row_len],
            why: format!("{dtype:?} needs rows of a multiple of {per_block} values"),
        });
    }
    Ok(match dtype {
        DType::F32 => bytemuck::cast_slice(data).to_vec(),
        DType::F16 => data
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        DType::BF16 => data
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect(),
        DType::Q8_0 => data.chunks_exact(32).flat_map(quantize_q8_0).collect(),
        DType::Q4_0 => data.chunks_exact(32).flat_map(quantize_q4_0).collect(),
        DType::Q4K => data.chunks_exact(QK_K).flat_map(quantize_q4_k).collect(),
        DType::Q6K => data.chunks_exact(QK_K).flat_map(quantize_q6_k).collect(),
        DType::U32 | DType::I32 => {
            return Err(Error::InvalidArgument {
                op: "quantize",
                shape: vec![data.len()],
                why: format!("{dtype:?} is not a float format"),
            })
        }
    })
}

/// The `numel` values that `bytes` stores as `dtype` (a float format), widened to f32.
pub fn dequantize(dtype: DType, bytes: &[u8], numel: usize) -> Result<Vec<f32>> {
    expect_length("dequantize", dtype, numel, bytes.len())?;
    let per_block = dtype.block_bytes();
    Ok(match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::Q8_0 => blocks(bytes, per_block, dequantize_q8_0),
        DType::Q4_0 => blocks(bytes, per_block, dequantize_q4_0),
        DType::Q4K => blocks(bytes, per_block, dequantize_q4_k),
        DType::Q6K => blocks(bytes, per_block, dequantize_q6_k),
        DType::U32 | DType::I32 => {
            return Err(Error::InvalidArgument {
                op: "dequantize",
                shape: vec![numel],
                why: format!("{dtype:?} is not a float format"),
            })
        }
    })
}

fn blocks(bytes: &[u8], size: usize, decode: impl Fn(&[u8], &mut Vec<f32>)) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / size);
    for block in bytes.chunks_exact(size) {
        decode(block, &mut out);
    }
    out
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// 1 / d, or 0 for an all-zero block.
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// The first value of largest magnitude, with its sign.
fn signed_max(x: &[f32]) -> f32 {
    x.iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

// ---- q8_0: d (f16), 32 × i8 ----

fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
    out
}

fn dequantize_q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
}

// ---- q4_0: d (f16), 16 bytes of nibbles ----

fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let d = signed_max(x) / -8.0;
    let id = inverse(d);
    let q = |v: f32| (v * id + 8.5).trunc().clamp(0.0, 15.0) as u8;
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
    out
}

fn dequantize_q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 15) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

// ---- q4_K: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles ----

/// Sub-block j's (scale, min), 6 bits each, from the 12 packed bytes.
fn q4_k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn quantize_q4_k(x: &[f32]) -> Vec<u8> {
    // Each sub-block of 32 spans [lo, hi] with lo <= 0: value = scale q - min, q in 0..15.
    let fits: Vec<(f32, f32)> = x
        .chunks_exact(32)
        .map(|s| {
            let lo = s.iter().fold(0.0f32, |m, &v| m.min(v));
            let hi = s.iter().fold(lo, |m, &v| m.max(v));
            ((hi - lo) / 15.0, -lo)
        })
        .collect();
    let d = f16::from_f32(fits.iter().fold(0.0f32, |m, f| m.max(f.0)) / 63.0);
    let dmin = f16::from_f32(fits.iter().fold(0.0f32, |m, f| m.max(f.1)) / 63.0);
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let six_bits = |v: f32, unit: f32| (v * inverse(unit)).round().clamp(0.0, 63.0) as u8;
    let sc: Vec<u8> = fits.iter().map(|f| six_bits(f.0, df)).collect();
    let m: Vec<u8> = fits.iter().map(|f| six_bits(f.1, dminf)).collect();
    let mut scales = [0u8; 12];
    for j in 0..4 {
        scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        scales[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        scales[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    let q = |i: usize| {
        let j = i / 32;
        let step = df * sc[j] as f32;
        ((x[i] + dminf * m[j] as f32) * inverse(step))
            .round()
            .clamp(0.0, 15.0) as u8
    };
    let mut out = Vec::with_capacity(144);
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    out.extend(scales);
    for chunk in 0..4 {
        let base = 64 * chunk;
        out.extend((0..32).map(|l| q(base + l) | (q(base + 32 + l) << 4)));
    }
    out
}

fn dequantize_q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..16];
    for chunk in 0..4 {
        let qs = &b[16 + 32 * chunk..16 + 32 * (chunk + 1)];
        for (half, shift) in [(0, 0), (1, 4)] {
            let (sc, m) = q4_k_scale_min(scales, 2 * chunk + half);
            let (step, offset) = (d * sc as f32, dmin * m as f32);
            out.extend(
                qs.iter()
                    .map(|&q| step * ((q >> shift) & 15) as f32 - offset),
            );
        }
    }
}

// ---- q6_K: 128 bytes of low nibbles, 64 of 2-bit highs, 16 × i8 scales, d (f16) ----

/// Where value e (0..256) of a q6_K block keeps its bits: (low-nibble byte, its shift,
/// high-pair byte, its shift, scale index).
fn q6_k_place(e: usize) -> (usize, u32, usize, u32, usize) {
    let (half, r) = (e / 128, e % 128);
    let (quarter, l) = (r / 32, r % 32);
    (
        64 * half + l + 32 * (quarter & 1),
        4 * (quarter as u32 / 2),
        128 + 32 * half + l,
        2 * quarter as u32,
        8 * half + l / 16 + 2 * quarter,
    )
}

fn quantize_q6_k(x: &[f32]) -> Vec<u8> {
    // Each sub-block of 16: its largest-magnitude value maps to q = -32.
    let scales: Vec<f32> = x.chunks_exact(16).map(|s| signed_max(s) / -32.0).collect();
    let max_scale = signed_max(&scales);
    let iscale = if max_scale == 0.0 {
        0.0
    } else {
        -128.0 / max_scale
    };
    let d = f16::from_f32(inverse(iscale));
    let df = d.to_f32();
    let sc: Vec<i8> = scales
        .iter()
        .map(|&s| (iscale * s).round().clamp(-128.0, 127.0) as i8)
        .collect();
    let mut out = vec![0u8; 210];
    for (e, &v) in x.iter().enumerate() {
        let (lo, lo_shift, hi, hi_shift, s) = q6_k_place(e);
        let step = df * sc[s] as f32;
        let q = ((v * inverse(step)).round().clamp(-32.0, 31.0) as i32 + 32) as u8;
        out[lo] |= (q & 15) << lo_shift;
        out[hi] |= (q >> 4) << hi_shift;
    }
    for (j, &s) in sc.iter().enumerate() {
        out[192 + j] = s as u8;
    }
    out[208..210].copy_from_slice(&d.to_le_bytes());
    out
}

fn dequantize_q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 208);
    out.extend((0..QK_K).map(|e| {
        let (lo, lo_shift, hi, hi_shift, s) = q6_k_place(e);
        let q = ((b[lo] >> lo_shift) & 15) | (((b[hi] >> hi_shift) & 3) << 4);
        d * (b[192 + s] as i8) as f32 * (q as i32 - 32) as f32
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of values, some blocks all zero.
    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                if (i / 256) % 5 == 4 {
                    0.0
                } else {
                    ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32)
                }
            })
            .collect()
    }

    #[test]
    fn every_format_round_trips_within_its_step() {
        let x = values(4 * 512);
        for dtype in [
            DType::BF16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4K,
            DType::Q6K,
        ] {
            let bytes = quantize(dtype, &x, 512).unwrap();
            assert_eq!(
                bytes.len() as u64,
                dtype.storage_bytes(x.len()),
                "{dtype:?}"
            );
            let y = dequantize(dtype, &bytes, x.len()).unwrap();
            // Worst error as a fraction of each block's largest magnitude.
            let block = dtype.block_elements().max(32);
            let worst = x
                .chunks(block)
                .zip(y.chunks(block))
                .map(|(a, b)| {
                    let amax = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
                    a.iter()
                        .zip(b)
                        .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()))
                        / amax
                })
                .fold(0.0f32, f32::max);
            let bound = match dtype {
                DType::BF16 => 1.0 / 256.0,
                DType::Q8_0 => 0.5 / 127.0 + 1e-3,
                // Values of the opposite sign to the block's extreme clip at q = 15: a whole step.
                DType::Q4_0 => 1.0 / 8.0 + 1e-3,
                DType::Q4K => 0.2,
                DType::Q6K => 0.05,
                _ => unreachable!(),
            };
            assert!(worst <= bound, "{dtype:?}: worst relative error {worst}");
        }
    }

    #[test]
    fn a_block_format_refuses_rows_that_are_not_whole_blocks() {
        let err = quantize(DType::Q4K, &values(2 * 128), 128).unwrap_err();
        assert!(err.to_string().contains("blocks") || err.to_string().contains("multiple"));
        let err = dequantize(DType::Q8_0, &[0; 33], 32).unwrap_err();
        assert!(err.to_string().contains("34 bytes"), "{err}");
    }
}
