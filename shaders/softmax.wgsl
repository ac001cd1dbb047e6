// Softmax over the last axis of x viewed as [rows, cols], of `scale * x`, optionally causal:
// row r is query position t = r % q_len and sees only columns c <= t + offset (masked
// entries get probability 0).
//
// Pieces: lib/ids, and a row-reduction flavour (lib/rows_tree or lib/rows_subgroup: `Lane`,
// workgroup_sum, workgroup_max; fixed order either way).

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

fn visible(row: u32) -> u32 {
    if p.causal == 0u { return p.cols; }
    return min(row % p.q_len + p.offset + 1u, p.cols);
}

// One workgroup per row.
@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, at: Lane) {
    let row = group_id(wid, groups);
    if row >= p.rows { return; } // uniform per workgroup
    let base = row * p.cols;
    let n = visible(row);
    var m = -3.4e38;
    for (var c = at.lid; c < n; c += WG) { m = max(m, p.scale * x[base + c]); }
    let row_max = workgroup_max(m, at);
    var sum = 0.0;
    for (var c = at.lid; c < n; c += WG) { sum += exp(p.scale * x[base + c] - row_max); }
    let inv = 1.0 / workgroup_sum(sum, at);
    for (var c = at.lid; c < p.cols; c += WG) {
        var v = 0.0;
        if c < n { v = exp(p.scale * x[base + c] - row_max) * inv; }
        y[base + c] = v;
    }
}

// The same softmax with one invocation per row and no barriers: faster where a workgroup
// is the SIMD lanes of one CPU core (lavapipe), and rows are short (attention scores).
@compute @workgroup_size(64)
fn softmax_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = flat_id(gid, groups, 64u);
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
