// RMS norm over the last axis, as Hugging Face LLaMA computes it:
// y = w * (x * rsqrt(mean(x^2) + eps)). One workgroup per row; rstd is kept for backward.

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
var<workgroup> red: array<f32, 128>;

@compute @workgroup_size(128)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * groups.x;
    if row >= p.rows { return; }
    let base = row * p.dim;
    var ss = 0.0;
    for (var c = lid; c < p.dim; c += WG) { ss += x[base + c] * x[base + c]; }
    red[lid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let r = inverseSqrt(red[0] / f32(p.dim) + p.eps);
    for (var c = lid; c < p.dim; c += WG) { y[base + c] = w[c] * (x[base + c] * r); }
    if lid == 0u { rstd[row] = r; }
}
