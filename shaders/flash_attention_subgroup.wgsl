// flash_forward of flash_attention.wgsl for CPU Vulkan drivers (lavapipe): the same online
// softmax, params and bindings, laid out like matmul_subgroup.wgsl. A workgroup is one
// subgroup of 8 lanes and takes 8 query rows of one head, one per lane. Keys go in blocks
// of 8: lane l loads key j0 + l (vec4 loads) and hands it to every lane with
// subgroupBroadcast, so each key is loaded once per 8 queries instead of once per query
// (llvmpipe scalarises every buffer load, while broadcasts are register shuffles). No
// barriers, no atomics. Needs subgroups of exactly 8 and D % 4 == 0 (the host checks).

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
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;   // [B, Hq, T, D]
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;   // [B, Hkv, S, D]
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;   // [B, Hkv, S, D]
@group(0) @binding(4) var<storage, read_write> o: array<vec4<f32>>; // [B, Hq, T, D]
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;     // [B, Hq, T]

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

@compute @workgroup_size(8)
fn flash_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                 @builtin(subgroup_invocation_id) lane: u32) {
    let tiles = (p.t + 7u) / 8u;
    let w = wid.x + wid.y * groups.x;
    if w >= p.b * p.hq * tiles { return; } // uniform per workgroup
    let bh = w / tiles;
    let t0 = (w % tiles) * 8u;
    let t = min(t0 + lane, p.t - 1u); // lanes past T compute row T - 1 and do not write
    let offset = p.s - p.t;
    let dv = p.d / 4u;
    let row = bh * p.t + t;
    let b = bh / p.hq;
    let hk = (bh % p.hq) / (p.hq / p.hkv);
    let qa = q_at(b, bh % p.hq, t);
    let n = min(t + offset + 1u, p.s);                        // keys this lane sees
    let n_all = min(min(t0 + 7u, p.t - 1u) + offset + 1u, p.s); // keys any lane sees
    var qr: array<vec4<f32>, MAXV>;  // scale q
    var acc: array<vec4<f32>, MAXV>; // sum_j exp(s_j - m) v_j
    for (var c = 0u; c < dv; c++) {
        qr[c] = p.scale * q[qa + c];
        acc[c] = vec4(0.0);
    }
    var m = -3.4e38;
    var l = 0.0;
    for (var j0 = 0u; j0 < n_all; j0 += 8u) {
        let mine = kv_at(b, hk, min(j0 + lane, p.s - 1u)); // the key row this lane loads
        var s = Eight(vec4(0.0), vec4(0.0));
        for (var c = 0u; c < dv; c++) { s = dots(s, qr[c], bcast8(k[mine + c])); }
        // Keys past this lane's last are masked out (probability 0).
        let j = vec4(j0) + vec4(0u, 1u, 2u, 3u);
        s.lo = select(vec4(-3.4e38), s.lo, j < vec4(n));
        s.hi = select(vec4(-3.4e38), s.hi, j + vec4(4u) < vec4(n));
        let bm = max(m, max(max(max(s.lo.x, s.lo.y), max(s.lo.z, s.lo.w)),
                            max(max(s.hi.x, s.hi.y), max(s.hi.z, s.hi.w))));
        let corr = exp(m - bm);
        let pr = Eight(exp(s.lo - vec4(bm)), exp(s.hi - vec4(bm)));
        l = l * corr + dot(pr.lo, vec4(1.0)) + dot(pr.hi, vec4(1.0));
        for (var c = 0u; c < dv; c++) {
            acc[c] = fma(vec4(corr), acc[c], combine(pr, bcast8(v[mine + c])));
        }
        m = bm;
    }
    if t0 + lane < p.t {
        let inv = 1.0 / l;
        for (var c = 0u; c < dv; c++) { o[qa + c] = acc[c] * inv; }
        lse[row] = m + log(l);
    }
}
