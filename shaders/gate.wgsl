// HydraLoRA gate expansion: z[t, i r + j] = g[t, i] h[t, j], which stacks the N heads'
// inputs so that all B heads run as one matmul.

struct GateParams {
    tokens: u32,
    heads: u32, // N
    rank: u32,  // r
}

@group(0) @binding(0) var<storage, read> p: GateParams;
@group(0) @binding(1) var<storage, read> g: array<f32>;       // [tokens, N]
@group(0) @binding(2) var<storage, read> h: array<f32>;       // [tokens, r]
@group(0) @binding(3) var<storage, read_write> z: array<f32>; // [tokens, N r]

@compute @workgroup_size(256)
fn gate_expand(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let id = gid.x + gid.y * groups.x * 256u;
    let width = p.heads * p.rank;
    if id >= p.tokens * width { return; }
    let t = id / width;
    let i = (id % width) / p.rank;
    let j = id % p.rank;
    z[id] = g[t * p.heads + i] * h[t * p.rank + j];
}
