// Backward of fused causal attention (flash_attention.wgsl; same params, layouts and
// grouped-query rule), from the saved output O and log-sum-exp L, the FlashAttention-2
// recipe without atomics: two passes, each output row with one writer.
//
//   flash_backward_dq:  one invocation per query row i: delta_i = rowsum(dO_i * O_i), then
//                       over its keys j: P_ij = exp(scale q_i.k_j - L_i), dP_ij = dO_i.v_j,
//                       dS_ij = P_ij (dP_ij - delta_i), dq_i = scale sum_j dS_ij k_j.
//   flash_backward_dkv: one invocation per key row j of a kv head, over every query i (of
//                       every query head in its group, in head then position order) that
//                       sees it: dv_j = sum_i P_ij dO_i, dk_j = scale sum_i dS_ij q_i.
//
// Pieces: lib/ids, lib/flash (FlashParams, MAXD, q_at, kv_at, query_row).

@group(0) @binding(1) var<storage, read> q: array<f32>;        // [B, Hq, T, D]
@group(0) @binding(2) var<storage, read> k: array<f32>;        // [B, Hkv, S, D]
@group(0) @binding(3) var<storage, read> v: array<f32>;        // [B, Hkv, S, D]
@group(0) @binding(4) var<storage, read> dout: array<f32>;     // [B, Hq, T, D]
@group(0) @binding(5) var<storage, read> lse: array<f32>;      // [B, Hq, T]
// dq pass: O [B, Hq, T, D]; dkv pass: delta [B, Hq, T] (written by the dq pass).
@group(0) @binding(6) var<storage, read> aux: array<f32>;
// dq pass: dq [B, Hq, T, D] and delta [B, Hq, T]; dkv pass: dk and dv [B, Hkv, S, D].
@group(0) @binding(7) var<storage, read_write> out_a: array<f32>;
@group(0) @binding(8) var<storage, read_write> out_b: array<f32>;

@compute @workgroup_size(64)
fn flash_backward_dq(@builtin(global_invocation_id) gid: vec3<u32>,
                     @builtin(num_workgroups) groups: vec3<u32>) {
    let row = flat_id(gid, groups, 64u); // b * Hq T + h T + t
    if row >= p.b * p.hq * p.t { return; }
    let d = p.d;
    let r = query_row(row);
    var qr: array<f32, MAXD>;  // scale q_i
    var gr: array<f32, MAXD>;  // dO_i
    var acc: array<f32, MAXD>; // sum_j dS_ij k_j
    var delta = 0.0;
    for (var c = 0u; c < d; c++) {
        qr[c] = p.scale * q[r.qa + c];
        gr[c] = dout[r.qa + c];
        acc[c] = 0.0;
        delta = fma(gr[c], aux[r.qa + c], delta);
    }
    let l = lse[row];
    for (var j = 0u; j < r.keys; j++) {
        let ka = kv_at(r.b, r.hk, j);
        var s = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < d; c++) {
            s = fma(qr[c], k[ka + c], s);
            dp = fma(gr[c], v[ka + c], dp);
        }
        let ds = exp(s - l) * (dp - delta);
        for (var c = 0u; c < d; c++) { acc[c] = fma(ds, k[ka + c], acc[c]); }
    }
    for (var c = 0u; c < d; c++) { out_a[r.qa + c] = p.scale * acc[c]; }
    out_b[row] = delta;
}

@compute @workgroup_size(64)
fn flash_backward_dkv(@builtin(global_invocation_id) gid: vec3<u32>,
                      @builtin(num_workgroups) groups: vec3<u32>) {
    let krow = flat_id(gid, groups, 64u); // b * Hkv S + hk S + j
    if krow >= p.b * p.hkv * p.s { return; }
    let d = p.d;
    let j = krow % p.s;
    let bkv = krow / p.s;
    let group = p.hq / p.hkv;
    let b = bkv / p.hkv;
    let h0 = (bkv % p.hkv) * group; // first query head of the group
    let ka = kv_at(b, bkv % p.hkv, j);
    let offset = p.s - p.t;
    let t0 = max(j, offset) - offset; // the first query that sees key j
    var kr: array<f32, MAXD>; // scale k_j
    var vr: array<f32, MAXD>; // v_j
    var dk: array<f32, MAXD>;
    var dv: array<f32, MAXD>;
    for (var c = 0u; c < d; c++) {
        kr[c] = p.scale * k[ka + c];
        vr[c] = v[ka + c];
        dk[c] = 0.0;
        dv[c] = 0.0;
    }
    for (var h = h0; h < h0 + group; h++) {
        for (var t = t0; t < p.t; t++) {
            let row = (b * p.hq + h) * p.t + t;
            let qa = q_at(b, h, t);
            var s = 0.0;
            var dp = 0.0;
            for (var c = 0u; c < d; c++) {
                s = fma(kr[c], q[qa + c], s);
                dp = fma(vr[c], dout[qa + c], dp);
            }
            let pij = exp(s - lse[row]);
            let ds = pij * (dp - aux[row]);
            for (var c = 0u; c < d; c++) {
                dv[c] = fma(pij, dout[qa + c], dv[c]);
                dk[c] = fma(ds, q[qa + c], dk[c]);
            }
        }
    }
    for (var c = 0u; c < d; c++) {
        out_a[ka + c] = p.scale * dk[c];
        out_b[ka + c] = dv[c];
    }
}
