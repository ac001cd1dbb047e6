// The weight slot of the matmul kernels (contract: lib/weights_f32.wgsl), for B in GGUF's
// q6_K super-blocks (engine/src/quant.rs): 256 values in 210 bytes: 128 bytes of low
// nibbles, 64 of 2-bit high pairs, 16 signed 8-bit scales (one per 16 values), an f16 d;
// value = d sc (q - 32). Value e sits in half h = e / 128, quarter c = (e % 128) / 32,
// lane l = e % 32: low nibble in byte 64h + l + 32 (c & 1) (high nibble when c >= 2),
// high pair in byte 128 + 32h + l at bit 2c, scale 8h + l / 16 + 2c.
// Byte access: lib/block_bytes.wgsl.

@group(0) @binding(2) var<storage, read> b: array<u32>; // B's blocks, as bytes

// (low-nibble byte, its shift, high-pair byte, its shift) of value e in the block at o,
// and the step d sc.
struct Q6kPlace {
    lo: u32,
    lo_shift: u32,
    hi: u32,
    hi_shift: u32,
    step: f32,
}

fn q6_k_place(o: u32, e: u32) -> Q6kPlace {
    let h = e >> 7u;
    let c = (e >> 5u) & 3u;
    let l = e & 31u;
    let step = half_at(o + 208u) * f32(signed_byte_at(o + 192u + 8u * h + (l >> 4u) + 2u * c));
    return Q6kPlace(o + 64u * h + l + 32u * (c & 1u), 4u * (c >> 1u), o + 128u + 32u * h + l, 2u * c, step);
}

fn load_b(i: u32) -> f32 {
    let p = q6_k_place((i >> 8u) * 210u, i & 255u);
    let q = ((byte_at(p.lo) >> p.lo_shift) & 15u) | (((byte_at(p.hi) >> p.hi_shift) & 3u) << 4u);
    return p.step * (f32(q) - 32.0);
}

// i % 4 == 0: four values with one scale, their bytes side by side.
fn load_b4(i: u32) -> vec4<f32> {
    let p = q6_k_place((i >> 8u) * 210u, i & 255u);
    let lo = nibbles4(bytes4_at(p.lo) >> p.lo_shift);
    let hi = vec4<f32>((vec4(bytes4_at(p.hi)) >> (vec4(0u, 8u, 16u, 24u) + p.hi_shift)) & vec4(3u));
    return p.step * (lo + 16.0 * hi - 32.0);
}
