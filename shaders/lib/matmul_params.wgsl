// The params block of every matmul kernel (general, tiled, subgroup), binding 0. Mirrored
// field for field by `MatmulParams` in engine/src/ops/matmul.rs.
//
// Strides are in elements of their operand, whatever its storage format (an f16 B counts
// halves, not words). `wid.z` (or `gid.z`) is batch * splits + split: with split-K each
// split sums its k range into its own slice of `c`, and `matmul_splitk.wgsl` adds the
// slices in a fixed order.
//
// ACCUMULATE, a constant each variant declares (engine/src/shaders.rs): C += the result
// (C holds a sum so far, e.g. a gradient) instead of C = it. A compile-time constant: a
// run-time flag made the subgroup kernel 1.5x slower.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    a_batch: u32, // strides of A: between batches (0: A is shared by all batches),
    a_row: u32,   // between rows m,
    a_col: u32,   // between columns k
    b_batch: u32, // strides of B: between batches, rows k, columns n
    b_row: u32,
    b_col: u32,
    c_batch: u32, // strides of C: between slices (batch * splits + split), rows m, columns n
    c_row: u32,
    c_col: u32,
    splits: u32,  // k splits per batch (1: none)
    k_chunk: u32, // k per split (a multiple of 4 for the subgroup kernel)
    group: u32,   // tile order of the subgroup kernel (row blocks per group); unused by others
    alpha: f32,   // C = alpha * the product
}

@group(0) @binding(0) var<storage, read> p: MatmulParams;

// What slice z (= batch * splits + split: `wid.z` or `gid.z`) of the product covers: its k
// range and where its batch's A and B start, in elements.
struct Slice {
    k_begin: u32,
    k_end: u32,
    a_base: u32,
    b_base: u32,
}

fn slice_of(z: u32) -> Slice {
    let split = z % p.splits;
    let batch = z / p.splits;
    let k_begin = split * p.k_chunk;
    return Slice(k_begin, min(k_begin + p.k_chunk, p.k), batch * p.a_batch, batch * p.b_batch);
}
