// Gate expansion backward, one invocation per token:
//   dg[t, i] = sum_j dz[t, i r + j] h[t, j]      dh[t, j] = sum_i dz[t, i r + j] g[t, i]

struct GateParams {
    tokens: u32,
    heads: u32,
    rank: u32,
}

@group(0) @binding(0) var<storage, read> p: GateParams;
@group(0) @binding(1) var<storage, read> dz: array<f32>;       // [tokens, N r]
@group(0) @binding(2) var<storage, read> g: array<f32>;        // [tokens, N]
@group(0) @binding(3) var<storage, read> h: array<f32>;        // [tokens, r]
@group(0) @binding(4) var<storage, read_write> dg: array<f32>; // [tokens, N]
@group(0) @binding(5) var<storage, read_write> dh: array<f32>; // [tokens, r]

@compute @workgroup_size(64)
fn gate_expand_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = gid.x + gid.y * groups.x * 64u;
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
