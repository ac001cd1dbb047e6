// The weight slot of the matmul kernels (contract: lib/weights_f32.wgsl), for B in GGUF's
// q8_0 blocks (engine/src/quant.rs): 32 values in 34 bytes, an f16 scale d then 32 signed
// bytes q, value = d q. Byte access: lib/block_bytes.wgsl.

@group(0) @binding(2) var<storage, read> b: array<u32>; // B's blocks, as bytes

fn load_b(i: u32) -> f32 {
    let o = (i >> 5u) * 34u;
    return half_at(o) * f32(signed_byte_at(o + 2u + (i & 31u)));
}

// i % 4 == 0: four values of one block.
fn load_b4(i: u32) -> vec4<f32> {
    let o = (i >> 5u) * 34u;
    return signed_bytes4(bytes4_at(o + 2u + (i & 31u))) * half_at(o);
}
