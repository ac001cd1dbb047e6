// RMS norm over the last axis, as Hugging Face LLaMA computes it:
// y = w * (x * rsqrt(mean(x^2) + eps)). One workgroup per row; rstd is kept for backward.
//
// Pieces: lib/ids, and a row-reduction flavour (lib/rows_tree or lib/rows_subgroup).

struct NormParams {
    rows: u32,
    dim: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [rows, dim]
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [dim]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // [rows, dim]
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>; // [rows]

const WG: u32 = 128u;

@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, at: Lane) {
    let row = group_id(wid, groups);
    if row >= p.rows { return; }
    let base = row * p.dim;
    var ss = 0.0;
    for (var c = at.lid; c < p.dim; c += WG) { ss += x[base + c] * x[base + c]; }
    let r = inverseSqrt(workgroup_sum(ss, at) / f32(p.dim) + p.eps);
    for (var c = at.lid; c < p.dim; c += WG) { y[base + c] = w[c] * (x[base + c] * r); }
    if at.lid == 0u { rstd[row] = r; }
}
