// Gate expansion backward, one invocation per token:
//   dg[t, i] = sum_j dz[t, i r + j] h[t, j]      dh[t, j] = sum_i dz[t, i r + j] g[t, i]
// `routed_expand_backward` (g = softmax(logits), recomputed here) goes on through the
// softmax: dlogits[t, i] = g[t, i] (dg[t, i] - sum_k g[t, k] dg[t, k]).
// Pieces: lib/ids (flat_id).

struct GateParams {
    tokens: u32,
    heads: u32,
    rank: u32,
    packed: u32, // routed_expand_backward: 1 when dg and dh are one buffer
}

@group(0) @binding(0) var<storage, read> p: GateParams;
@group(0) @binding(1) var<storage, read> dz: array<f32>;       // [tokens, N r]
@group(0) @binding(2) var<storage, read> g: array<f32>;        // [tokens, N] (routed: [tokens, r + N])
@group(0) @binding(3) var<storage, read> h: array<f32>;        // [tokens, r] (routed: [tokens, r + N])
@group(0) @binding(4) var<storage, read_write> dg: array<f32>; // like g
@group(0) @binding(5) var<storage, read_write> dh: array<f32>; // like h

@compute @workgroup_size(64)
fn gate_expand_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = flat_id(gid, groups, 64u);
    if t >= p.tokens { return; }
    let width = p.heads * p.rank;
    for (var i = 0u; i < p.heads; i++) {
        var acc = 0.0;
        for (var j = 0u; j < p.rank; j++) { acc += dz[t * width + i * p.rank + j] * h[t * p.rank + j]; }
        dg[t * p.heads + i] = acc;
    }
    for (var j = 0u; j < p.rank; j++) {
        var acc = 0.0;
        for (var i = 0u; i < p.heads; i++) { acc += dz[t * width + i * p.rank + j] * g[t * p.heads + i]; }
        dh[t * p.rank + j] = acc;
    }
}

// routed_expand's backward, per token, into dg = d(logits' source) and dh = d(h's source),
// both [tokens, r + N]: dh in columns 0..r, dlogits in r..r + N. With `packed` the two
// sources are one tensor and both parts go to dg, each into its own columns (dh is then a
// placeholder: WebGPU forbids binding one buffer to two writable slots); otherwise each
// gradient's other columns are zero.
fn set_dh(i: u32, v: f32) {
    if p.packed == 1u { dg[i] = v; } else { dh[i] = v; }
}

fn add_dh(i: u32, v: f32) {
    if p.packed == 1u { dg[i] += v; } else { dh[i] += v; }
}

@compute @workgroup_size(64)
fn routed_expand_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = flat_id(gid, groups, 64u);
    if t >= p.tokens { return; }
    let width = p.rank + p.heads;
    let row = t * width + p.rank; // the logits, and their gradient
    let hrow = t * width;         // h, and its gradient
    let zrow = t * p.heads * p.rank;
    var top = g[row];
    for (var i = 1u; i < p.heads; i++) { top = max(top, g[row + i]); }
    var total = 0.0;
    for (var i = 0u; i < p.heads; i++) { total += exp(g[row + i] - top); }
    // dg_i (kept in dg until the softmax step), sum_i g_i dg_i, and dh.
    var mixed = 0.0;
    for (var j = 0u; j < p.rank; j++) { set_dh(hrow + j, 0.0); }
    for (var i = 0u; i < p.heads; i++) {
        let gi = exp(g[row + i] - top) / total;
        var dgi = 0.0;
        for (var j = 0u; j < p.rank; j++) {
            let dzv = dz[zrow + i * p.rank + j];
            dgi += dzv * h[hrow + j];
            add_dh(hrow + j, dzv * gi);
        }
        dg[row + i] = dgi;
        mixed += gi * dgi;
    }
    // Through the softmax: dlogits_i = g_i (dg_i - sum_k g_k dg_k).
    for (var i = 0u; i < p.heads; i++) {
        let gi = exp(g[row + i] - top) / total;
        dg[row + i] = gi * (dg[row + i] - mixed);
    }
    if p.packed == 0u {
        for (var j = 0u; j < p.rank; j++) { dg[hrow + j] = 0.0; }
        for (var i = 0u; i < p.heads; i++) { dh[row + i] = 0.0; }
    }
}
