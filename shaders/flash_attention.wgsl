// Fused causal attention (the FlashAttention-2 recipe), forward and backward, with
// grouped-query heads: query head h reads kv head h / (Hq / Hkv). Query t sees keys
// 0..=t + offset (offset = S - T, the keys already cached). Scores are scale * q.k.
//
// Nothing of size T x S is ever stored: the forward keeps the output and one log-sum-exp
// per query row; the backward recomputes each probability as exp(scale q.k - lse).
// One invocation per row, no barriers, no atomics: every output element has one writer
// and sums run in key (or query) order, so results are deterministic.
//
// flash_forward: one invocation per query row, an online softmax over blocks of BK keys
// (the block's scores, then one rescale of the running sums) -> o, lse. The backward
// passes are in flash_attention_backward.wgsl. Head dims up to MAXD (the host checks).

struct FlashParams {
    b: u32,
    hq: u32,
    hkv: u32,
    t: u32,      // queries per head
    s: u32,      // keys per head (>= t)
    d: u32,      // head dim (<= MAXD)
    scale: f32,
    // Strides in f32 of q, o, dO (and dq) between batches, heads and positions, then of k,
    // v (dk, dv): heads first [B, H, T, D] or tokens first [B, T, H, D].
    q_sb: u32,
    q_sh: u32,
    q_st: u32,
    kv_sb: u32,
    kv_sh: u32,
    kv_st: u32,
}

const MAXD: u32 = 128u;
const BK: u32 = 16u;

@group(0) @binding(0) var<storage, read> p: FlashParams;

// The query row of invocation `gid` (B Hq T of them), or p.b * p.hq * p.t past the end.
fn row_of(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * 64u;
}

// Offsets (f32) of query row (b, h, t) and of key row (b, kv head hk, j).
fn q_at(b: u32, h: u32, t: u32) -> u32 { return b * p.q_sb + h * p.q_sh + t * p.q_st; }
fn kv_at(b: u32, hk: u32, j: u32) -> u32 { return b * p.kv_sb + hk * p.kv_sh + j * p.kv_st; }

// Keys query row `row` sees: 0..visible.
fn visible(row: u32) -> u32 {
    return min(row % p.t + (p.s - p.t) + 1u, p.s);
}

@group(0) @binding(1) var<storage, read> q: array<f32>;         // [B, Hq, T, D]
@group(0) @binding(2) var<storage, read> k: array<f32>;         // [B, Hkv, S, D]
@group(0) @binding(3) var<storage, read> v: array<f32>;         // [B, Hkv, S, D]
@group(0) @binding(4) var<storage, read_write> o: array<f32>;   // [B, Hq, T, D]
@group(0) @binding(5) var<storage, read_write> lse: array<f32>; // [B, Hq, T]

@compute @workgroup_size(64)
fn flash_forward(@builtin(global_invocation_id) gid: vec3<u32>,
                 @builtin(num_workgroups) groups: vec3<u32>) {
    let row = row_of(gid, groups);
    if row >= p.b * p.hq * p.t { return; }
    let d = p.d;
    let bh = row / p.t;
    let b = bh / p.hq;
    let hk = (bh % p.hq) / (p.hq / p.hkv);
    let qa = q_at(b, bh % p.hq, row % p.t);
    let n = visible(row);
    var qr: array<f32, MAXD>;  // this row's query, pre-scaled
    var acc: array<f32, MAXD>; // sum_j exp(s_j - m) v_j
    for (var c = 0u; c < d; c++) {
        qr[c] = p.scale * q[qa + c];
        acc[c] = 0.0;
    }
    var m = -3.4e38; // running max of the scores
    var l = 0.0;     // running sum of exp(s_j - m)
    var sc: array<f32, BK>;
    for (var j0 = 0u; j0 < n; j0 += BK) {
        let cnt = min(BK, n - j0);
        var bm = m;
        for (var jj = 0u; jj < cnt; jj++) {
            let ka = kv_at(b, hk, j0 + jj);
            var s = 0.0;
            for (var c = 0u; c < d; c++) { s = fma(qr[c], k[ka + c], s); }
            sc[jj] = s;
            bm = max(bm, s);
        }
        // Rescale what was summed against the old max once per block.
        let corr = exp(m - bm);
        l *= corr;
        for (var c = 0u; c < d; c++) { acc[c] *= corr; }
        for (var jj = 0u; jj < cnt; jj++) {
            let pj = exp(sc[jj] - bm);
            l += pj;
            let va = kv_at(b, hk, j0 + jj);
            for (var c = 0u; c < d; c++) { acc[c] = fma(pj, v[va + c], acc[c]); }
        }
        m = bm;
    }
    let inv = 1.0 / l;
    for (var c = 0u; c < d; c++) { o[qa + c] = acc[c] * inv; }
    lse[row] = m + log(l);
}
