// Softmax backward: for y = softmax(scale * x), dx = scale * y * (dy - sum(dy * y)).
// Masked entries have y = 0, so they get no gradient.

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

@compute @workgroup_size(128)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * groups.x;
    if row >= p.rows { return; }
    let base = row * p.cols;
    var dot = 0.0;
    for (var c = lid; c < p.cols; c += WG) { dot += dy[base + c] * y[base + c]; }
    red[lid] = dot;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    for (var c = lid; c < p.cols; c += WG) {
        dx[base + c] = p.scale * y[base + c] * (dy[base + c] - total);
    }
}

// One invocation per row, no barriers (see softmax_rows).
@compute @workgroup_size(64)
fn softmax_backward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = gid.x + gid.y * groups.x * 64u;
    if row >= p.rows { return; }
    let base = row * p.cols;
    var dot = 0.0;
    for (var c = 0u; c < p.cols; c++) { dot += dy[base + c] * y[base + c]; }
    for (var c = 0u; c < p.cols; c++) {
        dx[base + c] = p.scale * y[base + c] * (dy[base + c] - dot);
    }
}
