// The weight slot of the matmul kernels (contract: lib/weights_f32.wgsl), for B stored as
// bf16, two per 32-bit word (element 2w in the low half of word w, as a checkpoint's bytes
// are laid out). A bf16 is the top half of an f32, so widening is a shift: exact, and no
// SHADER_F16 needed.

@group(0) @binding(2) var<storage, read> b: array<u32>; // B, 2 bf16 a word

fn load_b(i: u32) -> f32 {
    let w = b[i >> 1u];
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));
}

// i % 4 == 0: the two words of elements i .. i + 3.
fn load_b4(i: u32) -> vec4<f32> {
    let w0 = b[i >> 1u];
    let w1 = b[(i >> 1u) + 1u];
    return bitcast<vec4<f32>>(vec4(w0 << 16u, w0 & 0xffff0000u, w1 << 16u, w1 & 0xffff0000u));
}
