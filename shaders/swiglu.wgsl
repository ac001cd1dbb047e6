// SwiGLU, fused: y = silu(g) * u, the LLaMA MLP's gate, in one pass over memory.
// Pieces: lib/ids (flat_id), lib/swiglu_io (params, g, u).

@group(0) @binding(3) var<storage, read_write> y: array<f32>; // [numel]

@compute @workgroup_size(256)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let base = 4u * (flat_id(gid, groups, 256u));
    for (var j = 0u; j < 4u; j++) {
        let i = base + j;
        if i < p.numel {
            let v = g[i];
            y[i] = v / (1.0 + exp(-v)) * u[i];
        }
    }
}
