// Batched matmul C[b] = A[b] B[b] with arbitrary strides, so transposed and broadcast
// operands need no copy. Each invocation computes a 4x4 block of C in registers; a
// workgroup of 8x8 invocations covers a 32x32 tile. No workgroup memory, no barrier, any
// shape, any device: the fallback of `engine/src/ops/matmul.rs` (`MatmulKernel::General`).
// Composed with lib/matmul_params, lib/matmul_scalar and a weight piece (lib/weights_*).

@compute @workgroup_size(8, 8)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.m || col0 >= p.n { return; }
    let s = slice_of(gid.z);
    // Rows and columns past the edge are clamped for loading and never stored.
    var a_base: array<u32, 4>;
    var b_off: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        a_base[i] = s.a_base + min(row0 + i, p.m - 1u) * p.a_row;
        b_off[i] = s.b_base + min(col0 + i, p.n - 1u) * p.b_col;
    }
    var acc: array<vec4<f32>, 4>;
    for (var kk = s.k_begin; kk < s.k_end; kk++) {
        let bk = kk * p.b_row;
        let bv = vec4(load_b(b_off[0] + bk), load_b(b_off[1] + bk), load_b(b_off[2] + bk), load_b(b_off[3] + bk));
        let ak = kk * p.a_col;
        acc[0] += a[a_base[0] + ak] * bv;
        acc[1] += a[a_base[1] + ak] * bv;
        acc[2] += a[a_base[2] + ak] * bv;
        acc[3] += a[a_base[3] + ak] * bv;
    }
    store_block(gid.z, row0, col0, acc);
}
