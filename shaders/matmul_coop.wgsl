// Cooperative-matrix matmul (`MatmulKernel::CoopF16x16`, `CoopF32x8`): the multiply-adds
// run on the matrix units (tensor cores, simdgroup matrices) through `coopMultiplyAdd`.
// A workgroup is one subgroup of 32 lanes (the host runs it only where every subgroup is
// 32 wide) and computes a TILE x TILE tile of C as 2x2 fragments of FRAG x FRAG, the
// fragment shape coming from a lib/coop_* piece. K is walked BK at a time: the lanes stage
// a TILE x BK slice of A and a BK x TILE slice of B in workgroup memory, converted to
// CoopIn (f16 for the f16 shape: activations and weights are rounded to f16 there, the
// sums stay f32), edges zero-padded, so any shape and strides run; the fragments are then
// loaded from workgroup memory. C goes through workgroup memory too, so that the edges,
// alpha and ACCUMULATE are handled per element as in the other kernels.
// Composed with lib/matmul_params, lib/matmul_scalar (A and C), a weight piece
// (lib/weights_*) and a fragment piece (lib/coop_*).

const TILE: u32 = 2u * FRAG;
const BK: u32 = 2u * FRAG;
const LANES: u32 = 32u;

// [TILE][BK]: A at row r, k offset kk of the slice is a_tile[r * BK + kk].
var<workgroup> a_tile: array<CoopIn, TILE * BK>;
// [BK][TILE]: B at k offset kk, column c is b_tile[kk * TILE + c].
var<workgroup> b_tile: array<CoopIn, BK * TILE>;
// [TILE][TILE]: the workgroup's tile of C, row-major.
var<workgroup> c_tile: array<f32, TILE * TILE>;

@compute @workgroup_size(32)
fn matmul_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let s = slice_of(wid.z);
    // Consecutive lanes walk each operand's contiguous dim, so global loads coalesce.
    let a_k_fast = p.a_col == 1u;
    let b_n_fast = p.b_col == 1u;
    // Strides and offsets as lets of their own (naga's SPIR-V back end wants them so).
    let a_stride = BK;
    let b_stride = TILE;
    let c_stride = TILE;
    let second = FRAG;

    var c00 = FragC();
    var c01 = FragC();
    var c10 = FragC();
    var c11 = FragC();
    for (var k0 = s.k_begin; k0 < s.k_end; k0 += BK) {
        for (var e = lane; e < TILE * BK; e += LANES) {
            // A: row ar (of TILE), k offset ak (of BK)
            let ar = select(e % TILE, e / BK, a_k_fast);
            let ak = select(e / TILE, e % BK, a_k_fast);
            a_tile[ar * BK + ak] = CoopIn(a_or_zero(s, row0 + ar, k0 + ak));
            // B: k offset bk (of BK), column bc (of TILE)
            let bc = select(e / BK, e % TILE, b_n_fast);
            let bk = select(e % BK, e / TILE, b_n_fast);
            b_tile[bk * TILE + bc] = CoopIn(b_or_zero(s, k0 + bk, col0 + bc));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += FRAG) {
            let a_top = kk;
            let a_bottom = second * BK + kk;
            let b_left = kk * TILE;
            let b_right = kk * TILE + second;
            let a0 = coopLoadT<FragA>(&a_tile[a_top], a_stride);
            let a1 = coopLoadT<FragA>(&a_tile[a_bottom], a_stride);
            let b0 = coopLoadT<FragB>(&b_tile[b_left], b_stride);
            let b1 = coopLoadT<FragB>(&b_tile[b_right], b_stride);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        workgroupBarrier();
    }
    let top_left = 0u;
    let top_right = second;
    let bottom_left = second * TILE;
    let bottom_right = second * TILE + second;
    coopStoreT(c00, &c_tile[top_left], c_stride);
    coopStoreT(c01, &c_tile[top_right], c_stride);
    coopStoreT(c10, &c_tile[bottom_left], c_stride);
    coopStoreT(c11, &c_tile[bottom_right], c_stride);
    workgroupBarrier();
    let c_base = wid.z * p.c_batch;
    for (var e = lane; e < TILE * TILE; e += LANES) {
        let row = row0 + e / TILE;
        let col = col0 + e % TILE;
        if row < p.m && col < p.n {
            let at = c_base + row * p.c_row + col * p.c_col;
            let v = p.alpha * c_tile[e];
            if ACCUMULATE {
                c[at] += v;
            } else {
                c[at] = v;
            }
        }
    }
}
