// The two backward passes of flash_attention_backward.wgsl for CPU Vulkan drivers
// (lavapipe), laid out like flash_attention_subgroup.wgsl: a workgroup is one subgroup of
// 8 lanes; each lane owns one row, and the rows of the other side come in blocks of 8,
// lane l loading row l of the block and subgroupBroadcast handing it to every lane.
// Same math, params and bindings; no barriers, no atomics. Needs subgroups of exactly 8
// and D % 4 == 0 (the host checks).
//
//   flash_backward_dq:  lane = query row i; key blocks j: dq_i = scale sum_j dS_ij k_j
//   flash_backward_dkv: lane = key row j; query blocks i of every head of its group:
//                       dv_j = sum_i P_ij dO_i, dk_j = scale sum_i dS_ij q_i
//
// Pieces: lib/ids, lib/flash, lib/lanes8, lib/flash_lanes.

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;    // [B, Hq, T, D]
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;    // [B, Hkv, S, D]
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;    // [B, Hkv, S, D]
@group(0) @binding(4) var<storage, read> dout: array<vec4<f32>>; // [B, Hq, T, D]
@group(0) @binding(5) var<storage, read> lse: array<f32>;        // [B, Hq, T]
// dq pass: O [B, Hq, T, D] (as f32, read in vec4s); dkv pass: delta [B, Hq, T].
@group(0) @binding(6) var<storage, read> aux: array<f32>;
// dq pass: dq [B, Hq, T, D] and delta [B, Hq, T]; dkv pass: dk and dv [B, Hkv, S, D].
@group(0) @binding(7) var<storage, read_write> out_a: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> out_b: array<f32>;

fn aux4(i: u32) -> vec4<f32> {
    return vec4(aux[4u * i], aux[4u * i + 1u], aux[4u * i + 2u], aux[4u * i + 3u]);
}

@compute @workgroup_size(8)
fn flash_backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                     @builtin(subgroup_invocation_id) lane: u32) {
    let tile = query_tile(group_id(wid, groups), lane);
    if tile.past_end { return; } // uniform per workgroup
    let r = tile.mine;
    let qa = tile.qa;
    let dv = p.d / 4u;
    var delta = 0.0; // dO_i . O_i
    var gr: array<vec4<f32>, MAXV>; // dO_i
    for (var c = 0u; c < dv; c++) {
        gr[c] = dout[qa + c];
        delta += dot(gr[c], aux4(qa + c));
    }
    var qr: array<vec4<f32>, MAXV>; // scale q_i
    load_scaled_q(tile, &qr);
    var acc: array<vec4<f32>, MAXV>;
    let l = lse[tile.row];
    for (var j0 = 0u; j0 < tile.keys; j0 += 8u) {
        let mine = kv_at(r.b, r.hk, min(j0 + lane, p.s - 1u)) / 4u;
        var s = Eight(vec4(0.0), vec4(0.0));
        var dp = Eight(vec4(0.0), vec4(0.0));
        for (var c = 0u; c < dv; c++) {
            s = dots(s, qr[c], broadcast8(k[mine + c]));
            dp = dots(dp, gr[c], broadcast8(v[mine + c]));
        }
        let ds = masked(Eight(exp(s.lo - vec4(l)) * (dp.lo - vec4(delta)),
                              exp(s.hi - vec4(l)) * (dp.hi - vec4(delta))), j0, r.keys, 0.0);
        for (var c = 0u; c < dv; c++) { acc[c] += combine(ds, broadcast8(k[mine + c])); }
    }
    if tile.t0 + lane < p.t {
        for (var c = 0u; c < dv; c++) { out_a[qa + c] = p.scale * acc[c]; }
        out_b[tile.row] = delta;
    }
}

@compute @workgroup_size(8)
fn flash_backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                      @builtin(subgroup_invocation_id) lane: u32) {
    let tiles = (p.s + 7u) / 8u;
    let w = group_id(wid, groups);
    if w >= p.b * p.hkv * tiles { return; } // uniform per workgroup
    let bkv = w / tiles;
    let j0 = (w % tiles) * 8u;
    let j = min(j0 + lane, p.s - 1u); // lanes past S compute key S - 1 and do not write
    let dv = p.d / 4u;
    let group = p.hq / p.hkv;
    let b = bkv / p.hkv;
    let ka = kv_at(b, bkv % p.hkv, j) / 4u;
    let h0 = (bkv % p.hkv) * group;
    let offset = p.s - p.t;
    let first = max(j0, offset) - offset; // the first query that sees any of these keys
    var kr: array<vec4<f32>, MAXV>; // scale k_j
    var vr: array<vec4<f32>, MAXV>; // v_j
    var dk: array<vec4<f32>, MAXV>;
    var dvv: array<vec4<f32>, MAXV>;
    for (var c = 0u; c < dv; c++) {
        kr[c] = p.scale * k[ka + c];
        vr[c] = v[ka + c];
        dk[c] = vec4(0.0);
        dvv[c] = vec4(0.0);
    }
    for (var h = h0; h < h0 + group; h++) {
        for (var t0 = first; t0 < p.t; t0 += 8u) {
            let tl = min(t0 + lane, p.t - 1u);
            let mine = (b * p.hq + h) * p.t + tl; // the query row this lane loads
            let qm = q_at(b, h, tl) / 4u;
            var s = Eight(vec4(0.0), vec4(0.0));
            var dp = Eight(vec4(0.0), vec4(0.0));
            for (var c = 0u; c < dv; c++) {
                s = dots(s, kr[c], broadcast8(q[qm + c]));
                dp = dots(dp, vr[c], broadcast8(dout[qm + c]));
            }
            let l = broadcast8s(lse[mine]);
            let delta = broadcast8s(aux[mine]);
            // Query t0 + i sees this lane's key j when t0 + i < T and j <= t0 + i + offset.
            let ti = vec4(t0) + vec4(0u, 1u, 2u, 3u);
            let see_lo = (ti < vec4(p.t)) & (vec4(j) <= ti + vec4(offset));
            let see_hi = (ti + vec4(4u) < vec4(p.t)) & (vec4(j) <= ti + vec4(4u + offset));
            let pr = Eight(
                select(vec4(0.0), exp(s.lo - l.lo), see_lo),
                select(vec4(0.0), exp(s.hi - l.hi), see_hi),
            );
            let ds = Eight(pr.lo * (dp.lo - delta.lo), pr.hi * (dp.hi - delta.hi));
            for (var c = 0u; c < dv; c++) {
                dvv[c] += combine(pr, broadcast8(dout[qm + c]));
                dk[c] += combine(ds, broadcast8(q[qm + c]));
            }
        }
    }
    if j0 + lane < p.s {
        for (var c = 0u; c < dv; c++) {
            out_a[ka + c] = p.scale * dk[c];
            out_b[4u * (ka + c)] = dvv[c].x;
            out_b[4u * (ka + c) + 1u] = dvv[c].y;
            out_b[4u * (ka + c) + 2u] = dvv[c].z;
            out_b[4u * (ka + c) + 3u] = dvv[c].w;
        }
    }
}
