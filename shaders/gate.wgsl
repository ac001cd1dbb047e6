// HydraLoRA gate expansion: z[t, i r + j] = g[t, i] h[t, j], which stacks the N heads'
// inputs so that all B heads run as one matmul. `gate_expand` reads the gates g; the dense
// router's `routed_expand` reads the router logits and takes g = softmax(logits) itself,
// so the softmax costs no dispatch and no [T, N] tensor of its own.
// Pieces: lib/ids (flat_id).

struct GateParams {
    tokens: u32,
    heads: u32, // N
    rank: u32,  // r
}

@group(0) @binding(0) var<storage, read> p: GateParams;
@group(0) @binding(1) var<storage, read> g: array<f32>;       // [tokens, N] (routed: [tokens, r + N])
@group(0) @binding(2) var<storage, read> h: array<f32>;       // [tokens, r] (routed: [tokens, r + N])
@group(0) @binding(3) var<storage, read_write> z: array<f32>; // [tokens, N r]

@compute @workgroup_size(256)
fn gate_expand(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let id = flat_id(gid, groups, 256u);
    let width = p.heads * p.rank;
    if id >= p.tokens * width { return; }
    let t = id / width;
    let i = (id % width) / p.rank;
    let j = id % p.rank;
    z[id] = g[t * p.heads + i] * h[t * p.rank + j];
}

// The dense router's expansion, on the packed down-projection hl = x [A; Wg]^T [T, r + N]:
// h = hl[:, 0..r], logits = hl[:, r..r + N] (`g` holds the logits' source, `h` the h's; the
// same buffer unless dropout gave A its own input). One invocation per token: its softmax
// (row max subtracted) once, then its N r outputs.
@compute @workgroup_size(64)
fn routed_expand(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = flat_id(gid, groups, 64u);
    if t >= p.tokens { return; }
    let width = p.rank + p.heads;
    let row = t * width + p.rank; // the logits
    var top = g[row];
    for (var i = 1u; i < p.heads; i++) { top = max(top, g[row + i]); }
    var total = 0.0;
    for (var i = 0u; i < p.heads; i++) { total += exp(g[row + i] - top); }
    let out = t * p.heads * p.rank;
    for (var i = 0u; i < p.heads; i++) {
        let gi = exp(g[row + i] - top) / total;
        for (var j = 0u; j < p.rank; j++) { z[out + i * p.rank + j] = gi * h[t * width + j]; }
    }
}
