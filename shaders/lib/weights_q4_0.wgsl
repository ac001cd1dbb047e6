// The weight slot of the matmul kernels (contract: lib/weights_f32.wgsl), for B in GGUF's
// q4_0 blocks (engine/src/quant.rs): 32 values in 18 bytes, an f16 scale d then 16 bytes
// whose low nibbles are values 0 .. 15 and high nibbles 16 .. 31, value = d (q - 8).
// Byte access: lib/block_bytes.wgsl.

@group(0) @binding(2) var<storage, read> b: array<u32>; // B's blocks, as bytes

fn load_b(i: u32) -> f32 {
    let o = (i >> 5u) * 18u;
    let j = i & 31u;
    let q = (byte_at(o + 2u + (j & 15u)) >> ((j >> 4u) * 4u)) & 15u;
    return half_at(o) * (f32(q) - 8.0);
}

// i % 4 == 0: four values of one block, in one half (low or high nibbles).
fn load_b4(i: u32) -> vec4<f32> {
    let o = (i >> 5u) * 18u;
    let j = i & 31u;
    let q = nibbles4(bytes4_at(o + 2u + (j & 15u)) >> ((j >> 4u) * 4u));
    return half_at(o) * (q - 8.0);
}
