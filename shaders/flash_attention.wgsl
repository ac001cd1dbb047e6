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
// passes are in flash_attention_backward.wgsl.
//
// Pieces: lib/ids, lib/flash (FlashParams, MAXD, q_at, kv_at, query_row).

const BK: u32 = 16u;

@group(0) @binding(1) var<storage, read> q: array<f32>;         // [B, Hq, T, D]
@group(0) @binding(2) var<storage, read> k: array<f32>;         // [B, Hkv, S, D]
@group(0) @binding(3) var<storage, read> v: array<f32>;         // [B, Hkv, S, D]
@group(0) @binding(4) var<storage, read_write> o: array<f32>;   // [B, Hq, T, D]
@group(0) @binding(5) var<storage, read_write> lse: array<f32>; // [B, Hq, T]

@compute @workgroup_size(64)
fn flash_forward(@builtin(global_invocation_id) gid: vec3<u32>,
                 @builtin(num_workgroups) groups: vec3<u32>) {
    let row = flat_id(gid, groups, 64u);
    if row >= p.b * p.hq * p.t { return; }
    let d = p.d;
    let r = query_row(row);
    var qr: array<f32, MAXD>;  // this row's query, pre-scaled
    var acc: array<f32, MAXD>; // sum_j exp(s_j - m) v_j
    for (var c = 0u; c < d; c++) {
        qr[c] = p.scale * q[r.qa + c];
        acc[c] = 0.0;
    }
    var m = -3.4e38; // running max of the scores
    var l = 0.0;     // running sum of exp(s_j - m)
    var sc: array<f32, BK>;
    for (var j0 = 0u; j0 < r.keys; j0 += BK) {
        let cnt = min(BK, r.keys - j0);
        var bm = m;
        for (var jj = 0u; jj < cnt; jj++) {
            let ka = kv_at(r.b, r.hk, j0 + jj);
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
            let va = kv_at(r.b, r.hk, j0 + jj);
            for (var c = 0u; c < d; c++) { acc[c] = fma(pj, v[va + c], acc[c]); }
        }
        m = bm;
    }
    let inv = 1.0 / l;
    for (var c = 0u; c < d; c++) { o[r.qa + c] = acc[c] * inv; }
    lse[row] = m + log(l);
}
