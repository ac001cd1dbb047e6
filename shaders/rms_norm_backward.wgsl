// RMS norm backward. With r = rstd, xh = x r and g = dy w:
//   dx = r (g - xh mean(g xh))          (one workgroup per row)
//   dw = sum over rows of dy xh         (one invocation per column, rows in order)
//
// Pieces: lib/ids, and a row-reduction flavour (lib/rows_tree or lib/rows_subgroup).

struct NormParams {
    rows: u32,
    dim: u32,
}

@group(0) @binding(0) var<storage, read> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [rows, dim]
@group(0) @binding(2) var<storage, read> w: array<f32>;         // [dim]
@group(0) @binding(3) var<storage, read> rstd: array<f32>;      // [rows]
@group(0) @binding(4) var<storage, read> dy: array<f32>;        // [rows, dim]
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // dx [rows, dim] or dw [dim]

const WG: u32 = 128u;

@compute @workgroup_size(WG)
fn rms_norm_input_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                       at: Lane) {
    let row = group_id(wid, groups);
    if row >= p.rows { return; }
    let base = row * p.dim;
    let r = rstd[row];
    var dot = 0.0;
    for (var c = at.lid; c < p.dim; c += WG) { dot += dy[base + c] * w[c] * x[base + c] * r; }
    let mean_gxh = workgroup_sum(dot, at) / f32(p.dim);
    for (var c = at.lid; c < p.dim; c += WG) {
        out[base + c] = r * (dy[base + c] * w[c] - x[base + c] * r * mean_gxh);
    }
}

@compute @workgroup_size(WG)
fn rms_norm_weight_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let c = flat_id(gid, groups, WG);
    if c >= p.dim { return; }
    var acc = 0.0;
    for (var row = 0u; row < p.rows; row++) {
        acc += dy[row * p.dim + c] * x[row * p.dim + c] * rstd[row];
    }
    out[c] = acc;
}
