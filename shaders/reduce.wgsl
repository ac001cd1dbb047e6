// Sum over one axis. The input is viewed as [outer, len, inner]; one workgroup per output
// element adds its `len` values, each invocation a strided share, then the workgroup's
// reduction (fixed order, so results are deterministic).
//
// Pieces: lib/ids, and a row-reduction flavour (lib/rows_tree or lib/rows_subgroup).

struct SumParams {
    outer: u32,
    len: u32,
    inner: u32,
}

@group(0) @binding(0) var<storage, read> p: SumParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // [outer, len, inner]
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [outer, inner]

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn sum_axis(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, at: Lane) {
    let o = group_id(wid, groups); // output element
    let valid = o < p.outer * p.inner;
    let outer = o / max(p.inner, 1u);
    let inner = o % max(p.inner, 1u);
    let base = outer * p.len * p.inner + inner;
    var acc = 0.0;
    if valid {
        for (var l = at.lid; l < p.len; l += WG) { acc += x[base + l * p.inner]; }
    }
    let total = workgroup_sum(acc, at);
    if at.lid == 0u && valid { y[o] = total; }
}
