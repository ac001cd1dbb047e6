// Top-k mask of each row of g [rows, n]: 1 for the k largest entries (ties: the lower index
// wins), 0 elsewhere. Not differentiable; used to renormalise routing over k heads.
// Pieces: lib/ids (flat_id).

struct TopKParams {
    rows: u32,
    n: u32,
    k: u32,
}

@group(0) @binding(0) var<storage, read> p: TopKParams;
@group(0) @binding(1) var<storage, read> g: array<f32>;          // [rows, n]
@group(0) @binding(2) var<storage, read_write> mask: array<f32>; // [rows, n]

@compute @workgroup_size(256)
fn top_k_mask(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let id = flat_id(gid, groups, 256u);
    if id >= p.rows * p.n { return; }
    let base = (id / p.n) * p.n;
    let i = id % p.n;
    let gi = g[id];
    var above = 0u; // entries ranked before i
    for (var j = 0u; j < p.n; j++) {
        let gj = g[base + j];
        if gj > gi || (gj == gi && j < i) { above++; }
    }
    mask[id] = select(0.0, 1.0, above < p.k);
}
