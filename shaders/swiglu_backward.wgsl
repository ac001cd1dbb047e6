// SwiGLU backward: with s = sigmoid(g), dg = dy u s (1 + g (1 - s)), du = dy g s.
// Pieces: lib/ids (flat_id), lib/swiglu_io (params, g, u).

@group(0) @binding(3) var<storage, read> dy: array<f32>;       // [numel]
@group(0) @binding(4) var<storage, read_write> dg: array<f32>; // [numel]
@group(0) @binding(5) var<storage, read_write> du: array<f32>; // [numel]

@compute @workgroup_size(256)
fn swiglu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let base = 4u * (flat_id(gid, groups, 256u));
    for (var j = 0u; j < 4u; j++) {
        let i = base + j;
        if i < p.numel {
            let v = g[i];
            let s = 1.0 / (1.0 + exp(-v));
            let d = dy[i];
            dg[i] = d * u[i] * s * (1.0 + v * (1.0 - s));
            du[i] = d * v * s;
        }
    }
}
