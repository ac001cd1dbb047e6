// The weight slot of the matmul kernels, for B stored as f32.
//
// Every matmul kernel reads B (the second operand; in a model, a weight) only through a
// weight piece, and a variant picks the piece for B's storage format. A weight piece:
// - declares `@group(0) @binding(2) var<storage, read> b`, in whatever element type suits
//   the format;
// - gives `load_b(i) -> f32`: element i of B, counted in elements (MatmulParams' strides
//   are in elements whatever the format), widened or dequantized to f32;
// - gives `load_b4(i) -> vec4<f32>`: elements i .. i + 3, for i % 4 == 0. These are four
//   consecutive elements along B's contiguous dim (the subgroup kernel's vec4 loads; the
//   host only runs it where B's contiguous dim and its other strides are multiples of 4),
//   so a block format (blocks of 32 along the contiguous dim) serves them from one block.

@group(0) @binding(2) var<storage, read> b: array<f32>; // B

fn load_b(i: u32) -> f32 {
    return b[i];
}

fn load_b4(i: u32) -> vec4<f32> {
    return vec4(b[i], b[i + 1u], b[i + 2u], b[i + 3u]);
}
