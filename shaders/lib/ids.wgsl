// Where an invocation stands in a 1-D dispatch that the host spills into y past the
// per-dimension limit of workgroups (engine/src/ops/mod.rs: `grid`, `rows_grid`).

// The flat index of an invocation in a `grid` dispatch of `width`-wide workgroups.
fn flat_id(gid: vec3<u32>, groups: vec3<u32>, width: u32) -> u32 {
    return gid.x + gid.y * groups.x * width;
}

// The flat index of a workgroup in a `rows_grid` dispatch (a row kernel's row).
fn group_id(wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wid.x + wid.y * groups.x;
}
