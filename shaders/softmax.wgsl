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
