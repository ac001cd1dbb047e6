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

struct FlashParams {
    b: u32,
    hq: u32,
    hkv: u32,
    t: u32,
    s: u32,
    d: u32,
    scale: f32,
    q_sb: u32, // strides in f32 (see flash_attention.wgsl), multiples of 4 here
    q_sh: u32,
    q_st: u32,
    kv_sb: u32,
    kv_sh: u32,
    kv_st: u32,
}

const MAXV: u32 = 32u; // head dims up to 128, in vec4s

@group(0) @binding(0) var<storage, read> p: FlashParams;
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
// Offsets in vec4s of query row (b, h, t) and key row (b, kv head hk, j).
fn q_at(b: u32, h: u32, t: u32) -> u32 { return (b * p.q_sb + h * p.q_sh + t * p.q_st) / 4u; }
fn kv_at(b: u32, hk: u32, j: u32) -> u32 { return (b * p.kv_sb + hk * p.kv_sh + j * p.kv_st) / 4u; }

alias Lanes = array<vec4<f32>, 8>;

// Eight values, one per key (or query) of a block: lanes 0..3 in lo, 4..7 in hi.
struct Eight {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn bcast8(x: vec4<f32>) -> Lanes {
    return Lanes(
        subgroupBroadcast(x, 0u), subgroupBroadcast(x, 1u),
        subgroupBroadcast(x, 2u), subgroupBroadcast(x, 3u),
        subgroupBroadcast(x, 4u), subgroupBroadcast(x, 5u),
        subgroupBroadcast(x, 6u), subgroupBroadcast(x, 7u),
    );
}

// acc + (a . r[i]) for each lane i's vector.
fn dots(acc: Eight, a: vec4<f32>, r: Lanes) -> Eight {
    return Eight(
        acc.lo + vec4(dot(a, r[0]), dot(a, r[1]), dot(a, r[2]), dot(a, r[3])),
        acc.hi + vec4(dot(a, r[4]), dot(a, r[5]), dot(a, r[6]), dot(a, r[7])),
    );
}

// sum_i w_i r[i].
fn combine(w: Eight, r: Lanes) -> vec4<f32> {
    var s = w.lo.x * r[0];
    s = fma(vec4(w.lo.y), r[1], s);
    s = fma(vec4(w.lo.z), r[2], s);
    s = fma(vec4(w.lo.w), r[3], s);
    s = fma(vec4(w.hi.x), r[4], s);
    s = fma(vec4(w.hi.y), r[5], s);
    s = fma(vec4(w.hi.z), r[6], s);
    return fma(vec4(w.hi.w), r[7], s);
}

fn bcast8s(x: f32) -> Eight {
    return Eight(
        vec4(subgroupBroadcast(x, 0u), subgroupBroadcast(x, 1u),
             subgroupBroadcast(x, 2u), subgroupBroadcast(x, 3u)),
        vec4(subgroupBroadcast(x, 4u), subgroupBroadcast(x, 5u),
             subgroupBroadcast(x, 6u), subgroupBroadcast(x, 7u)),
    );
}

fn aux4(i: u32) -> vec4<f32> {
    return vec4(aux[4u * i], aux[4u * i + 1u], aux[4u * i + 2u], aux[4u * i + 3u]);
}

@compute @workgroup_size(8)
fn flash_backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                     @builtin(subgroup_invocation_id) lane: u32) {
    let tiles = (p.t + 7u) / 8u;
    let w = wid.x + wid.y * groups.x;
    if w >= p.b * p.hq * tiles { return; } // uniform per workgroup
    let bh = w / tiles;
    let t0 = (w % tiles) * 8u;
    let t = min(t0 + lane, p.t - 1u);
    let offset = p.s - p.t;
    let dv = p.d / 4u;
    let row = bh * p.t + t;
    let b = bh / p.hq;
    let hk = (bh % p.hq) / (p.hq / p.hkv);
    let qa = q_at(b, bh % p.hq, t);
    let n = min(t + offset + 1u, p.s);
    let n_all = min(min(t0 + 7u, p.t - 1u) + offset + 1u, p.s);
    var qr: array<vec4<f32>, MAXV>; // scale q_i
    var gr: array<vec4<f32>, MAXV>; // dO_i
    var acc: array<vec4<f32>, MAXV>;
    var delta = 0.0;
    for (var c = 0u; c < dv; c++) {
        qr[c] = p.scale * q[qa + c];
        gr[c] = dout[qa + c];
        acc[c] = vec4(0.0);
        delta += dot(gr[c], aux4(qa + c));
    }
    let l = lse[row];
    for (var j0 = 0u; j0 < n_all; j0 += 8u) {
        let mine = kv_at(b, hk, min(j0 + lane, p.s - 1u));
        var s = Eight(vec4(0.0), vec4(0.0));
        var dp = Eight(vec4(0.0), vec4(0.0));
        for (var c = 0u; c < dv; c++) {
            s = dots(s, qr[c], bcast8(k[mine + c]));
            dp = dots(dp, gr[c], bcast8(v[mine + c]));
        }
        let j = vec4(j0) + vec4(0u, 1u, 2u, 3u);
        let ds = Eight(
            select(vec4(0.0), exp(s.lo - vec4(l)) * (dp.lo - vec4(delta)), j < vec4(n)),
            select(vec4(0.0), exp(s.hi - vec4(l)) * (dp.hi - vec4(delta)), j + vec4(4u) < vec4(n)),
        );
        for (var c = 0u; c < dv; c++) { acc[c] += combine(ds, bcast8(k[mine + c])); }
    }
    if t0 + lane < p.t {
        for (var c = 0u; c < dv; c++) { out_a[qa + c] = p.scale * acc[c]; }
        out_b[row] = delta;
    }
}

@compute @workgroup_size(8)
fn flash_backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                      @builtin(subgroup_invocation_id) lane: u32) {
    let tiles = (p.s + 7u) / 8u;
    let w = wid.x + wid.y * groups.x;
    if w >= p.b * p.hkv * tiles { return; } // uniform per workgroup
    let bkv = w / tiles;
    let j0 = (w % tiles) * 8u;
    let j = min(j0 + lane, p.s - 1u); // lanes past S compute key S - 1 and do not write
    let dv = p.d / 4u;
    let group = p.hq / p.hkv;
    let b = bkv / p.hkv;
    let ka = kv_at(b, bkv % p.hkv, j);
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
            let qm = q_at(b, h, tl);
            var s = Eight(vec4(0.0), vec4(0.0));
            var dp = Eight(vec4(0.0), vec4(0.0));
            for (var c = 0u; c < dv; c++) {
                s = dots(s, kr[c], bcast8(q[qm + c]));
                dp = dots(dp, vr[c], bcast8(dout[qm + c]));
            }
            let l = bcast8s(lse[mine]);
            let delta = bcast8s(aux[mine]);
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
                dvv[c] += combine(pr, bcast8(dout[qm + c]));
                dk[c] += combine(ds, bcast8(q[qm + c]));
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
