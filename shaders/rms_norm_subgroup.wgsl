// rms_norm.wgsl with subgroup reductions, for devices with SUBGROUP: one barrier per
// reduction instead of a 7-level tree. Same math, params and bindings.

struct NormParams {
    rows: u32,
    dim: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [rows, dim]
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [dim]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // [rows, dim]
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>; // [rows]

const WG: u32 = 128u;
var<workgroup> red: array<f32, 128>;

// Every invocation gets the workgroup's sum of `v`: subgroupAdd within each subgroup, then
// the subgroups' sums added in subgroup order (subgroup i is invocations i size ..).
fn workgroup_sum(v: f32, lid: u32, lane: u32, size: u32) -> f32 {
    let s = subgroupAdd(v);
    if lane == 0u { red[lid / size] = s; }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < (WG + size - 1u) / size; i++) { total += red[i]; }
    workgroupBarrier(); // red is free again
    return total;
}

@compute @workgroup_size(128)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
            @builtin(local_invocation_index) lid: u32,
            @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32) {
    let row = wid.x + wid.y * groups.x;
    if row >= p.rows { return; }
    let base = row * p.dim;
    var ss = 0.0;
    for (var c = lid; c < p.dim; c += WG) { ss += x[base + c] * x[base + c]; }
    let r = inverseSqrt(workgroup_sum(ss, lid, lane, size) / f32(p.dim) + p.eps);
    for (var c = lid; c < p.dim; c += WG) { y[base + c] = w[c] * (x[base + c] * r); }
    if lid == 0u { rstd[row] = r; }
}
