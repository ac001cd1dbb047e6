// Workgroup reductions of the row kernels, subgroup flavour (devices with SUBGROUP): one
// subgroup operation, then one barrier, instead of a log2(WG)-step tree. The functions of
// rows_tree.wgsl, with the same signatures. The kernel declares WG (its workgroup size)
// and takes a `Lane` as an entry-point parameter.

struct Lane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
}

var<workgroup> red: array<f32, WG>;

// Every invocation gets the workgroup's sum of `v`.
fn workgroup_sum(v: f32, at: Lane) -> f32 { return across_subgroups(false, subgroupAdd(v), at); }

// Every invocation gets the workgroup's maximum of `v`.
fn workgroup_max(v: f32, at: Lane) -> f32 { return across_subgroups(true, subgroupMax(v), at); }

// The subgroups' results `s` combined in subgroup order (subgroup i is invocations i size ..).
fn across_subgroups(is_max: bool, s: f32, at: Lane) -> f32 {
    if at.lane == 0u { red[at.lid / at.size] = s; }
    workgroupBarrier();
    var r = red[0];
    for (var i = 1u; i < (WG + at.size - 1u) / at.size; i++) {
        r = select(r + red[i], max(r, red[i]), is_max);
    }
    workgroupBarrier(); // red is free again
    return r;
}
