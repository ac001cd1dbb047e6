// Batched matmul C[b] = A[b] B[b] with arbitrary strides, so transposed and broadcast
// operands need no copy. Each invocation computes a 4x4 block of C in registers; a
// workgroup of 8x8 invocations covers a 32x32 tile. No workgroup memory, no barrier, any
// shape, any device: the fallback of `engine/src/ops/matmul.rs` (`MatmulKernel::General`).
// `wid.z` is batch * splits + split: with split-K each split sums its k range into its own
// slice of `c`, and `matmul_splitk.wgsl` adds the slices in a fixed order.

// ACCUMULATE, a constant each variant declares (engine/src/shaders.rs): C += the
// result (C holds a sum so far, e.g. a gradient) instead of C = it.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    a_batch: u32, // stride of A between batches (0: A is shared by all batches)
    a_row: u32,   // stride of A between rows m
    a_col: u32,   // stride of A between columns k
    b_batch: u32,
    b_row: u32,   // stride of B between rows k
    b_col: u32,   // stride of B between columns n
    c_batch: u32, // stride of C between slices (batch * splits + split)
    c_row: u32,
    c_col: u32,
    splits: u32,  // k splits per batch (1: none)
    k_chunk: u32, // k per split
    group: u32,   // unused here (tile order of the subgroup kernel)
    alpha: f32,   // C = alpha * the product (the bits of an f32)
}

@group(0) @binding(0) var<storage, read> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(8, 8)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.m || col0 >= p.n { return; }
    let split = gid.z % p.splits;
    let batch = gid.z / p.splits;
    let k0 = split * p.k_chunk;
    let k1 = min(k0 + p.k_chunk, p.k);
    // Rows and columns past the edge are clamped for loading and never stored.
    var a_base: array<u32, 4>;
    var b_off: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        a_base[i] = batch * p.a_batch + min(row0 + i, p.m - 1u) * p.a_row;
        b_off[i] = batch * p.b_batch + min(col0 + i, p.n - 1u) * p.b_col;
    }
    var acc: array<vec4<f32>, 4>;
    for (var kk = k0; kk < k1; kk++) {
        let bk = kk * p.b_row;
        let bv = vec4<f32>(b[b_off[0] + bk], b[b_off[1] + bk], b[b_off[2] + bk], b[b_off[3] + bk]);
        let ak = kk * p.a_col;
        acc[0] += a[a_base[0] + ak] * bv;
        acc[1] += a[a_base[1] + ak] * bv;
        acc[2] += a[a_base[2] + ak] * bv;
        acc[3] += a[a_base[3] + ak] * bv;
    }
    let c_base = gid.z * p.c_batch;
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + i;
        if r < p.m {
            for (var j = 0u; j < 4u; j++) {
                if col0 + j < p.n {
                    let at = c_base + r * p.c_row + (col0 + j) * p.c_col;
                    if ACCUMULATE {
                        c[at] += p.alpha * acc[i][j];
                    } else {
                        c[at] = p.alpha * acc[i][j];
                    }
                }
            }
        }
    }
}
