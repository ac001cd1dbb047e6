//! The forward ops, grouped by family. Each launches its WGSL kernel and, when an input
//! tracks gradients, records an `Op` (the list is in `op.rs`) whose backward rule lives in
//! `crate::backward`.

pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod gate;
pub(crate) mod kernel_params;
pub mod layout;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod softmax;

use crate::device::Device;
use crate::shaders::Shader;

/// Largest rank the strided kernels (broadcast, copy) take.
pub(crate) const MAX_RANK: usize = 6;

/// Workgroups for `items` invocations of `wg` threads; spills into y past the per-dimension
/// limit (kernels compute `flat_id(gid, groups, wg)`, `shaders/lib/ids.wgsl`).
pub(crate) fn grid(device: &Device, items: usize, wg: usize) -> [u32; 3] {
    rows_grid(device, items.div_ceil(wg))
}

/// `n` workgroups laid out in x, then y (kernels compute `group_id(wid, groups)`,
/// `shaders/lib/ids.wgsl`).
pub(crate) fn rows_grid(device: &Device, n: usize) -> [u32; 3] {
    let max = device.info().limits.max_compute_workgroups_per_dimension as usize;
    if n <= max {
        [n as u32, 1, 1]
    } else {
        [max as u32, n.div_ceil(max) as u32, 1]
    }
}

/// A row reduction's variant: its subgroup flavour where the device runs those
/// ([`Device::subgroup_reductions`]), else its workgroup-tree flavour. Both are one kernel
/// file with `shaders/lib/rows_subgroup.wgsl` or `rows_tree.wgsl`, so they have the same
/// entry points, params and bindings.
pub(crate) fn row_shader(
    device: &Device,
    tree: &'static Shader,
    subgroup: &'static Shader,
) -> &'static Shader {
    if device.subgroup_reductions() {
        subgroup
    } else {
        tree
    }
}

/// Row-major strides of a contiguous shape.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// `v` padded in front with `fill` to MAX_RANK entries, as u32 kernel params.
pub(crate) fn pad6(v: &[usize], fill: usize) -> [u32; MAX_RANK] {
    let mut out = [fill as u32; MAX_RANK];
    let start = MAX_RANK - v.len();
    for (o, &x) in out[start..].iter_mut().zip(v) {
        *o = x as u32;
    }
    out
}
