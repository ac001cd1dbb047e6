// The weight slot (see lib/weights_f32) for B stored as f32, read as whole vec4s: the
// subgroup kernel's f32 piece. Its host keeps every vec4 of B whole (B's contiguous dim and
// its other strides are multiples of 4), so `load_b4` is one bounds-checked vec4 load where
// lib/weights_f32 makes four scalar ones: llvmpipe scalarises each load with its own check,
// and the four cost the kernel 3-7%.

@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>; // B, 4 elements a vec4

fn load_b(i: u32) -> f32 {
    return b[i / 4u][i % 4u];
}

fn load_b4(i: u32) -> vec4<f32> {
    return b[i / 4u];
}
