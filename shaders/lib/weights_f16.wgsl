// The weight slot of the matmul kernels (contract: lib/weights_f32.wgsl), for B stored as
// f16, two halves per 32-bit word (`pack2x16float`, as `Tensor::to_f16` writes them),
// widened to f32 exactly as they are loaded; the kernels accumulate in f32.

@group(0) @binding(2) var<storage, read> b: array<u32>; // B, 2 halves a word

fn load_b(i: u32) -> f32 {
    return unpack2x16float(b[i >> 1u])[i & 1u];
}

// i % 4 == 0: the two words of elements i .. i + 3.
fn load_b4(i: u32) -> vec4<f32> {
    let w = i >> 1u;
    return vec4(unpack2x16float(b[w]), unpack2x16float(b[w + 1u]));
}
