// Fill: y = value everywhere (zeros for gradients, constants for masks).
// Pieces: lib/ids (flat_id).

struct FillParams {
    numel: u32,
    value: f32,
}

@group(0) @binding(0) var<storage, read> p: FillParams;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if i >= p.numel { return; }
    y[i] = p.value;
}
