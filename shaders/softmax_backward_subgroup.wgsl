// The workgroup softmax_backward of softmax_backward.wgsl with subgroup reductions
// (devices with SUBGROUP): dx = scale * y * (dy - sum(dy * y)), one barrier.

struct SoftmaxParams {
    rows: u32,
    cols: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read> p: SoftmaxParams;
@group(0) @binding(1) var<storage, read> y: array<f32>;        // [rows, cols]
@group(0) @binding(2) var<storage, read> dy: array<f32>;       // [rows, cols]
@group(0) @binding(3) var<storage, read_write> dx: array<f32>; // [rows, cols]

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
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32,
                    @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32) {
    let row = wid.x + wid.y * groups.x;
    if row >= p.rows { return; }
    let base = row * p.cols;
    var dot = 0.0;
    for (var c = lid; c < p.cols; c += WG) { dot += dy[base + c] * y[base + c]; }
    let total = workgroup_sum(dot, lid, lane, size);
    for (var c = lid; c < p.cols; c += WG) {
        dx[base + c] = p.scale * y[base + c] * (dy[base + c] - total);
    }
}
