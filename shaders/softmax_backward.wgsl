// Softmax backward: for y = softmax(scale * x), dx = scale * y * (dy - sum(dy * y)).
// Masked entries have y = 0, so they get no gradient.
//
// Pieces: lib/ids, and a row-reduction flavour (lib/rows_tree or lib/rows_subgroup).

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

// One workgroup per row.
@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, at: Lane) {
    let row = group_id(wid, groups);
    if row >= p.rows { return; }
    let base = row * p.cols;
    var dot = 0.0;
    for (var c = at.lid; c < p.cols; c += WG) { dot += dy[base + c] * y[base + c]; }
    let total = workgroup_sum(dot, at);
    for (var c = at.lid; c < p.cols; c += WG) {
        dx[base + c] = p.scale * y[base + c] * (dy[base + c] - total);
    }
}

// One invocation per row, no barriers (see softmax_rows).
@compute @workgroup_size(64)
fn softmax_backward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = flat_id(gid, groups, 64u);
    if row >= p.rows { return; }
    let base = row * p.cols;
    var dot = 0.0;
    for (var c = 0u; c < p.cols; c++) { dot += dy[base + c] * y[base + c]; }
    for (var c = 0u; c < p.cols; c++) {
        dx[base + c] = p.scale * y[base + c] * (dy[base + c] - dot);
    }
}
