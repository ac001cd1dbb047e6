// Embedding gather: out[n, :] = table[ids[n], :]. An id past the table gives zeros
// (ids from users are checked on the host before they get here).

struct GatherParams {
    n: u32,
    dim: u32,
    vocab: u32,
}

@group(0) @binding(0) var<storage, read> p: GatherParams;
@group(0) @binding(1) var<storage, read> table: array<f32>;     // [vocab, dim]
@group(0) @binding(2) var<storage, read> ids: array<u32>;       // [n]
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // [n, dim]

@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if i >= p.n * p.dim { return; }
    let row = ids[i / p.dim];
    var v = 0.0;
    if row < p.vocab { v = table[row * p.dim + i % p.dim]; }
    out[i] = v;
}
