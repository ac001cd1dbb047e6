// Sum over one axis. The input is viewed as [outer, len, inner]; one workgroup per output
// element adds its `len` values with a fixed-order tree, so results are deterministic.

struct SumParams {
    outer: u32,
    len: u32,
    inner: u32,
}

@group(0) @binding(0) var<storage, read> p: SumParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;   // [outer, len, inner]
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [outer, inner]

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn sum_axis(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let o = wid.x + wid.y * groups.x; // output element
    let valid = o < p.outer * p.inner;
    let outer = o / max(p.inner, 1u);
    let inner = o % max(p.inner, 1u);
    let base = outer * p.len * p.inner + inner;
    var acc = 0.0;
    if valid {
        for (var l = lid; l < p.len; l += WG) {
            acc += x[base + l * p.inner];
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u && valid {
        y[o] = partial[0];
    }
}
