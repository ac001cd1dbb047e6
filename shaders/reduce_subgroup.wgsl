// sum_axis of reduce.wgsl with subgroup reductions (devices with SUBGROUP): the input is
// viewed as [outer, len, inner]; one workgroup per output element, one barrier.

struct SumParams {
    outer: u32,
    len: u32,
    inner: u32,
}

@group(0) @binding(0) var<storage, read> p: SumParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // [outer, len, inner]
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [outer, inner]

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

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

@compute @workgroup_size(64)
fn sum_axis(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
            @builtin(local_invocation_index) lid: u32,
            @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32) {
    let o = wid.x + wid.y * groups.x; // output element
    let valid = o < p.outer * p.inner;
    let outer = o / max(p.inner, 1u);
    let inner = o % max(p.inner, 1u);
    let base = outer * p.len * p.inner + inner;
    var acc = 0.0;
    if valid {
        for (var l = lid; l < p.len; l += WG) { acc += x[base + l * p.inner]; }
    }
    let total = workgroup_sum(acc, lid, lane, size);
    if lid == 0u && valid { y[o] = total; }
}
