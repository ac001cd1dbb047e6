// The workgroup softmax of softmax.wgsl with subgroup reductions (devices with SUBGROUP):
// one barrier per reduction instead of a 7-level tree. Same math, params and bindings.

struct SoftmaxParams {
    rows: u32,
    cols: u32,
    scale: f32,
    causal: u32,
    q_len: u32,
    offset: u32,
}

@group(0) @binding(0) var<storage, read> p: SoftmaxParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // [rows, cols]
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [rows, cols]

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

// The same for the maximum.
fn workgroup_max(v: f32, lid: u32, lane: u32, size: u32) -> f32 {
    let s = subgroupMax(v);
    if lane == 0u { red[lid / size] = s; }
    workgroupBarrier();
    var m = -3.4e38;
    for (var i = 0u; i < (WG + size - 1u) / size; i++) { m = max(m, red[i]); }
    workgroupBarrier();
    return m;
}

fn visible(row: u32) -> u32 {
    if p.causal == 0u { return p.cols; }
    return min(row % p.q_len + p.offset + 1u, p.cols);
}

@compute @workgroup_size(128)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
           @builtin(local_invocation_index) lid: u32,
           @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32) {
    let row = wid.x + wid.y * groups.x;
    if row >= p.rows { return; } // uniform per workgroup
    let base = row * p.cols;
    let n = visible(row);
    var m = -3.4e38;
    for (var c = lid; c < n; c += WG) { m = max(m, p.scale * x[base + c]); }
    let row_max = workgroup_max(m, lid, lane, size);
    var sum = 0.0;
    for (var c = lid; c < n; c += WG) { sum += exp(p.scale * x[base + c] - row_max); }
    let inv = 1.0 / workgroup_sum(sum, lid, lane, size);
    for (var c = lid; c < p.cols; c += WG) {
        var v = 0.0;
        if c < n { v = exp(p.scale * x[base + c] - row_max) * inv; }
        y[base + c] = v;
    }
}
