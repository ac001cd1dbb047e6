// The weight slot of the matmul kernels (contract: lib/weights_f32.wgsl), for B in GGUF's
// q4_K super-blocks (engine/src/quant.rs): 256 values in 144 bytes, f16 d and dmin, 12
// bytes of 6-bit (scale, min) for the 8 sub-blocks of 32, then 128 bytes of nibbles (in
// each 64 values, bytes 32c .. 32c + 31: low nibbles the first 32, high the next);
// value = d sc q - dmin m. Byte access: lib/block_bytes.wgsl.

@group(0) @binding(2) var<storage, read> b: array<u32>; // B's blocks, as bytes

// Sub-block j's (d sc, dmin m) in the block at byte o.
fn q4_k_step_offset(o: u32, j: u32) -> vec2<f32> {
    let s = o + 4u;
    var sc: u32;
    var m: u32;
    if (j < 4u) {
        sc = byte_at(s + j) & 63u;
        m = byte_at(s + j + 4u) & 63u;
    } else {
        sc = (byte_at(s + j + 4u) & 15u) | ((byte_at(s + j - 4u) >> 6u) << 4u);
        m = (byte_at(s + j + 4u) >> 4u) | ((byte_at(s + j) >> 6u) << 4u);
    }
    return vec2(half_at(o) * f32(sc), half_at(o + 2u) * f32(m));
}

fn load_b(i: u32) -> f32 {
    let o = (i >> 8u) * 144u;
    let e = i & 255u;
    let high = (e >> 5u) & 1u; // the second 32 of each 64: high nibbles
    let q = (byte_at(o + 16u + 32u * (e >> 6u) + (e & 31u)) >> (4u * high)) & 15u;
    let so = q4_k_step_offset(o, e >> 5u);
    return so.x * f32(q) - so.y;
}

// i % 4 == 0: four values of one sub-block.
fn load_b4(i: u32) -> vec4<f32> {
    let o = (i >> 8u) * 144u;
    let e = i & 255u;
    let high = (e >> 5u) & 1u;
    let q = nibbles4(bytes4_at(o + 16u + 32u * (e >> 6u) + (e & 31u)) >> (4u * high));
    let so = q4_k_step_offset(o, e >> 5u);
    return so.x * q - so.y;
}
