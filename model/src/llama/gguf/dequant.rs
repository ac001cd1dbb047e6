//! ggml's block layouts dequantized on the host, as ggml's `dequantize_row_*` does (f32
//! arithmetic in the same order, so the values are ggml's bit for bit).
//!
//! Each function takes whole blocks (the caller checks the length) and appends `block_len`
//! values per block to `out`.

use half::f16;

/// An f16 at `bytes[at..at + 2]`, as f32.
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Q8_0, 34 bytes per 32 values: scale d (f16), then 32 i8; value = q d.
pub fn q8_0(blocks: &[u8], out: &mut Vec<f32>) {
    for block in blocks.chunks_exact(34) {
        let d = f16_at(block, 0);
        out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
    }
}

/// Q4_0, 18 bytes per 32 values: scale d (f16), then 16 bytes whose low nibbles are values
/// 0..16 and high nibbles 16..32; value = (q - 8) d.
pub fn q4_0(blocks: &[u8], out: &mut Vec<f32>) {
    for block in blocks.chunks_exact(18) {
        let d = f16_at(block, 0);
        let qs = &block[2..];
        out.extend(qs.iter().map(|&q| f32::from((q & 0xF) as i8 - 8) * d));
        out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K block's 12 scale bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K, 144 bytes per 256 values: d and dmin (f16), 12 bytes of eight 6-bit scales and
/// mins, 128 bytes of nibbles. Sub-block `i` of 32 values: `d sc_i q - dmin m_i`; each 32
/// bytes hold two sub-blocks, low nibbles first.
pub fn q4_k(blocks: &[u8], out: &mut Vec<f32>) {
    for block in blocks.chunks_exact(144) {
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        let scales = &block[4..16];
        for (pair, qs) in block[16..].chunks_exact(32).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * pair, scales);
            let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
            let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
            out.extend(qs.iter().map(|&q| d1 * f32::from(q & 0xF) - min1));
            out.extend(qs.iter().map(|&q| d2 * f32::from(q >> 4) - min2));
        }
    }
}

/// Q6_K, 210 bytes per 256 values: 128 bytes of low nibbles (ql), 64 of high 2-bit pairs (qh),
/// 16 i8 scales, d (f16). Value = d scale (q - 32) with q 6 bits; each half of 128 values
/// takes 64 ql bytes, 32 qh bytes and 8 scales (one per 16 values).
pub fn q6_k(blocks: &[u8], out: &mut Vec<f32>) {
    for block in blocks.chunks_exact(210) {
        let d = f16_at(block, 208);
        for half in 0..2 {
            let ql = &block[64 * half..64 * half + 64];
            let qh = &block[128 + 32 * half..128 + 32 * half + 32];
            let sc = &block[192 + 8 * half..192 + 8 * half + 8];
            let mut values = [0f32; 128];
            for l in 0..32 {
                let is = l / 16;
                let q = [
                    (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (k, &q) in q.iter().enumerate() {
                    let scale = f32::from(sc[is + 2 * k] as i8);
                    values[l + 32 * k] = d * scale * f32::from(q as i8 - 32);
                }
            }
            out.extend_from_slice(&values);
        }
    }
}
