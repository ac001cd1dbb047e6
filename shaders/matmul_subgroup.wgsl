// Register-blocked matmul for CPU Vulkan drivers (lavapipe/llvmpipe), where a workgroup's
// invocations are the lanes of one SIMD register and no workgroup barrier is used.
//
// Why this shape: on llvmpipe every storage-buffer load is scalarised, one lane at a time
// (about ten instructions per 32-bit component, bounds check included), while arithmetic
// runs on all eight lanes at once. So a kernel is fast when each loaded value feeds many
// multiply-adds. Here a workgroup is one subgroup of 8 lanes that shares ROWS rows of C:
// the lanes load the A values of those rows cooperatively (each lane one vec4 of 4 k) and
// hand them to every lane with `subgroupBroadcast` (a register shuffle on llvmpipe, no
// memory access). Each lane owns 8 columns of B, so one loaded B value feeds ROWS
// multiply-adds. A workgroup computes a ROWS x 64 tile of C; 4 k per loop iteration.
//
// Needs: the SUBGROUP feature with subgroups of exactly 8 (workgroup == one subgroup),
// the contiguous dim of A, B and C % 4 == 0 (vec4 loads and stores), and K % 4 == 0 unless
// K is the outer dim of both operands (`tn`: weight gradients over a token count). The host
// (engine/src/ops/matmul.rs) checks all of this and otherwise picks another kernel.
//
// Entry points: {nn, nt, tn, tt}{32, 8}: the letters say how A and B are stored
// (n: as used, t: transposed), the number is ROWS (8 for products with few rows).
// Composed with lib/matmul_params and a weight piece (lib/weights_*): B is read 4
// consecutive elements at a time through `load_b4`, so it may be stored in any format the
// weight slot takes (f32, f16), with the same layout rules in elements.

@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;

// One lane's 8 columns of one row of C.
alias Row = array<vec4<f32>, 2>;
// One lane's B values for one loop iteration: [k offset t][column group g] = 4 columns.
alias Bk = array<array<vec4<f32>, 2>, 4>;

struct Tile {
    row0: u32,  // first row of the workgroup's tile
    col0: u32,  // first of this lane's 8 columns
    a_off: u32, // this batch's A, in vec4s
    b_off: u32, // this batch's B, in elements
    c_off: u32, // this slice's C, in f32
    kv0: u32,   // k range of this split, in vec4s (4 k)
    kv1: u32,
}

// Tiles are numbered along x then y of the grid (x at most 65535). Consecutive tiles walk
// `group` row blocks down one block of columns, then the next block of columns, so the B
// columns (and the `group` A row blocks) they read stay in the CPU's cache. The host
// picks `group` per layout.
fn tile(wid: vec3<u32>, lane: u32, rows: u32) -> Tile {
    var t: Tile;
    let row_blocks = (p.m + rows - 1u) / rows;
    let col_blocks = (p.n + 63u) / 64u;
    let id = wid.x + wid.y * 65535u;
    let per_group = p.group * col_blocks;
    let first = (id / per_group) * p.group;
    let height = min(p.group, row_blocks - min(first, row_blocks));
    let within = id % per_group;
    let row_block = first + within % max(height, 1u);
    let col_block = within / max(height, 1u);
    t.row0 = row_block * rows;
    t.col0 = col_block * 64u + lane * 8u;
    // (The host keeps A's batch stride, k_chunk and so each split's k range in whole vec4s.)
    let s = slice_of(wid.z);
    t.a_off = s.a_base / 4u;
    t.b_off = s.b_base;
    t.c_off = wid.z * p.c_batch;
    t.kv0 = s.k_begin / 4u;
    t.kv1 = (s.k_end + 3u) / 4u;
    return t;
}

// A stored transposed ([K, M]): lane l loaded rows 4l..4l+3 at k offsets 0..3 (v0..v3).
// Returns the rows of lanes `l0` and `l0 + 1` as 4-k vectors (a 4x4 transpose per lane).
fn rows_from_m(r0: Rows8, r1: Rows8, r2: Rows8, r3: Rows8, l0: u32) -> Rows8 {
    let l1 = l0 + 1u;
    return Rows8(
        vec4(r0[l0].x, r1[l0].x, r2[l0].x, r3[l0].x),
        vec4(r0[l0].y, r1[l0].y, r2[l0].y, r3[l0].y),
        vec4(r0[l0].z, r1[l0].z, r2[l0].z, r3[l0].z),
        vec4(r0[l0].w, r1[l0].w, r2[l0].w, r3[l0].w),
        vec4(r0[l1].x, r1[l1].x, r2[l1].x, r3[l1].x),
        vec4(r0[l1].y, r1[l1].y, r2[l1].y, r3[l1].y),
        vec4(r0[l1].z, r1[l1].z, r2[l1].z, r3[l1].z),
        vec4(r0[l1].w, r1[l1].w, r2[l1].w, r3[l1].w),
    );
}

// acc += s (one row's 4 k values) x bk (4 k by this lane's 8 columns).
fn fma_row(acc: Row, s: vec4<f32>, bk: Bk) -> Row {
    var r = acc;
    r[0] = fma(vec4(s.x), bk[0][0], r[0]);
    r[1] = fma(vec4(s.x), bk[0][1], r[1]);
    r[0] = fma(vec4(s.y), bk[1][0], r[0]);
    r[1] = fma(vec4(s.y), bk[1][1], r[1]);
    r[0] = fma(vec4(s.z), bk[2][0], r[0]);
    r[1] = fma(vec4(s.z), bk[2][1], r[1]);
    r[0] = fma(vec4(s.w), bk[3][0], r[0]);
    r[1] = fma(vec4(s.w), bk[3][1], r[1]);
    return r;
}

// Row by row (not k by k) so that one row's accumulators stay in registers while the
// 4 k steps are added: llvmpipe spills most of a 32-row tile to the stack.
fn fma_block(acc: array<Row, 8>, s: Rows8, bk: Bk) -> array<Row, 8> {
    var r = acc;
    r[0] = fma_row(r[0], s[0], bk);
    r[1] = fma_row(r[1], s[1], bk);
    r[2] = fma_row(r[2], s[2], bk);
    r[3] = fma_row(r[3], s[3], bk);
    r[4] = fma_row(r[4], s[4], bk);
    r[5] = fma_row(r[5], s[5], bk);
    r[6] = fma_row(r[6], s[6], bk);
    r[7] = fma_row(r[7], s[7], bk);
    return r;
}

// B stored as used ([K, N]): this lane's two column groups at k = 4 kv + 0..3 (rows past
// K, when K % 4 != 0, are clamped here and zeroed on the A side). Offsets in elements.
fn load_b_n(t: Tile, kv: u32) -> Bk {
    let g0 = t.b_off + min(t.col0, p.n - 4u);
    let g1 = t.b_off + min(t.col0 + 4u, p.n - 4u);
    let last = p.k - 1u;
    let k0 = min(kv * 4u, last) * p.b_row;
    let k1 = min(kv * 4u + 1u, last) * p.b_row;
    let k2 = min(kv * 4u + 2u, last) * p.b_row;
    let k3 = min(kv * 4u + 3u, last) * p.b_row;
    return Bk(
        array(load_b4(g0 + k0), load_b4(g1 + k0)),
        array(load_b4(g0 + k1), load_b4(g1 + k1)),
        array(load_b4(g0 + k2), load_b4(g1 + k2)),
        array(load_b4(g0 + k3), load_b4(g1 + k3)),
    );
}

// Offsets of this lane's 8 columns of B stored transposed ([N, K]), in elements.
fn b_cols_k(t: Tile) -> array<u32, 8> {
    let s = p.b_col;
    let last = p.n - 1u;
    return array(
        t.b_off + min(t.col0, last) * s, t.b_off + min(t.col0 + 1u, last) * s,
        t.b_off + min(t.col0 + 2u, last) * s, t.b_off + min(t.col0 + 3u, last) * s,
        t.b_off + min(t.col0 + 4u, last) * s, t.b_off + min(t.col0 + 5u, last) * s,
        t.b_off + min(t.col0 + 6u, last) * s, t.b_off + min(t.col0 + 7u, last) * s,
    );
}

// B stored transposed: each column's 4 k values, transposed into [k][column group].
fn load_b_k(cols: array<u32, 8>, kv: u32) -> Bk {
    let k = kv * 4u;
    let c0 = load_b4(cols[0] + k);
    let c1 = load_b4(cols[1] + k);
    let c2 = load_b4(cols[2] + k);
    let c3 = load_b4(cols[3] + k);
    let c4 = load_b4(cols[4] + k);
    let c5 = load_b4(cols[5] + k);
    let c6 = load_b4(cols[6] + k);
    let c7 = load_b4(cols[7] + k);
    return Bk(
        array(vec4(c0.x, c1.x, c2.x, c3.x), vec4(c4.x, c5.x, c6.x, c7.x)),
        array(vec4(c0.y, c1.y, c2.y, c3.y), vec4(c4.y, c5.y, c6.y, c7.y)),
        array(vec4(c0.z, c1.z, c2.z, c3.z), vec4(c4.z, c5.z, c6.z, c7.z)),
        array(vec4(c0.w, c1.w, c2.w, c3.w), vec4(c4.w, c5.w, c6.w, c7.w)),
    );
}

// Offset (vec4s) of the A row this lane loads for row block q, A stored as used ([M, K]).
fn a_row_k(t: Tile, lane: u32, q: u32) -> u32 {
    return t.a_off + min(t.row0 + lane + 8u * q, p.m - 1u) * (p.a_row / 4u);
}

// Offset (vec4s) of the 4 rows this lane loads, A stored transposed ([K, M]), at k = 0;
// with `lanes_used` lanes covering the tile (8 for 32 rows, 2 for 8 rows).
fn a_rows_m(t: Tile, lane: u32, lanes_used: u32) -> u32 {
    return t.a_off + min(t.row0 / 4u + lane % lanes_used, p.m / 4u - 1u);
}

// The 4 k vectors (k = 4 kv + 0..3) of A stored transposed, broadcast from every lane.
// Rows of A past K (K % 4 != 0: only this layout and `load_b_n` allow it) read as zeros.
fn load_a_m(base: u32, kv: u32) -> array<Rows8, 4> {
    let cv = p.a_col / 4u;
    return array(
        broadcast8(a_m_row(base, cv, kv * 4u)),
        broadcast8(a_m_row(base, cv, kv * 4u + 1u)),
        broadcast8(a_m_row(base, cv, kv * 4u + 2u)),
        broadcast8(a_m_row(base, cv, kv * 4u + 3u)),
    );
}

fn a_m_row(base: u32, cv: u32, k: u32) -> vec4<f32> {
    let v = a[base + min(k, p.k - 1u) * cv];
    return select(vec4<f32>(), v, k < p.k);
}

// Stores one vec4 of C, added to what C holds when accumulating (no read otherwise).
fn put(i: u32, v: vec4<f32>) {
    if ACCUMULATE {
        c[i] += p.alpha * v;
    } else {
        c[i] = p.alpha * v;
    }
}

// C is written with vec4 stores. As used (c_col == 1): a row's 8 columns are two vec4s.
// Transposed (the kernel computes C^T, c_row == 1): 4 consecutive rows of the kernel are 4
// consecutive words of one row of C, so each of the lane's 8 columns takes one vec4 per
// 4 rows. Needs the contiguous dim of C (and `c_batch`) % 4 == 0.
fn store_row(t: Tile, i: u32, r: Row) {
    let row = t.row0 + i;
    if row >= p.m {
        return;
    }
    let base = (t.c_off + row * p.c_row + t.col0) / 4u;
    if t.col0 < p.n {
        put(base, r[0]);
    }
    if t.col0 + 4u < p.n {
        put(base + 1u, r[1]);
    }
}

fn store_rows4_transposed(t: Tile, i: u32, r0: Row, r1: Row, r2: Row, r3: Row) {
    let row = t.row0 + i;
    if row >= p.m {
        return;
    }
    let base = (t.c_off + row) / 4u;
    let cv = p.c_col / 4u;
    let col = t.col0;
    let n = p.n;
    if col < n { put(base + col * cv, vec4(r0[0].x, r1[0].x, r2[0].x, r3[0].x)); }
    if col + 1u < n { put(base + (col + 1u) * cv, vec4(r0[0].y, r1[0].y, r2[0].y, r3[0].y)); }
    if col + 2u < n { put(base + (col + 2u) * cv, vec4(r0[0].z, r1[0].z, r2[0].z, r3[0].z)); }
    if col + 3u < n { put(base + (col + 3u) * cv, vec4(r0[0].w, r1[0].w, r2[0].w, r3[0].w)); }
    if col + 4u < n { put(base + (col + 4u) * cv, vec4(r0[1].x, r1[1].x, r2[1].x, r3[1].x)); }
    if col + 5u < n { put(base + (col + 5u) * cv, vec4(r0[1].y, r1[1].y, r2[1].y, r3[1].y)); }
    if col + 6u < n { put(base + (col + 6u) * cv, vec4(r0[1].z, r1[1].z, r2[1].z, r3[1].z)); }
    if col + 7u < n { put(base + (col + 7u) * cv, vec4(r0[1].w, r1[1].w, r2[1].w, r3[1].w)); }
}

fn store_block(t: Tile, q: u32, acc: array<Row, 8>) {
    if p.c_col == 1u {
        store_row(t, 8u * q, acc[0]);
        store_row(t, 8u * q + 1u, acc[1]);
        store_row(t, 8u * q + 2u, acc[2]);
        store_row(t, 8u * q + 3u, acc[3]);
        store_row(t, 8u * q + 4u, acc[4]);
        store_row(t, 8u * q + 5u, acc[5]);
        store_row(t, 8u * q + 6u, acc[6]);
        store_row(t, 8u * q + 7u, acc[7]);
    } else {
        store_rows4_transposed(t, 8u * q, acc[0], acc[1], acc[2], acc[3]);
        store_rows4_transposed(t, 8u * q + 4u, acc[4], acc[5], acc[6], acc[7]);
    }
}

// ---- The two tile heights, each in the four layouts ------------------------------------
// `a_t` / `b_t`: A / B stored transposed. Every entry point passes constants, so the driver
// folds the branches away after inlining: each entry is the straight-line kernel of its
// layout, with no run-time test.

// Where this lane's A values come from: A as used, the offsets (vec4s) of the row it loads
// in each of the tile's row blocks of 8; A transposed, the offset of the 4 rows it loads.
struct ASource {
    rows: array<u32, 4>,
    base: u32,
}

fn a_source(t: Tile, lane: u32, lanes_used: u32, a_t: bool) -> ASource {
    var s: ASource;
    if a_t {
        s.base = a_rows_m(t, lane, lanes_used);
    } else {
        s.rows = array(a_row_k(t, lane, 0u), a_row_k(t, lane, 1u), a_row_k(t, lane, 2u), a_row_k(t, lane, 3u));
    }
    return s;
}

// A transposed: the 4 k vectors of this iteration, loaded once for all row blocks.
fn load_a_k4(s: ASource, kv: u32, a_t: bool) -> array<Rows8, 4> {
    if a_t {
        return load_a_m(s.base, kv);
    }
    return array<Rows8, 4>();
}

// Row block q's 8 rows, 4 k each, as every lane sees them.
fn a_block(s: ASource, r: array<Rows8, 4>, kv: u32, q: u32, a_t: bool) -> Rows8 {
    if a_t {
        return rows_from_m(r[0], r[1], r[2], r[3], 2u * q);
    }
    return broadcast8(a[s.rows[q] + kv]);
}

// This iteration's B values for this lane's 8 columns.
fn b_block(t: Tile, cols: array<u32, 8>, kv: u32, b_t: bool) -> Bk {
    if b_t {
        return load_b_k(cols, kv);
    }
    return load_b_n(t, kv);
}

// 32 rows per workgroup: four row blocks, each one accumulator (separate variables, so
// llvmpipe keeps each in registers while its block is updated).
fn rows32(wid: vec3<u32>, lane: u32, a_t: bool, b_t: bool) {
    let t = tile(wid, lane, 32u);
    let src = a_source(t, lane, 8u, a_t);
    let cols = b_cols_k(t);
    var acc0: array<Row, 8>;
    var acc1: array<Row, 8>;
    var acc2: array<Row, 8>;
    var acc3: array<Row, 8>;
    for (var kv = t.kv0; kv < t.kv1; kv++) {
        let bk = b_block(t, cols, kv, b_t);
        let r = load_a_k4(src, kv, a_t);
        acc0 = fma_block(acc0, a_block(src, r, kv, 0u, a_t), bk);
        acc1 = fma_block(acc1, a_block(src, r, kv, 1u, a_t), bk);
        acc2 = fma_block(acc2, a_block(src, r, kv, 2u, a_t), bk);
        acc3 = fma_block(acc3, a_block(src, r, kv, 3u, a_t), bk);
    }
    store_block(t, 0u, acc0);
    store_block(t, 1u, acc1);
    store_block(t, 2u, acc2);
    store_block(t, 3u, acc3);
}

// 8 rows per workgroup: products with few rows (a LoRA rank).
fn rows8(wid: vec3<u32>, lane: u32, a_t: bool, b_t: bool) {
    let t = tile(wid, lane, 8u);
    let src = a_source(t, lane, 2u, a_t);
    let cols = b_cols_k(t);
    var acc: array<Row, 8>;
    for (var kv = t.kv0; kv < t.kv1; kv++) {
        let r = load_a_k4(src, kv, a_t);
        acc = fma_block(acc, a_block(src, r, kv, 0u, a_t), b_block(t, cols, kv, b_t));
    }
    store_block(t, 0u, acc);
}

@compute @workgroup_size(8) fn nn32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) { rows32(wid, lane, false, false); }
@compute @workgroup_size(8) fn nt32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) { rows32(wid, lane, false, true); }
@compute @workgroup_size(8) fn tn32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) { rows32(wid, lane, true, false); }
@compute @workgroup_size(8) fn tt32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) { rows32(wid, lane, true, true); }
@compute @workgroup_size(8) fn nn8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) { rows8(wid, lane, false, false); }
@compute @workgroup_size(8) fn nt8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) { rows8(wid, lane, false, true); }
@compute @workgroup_size(8) fn tn8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) { rows8(wid, lane, true, false); }
@compute @workgroup_size(8) fn tt8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) { rows8(wid, lane, true, true); }
