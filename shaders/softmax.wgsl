// Softmax over the last axis of x viewed as [rows, cols], of `scale * x`, optionally causal:
// row r is query position t = r % q_len and sees only columns c <= t + offset (masked
// entries get probability 0). One workgroup per row; fixed-order tree reductions.

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

fn visible(row: u32) -> u32 {
    if p.causal == 0u { return p.cols; }
    return min(row % p.q_len + p.offset + 1u, p.cols);
}

@compute @workgroup_size(128)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * groups.x;
    if row >= p.rows { return; } // uniform per workgroup
    let base = row * p.cols;
    let n = visible(row);
    var m = -3.4e38;
    for (var c = lid; c < n; c += WG) { m = max(m, p.scale * x[base + c]); }
    red[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let row_max = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var c = lid; c < n; c += WG) { sum += exp(p.scale * x[base + c] - row_max); }
    red[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];
    for (var c = lid; c < p.cols; c += WG) {
        var v = 0.0;
        if c < n { v = exp(p.scale * x[base + c] - row_max) * inv; }
        y[base + c] = v;
    }
}

// The same softmax with one invocation per row and no barriers: faster where a workgroup
// is the SIMD lanes of one CPU core (lavapipe), and rows are short (attention scores).
@compute @workgroup_size(64)
fn softmax_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = gid.x + gid.y * groups.x * 64u;
    if row >= p.rows { return; }
    let base = row * p.cols;
    let n = visible(row);
    var m = -3.4e38;
    for (var c = 0u; c < n; c++) { m = max(m, p.scale * x[base + c]); }
    var sum = 0.0;
    for (var c = 0u; c < n; c++) { sum += exp(p.scale * x[base + c] - m); }
    let inv = 1.0 / sum;
    for (var c = 0u; c < p.cols; c++) {
        var v = 0.0;
        if c < n { v = exp(p.scale * x[base + c] - m) * inv; }
        y[base + c] = v;
    }
}
