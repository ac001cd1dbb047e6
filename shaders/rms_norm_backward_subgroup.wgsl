// rms_norm_input_grad of rms_norm_backward.wgsl with subgroup reductions (devices with
// SUBGROUP). Same math, params and bindings: dx = r (g - xh mean(g xh)).

struct NormParams {
    rows: u32,
    dim: u32,
}

@group(0) @binding(0) var<storage, read> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [rows, dim]
@group(0) @binding(2) var<storage, read> w: array<f32>;         // [dim]
@group(0) @binding(3) var<storage, read> rstd: array<f32>;      // [rows]
@group(0) @binding(4) var<storage, read> dy: array<f32>;        // [rows, dim]
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // dx [rows, dim]

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
fn rms_norm_input_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32,
                       @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32) {
    let row = wid.x + wid.y * groups.x;
    if row >= p.rows { return; }
    let base = row * p.dim;
    let r = rstd[row];
    var dot = 0.0;
    for (var c = lid; c < p.dim; c += WG) { dot += dy[base + c] * w[c] * x[base + c] * r; }
    let mean_gxh = workgroup_sum(dot, lid, lane, size) / f32(p.dim);
    for (var c = lid; c < p.dim; c += WG) {
        out[base + c] = r * (dy[base + c] * w[c] - x[base + c] * r * mean_gxh);
    }
}
