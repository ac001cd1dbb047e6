// flash_forward of flash_attention.wgsl for CPU Vulkan drivers (lavapipe): the same online
// softmax, params and bindings, laid out like matmul_subgroup.wgsl. A workgroup is one
// subgroup of 8 lanes and takes 8 query rows of one head, one per lane. Keys go in blocks
// of 8: lane l loads key j0 + l (vec4 loads) and hands it to every lane with
// subgroupBroadcast, so each key is loaded once per 8 queries instead of once per query
// (llvmpipe scalarises every buffer load, while broadcasts are register shuffles). No
// barriers, no atomics. Needs subgroups of exactly 8 and D % 4 == 0 (the host checks).
//
// Pieces: lib/ids, lib/flash, lib/lanes8, lib/flash_lanes.

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;   // [B, Hq, T, D]
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;   // [B, Hkv, S, D]
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;   // [B, Hkv, S, D]
@group(0) @binding(4) var<storage, read_write> o: array<vec4<f32>>; // [B, Hq, T, D]
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;     // [B, Hq, T]

@compute @workgroup_size(8)
fn flash_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                 @builtin(subgroup_invocation_id) lane: u32) {
    let tile = query_tile(group_id(wid, groups), lane);
    if tile.past_end { return; } // uniform per workgroup
    let dv = p.d / 4u;
    var acc: array<vec4<f32>, MAXV>; // sum_j exp(s_j - m) v_j (zeros: WGSL initialises vars)
    var qr: array<vec4<f32>, MAXV>;
    load_scaled_q(tile, &qr);
    let r = tile.mine;
    var m = -3.4e38;
    var l = 0.0;
    for (var j0 = 0u; j0 < tile.keys; j0 += 8u) {
        let mine = kv_at(r.b, r.hk, min(j0 + lane, p.s - 1u)) / 4u; // the key row this lane loads
        var s = Eight(vec4(0.0), vec4(0.0));
        for (var c = 0u; c < dv; c++) { s = dots(s, qr[c], broadcast8(k[mine + c])); }
        s = masked(s, j0, r.keys, -3.4e38); // probability 0
        let bm = max(m, max(max(max(s.lo.x, s.lo.y), max(s.lo.z, s.lo.w)),
                            max(max(s.hi.x, s.hi.y), max(s.hi.z, s.hi.w))));
        let corr = exp(m - bm);
        let pr = Eight(exp(s.lo - vec4(bm)), exp(s.hi - vec4(bm)));
        l = l * corr + dot(pr.lo, vec4(1.0)) + dot(pr.hi, vec4(1.0));
        for (var c = 0u; c < dv; c++) {
            acc[c] = fma(vec4(corr), acc[c], combine(pr, broadcast8(v[mine + c])));
        }
        m = bm;
    }
    if tile.t0 + lane < p.t {
        let inv = 1.0 / l;
        for (var c = 0u; c < dv; c++) { o[tile.qa + c] = acc[c] * inv; }
        lse[tile.row] = m + log(l);
    }
}
