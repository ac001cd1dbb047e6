// Shared-memory tiled matmul for GPUs (`MatmulKernel::Tiled`): a workgroup of 16x16
// invocations computes a 64x64 tile of C, each invocation a 4x4 block. K is walked 16 at a
// time: the workgroup stages a 64x16 slice of A and a 16x64 slice of B in workgroup memory
// (each element read from global memory once per tile, loads coalesced along whichever dim
// of the operand is contiguous), then each invocation runs 16 rank-1 updates with one
// vec4 of A and one vec4 of B from workgroup memory per update (16 multiply-adds per two
// loads; neighbouring invocations read neighbouring vec4s or the same one).
//
// Any strides, any shape (edges are zero-padded in workgroup memory). On real GPUs this
// beats the barrier-free kernels; on a CPU driver (lavapipe) the two barriers per k step
// are coroutine switches and it is slower, so the host does not pick it there.
// Composed with lib/matmul_params, lib/matmul_scalar and a weight piece (lib/weights_*).

const TILE: u32 = 64u;
const BK: u32 = 16u;

// [BK][TILE / 4]: a_tile[kk * 16 + r / 4][r % 4] is A at row r, k offset kk of the slice.
var<workgroup> a_tile: array<vec4<f32>, 256>;
// [BK][TILE / 4]: b_tile[kk * 16 + c / 4][c % 4] is B at k offset kk, column c.
var<workgroup> b_tile: array<vec4<f32>, 256>;

@compute @workgroup_size(16, 16)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let s = slice_of(wid.z);
    let a_k_fast = p.a_col == 1u;
    let b_n_fast = p.b_col == 1u;

    // This invocation's outputs: rows 4 ly .. 4 ly + 3, columns 4 lx .. 4 lx + 3.
    var acc: array<vec4<f32>, 4>;
    for (var k0 = s.k_begin; k0 < s.k_end; k0 += BK) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + 256u * i;
            // A: row r (of 64), k offset kk (of 16)
            let ar = select(e % TILE, e / BK, a_k_fast);
            let ak = select(e / TILE, e % BK, a_k_fast);
            a_tile[ak * 16u + ar / 4u][ar % 4u] = a_or_zero(s, row0 + ar, k0 + ak);
            // B: k offset kk (of 16), column cc (of 64)
            let bc = select(e / BK, e % TILE, b_n_fast);
            let bk = select(e % BK, e / TILE, b_n_fast);
            b_tile[bk * 16u + bc / 4u][bc % 4u] = b_or_zero(s, k0 + bk, col0 + bc);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let av = a_tile[kk * 16u + lid.y];
            let bv = b_tile[kk * 16u + lid.x];
            acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
            acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
            acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
            acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
        }
        workgroupBarrier();
    }
    store_block(wid.z, row0 + 4u * lid.y, col0 + 4u * lid.x, acc);
}
