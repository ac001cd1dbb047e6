// Workgroup reductions of the row kernels, tree flavour (every device): each invocation
// leaves its value in `red`, then log2(WG) halving steps combine them in a fixed order.
// rows_subgroup.wgsl is the other flavour, with the same functions. The kernel declares
// WG (its workgroup size, a power of two) and takes a `Lane` as an entry-point parameter.

struct Lane {
    @builtin(local_invocation_index) lid: u32,
}

var<workgroup> red: array<f32, WG>;

// Every invocation gets the workgroup's sum of `v`.
fn workgroup_sum(v: f32, at: Lane) -> f32 { return tree(false, v, at); }

// Every invocation gets the workgroup's maximum of `v`.
fn workgroup_max(v: f32, at: Lane) -> f32 { return tree(true, v, at); }

fn tree(is_max: bool, v: f32, at: Lane) -> f32 {
    red[at.lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if at.lid < s {
            let a = red[at.lid];
            let b = red[at.lid + s];
            red[at.lid] = select(a + b, max(a, b), is_max);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier(); // red is free again
    return r;
}
