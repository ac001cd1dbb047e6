// cross_entropy.wgsl with subgroup reductions (devices with SUBGROUP): one barrier per
// reduction instead of a 7-level tree. Same math, params and bindings.

struct CeParams {
    rows: u32,
    vocab: u32,
}

@group(0) @binding(0) var<storage, read> p: CeParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;        // [rows, vocab]
@group(0) @binding(2) var<storage, read> labels: array<i32>;        // [rows]
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;    // [rows]
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;     // [rows]
@group(0) @binding(5) var<storage, read_write> counted: array<f32>; // [rows] 1 or 0

const IGNORE: i32 = -100;

const WG: u32 = 128u;
var<workgroup> red: array<f32, 128>;

// Every invocation gets the workgroup's sum of `v`: subgroupAdd within each subgroup, then
// the subgroups' sums added in subgroup order (subgroup i is invocations i size ..).
fn workgroup_sum(v: f32, lid: u32, lane: u32, size: u32) -> f32 {
    let s = subgroupAdd(v);
    if lane == 0u { red[lid / size] = s; }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < (WG + size - 1u) / size; i++) { total += red[i]; }
    workgroupBarrier(); // red is free again
    return total;
}

// The same for the maximum.
fn workgroup_max(v: f32, lid: u32, lane: u32, size: u32) -> f32 {
    let s = subgroupMax(v);
    if lane == 0u { red[lid / size] = s; }
    workgroupBarrier();
    var m = -3.4e38;
    for (var i = 0u; i < (WG + size - 1u) / size; i++) { m = max(m, red[i]); }
    workgroupBarrier();
    return m;
}

@compute @workgroup_size(128)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32,
                 @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32) {
    let row = wid.x + wid.y * groups.x;
    if row >= p.rows { return; }
    let base = row * p.vocab;
    var m = -3.4e38;
    for (var c = lid; c < p.vocab; c += WG) { m = max(m, logits[base + c]); }
    let row_max = workgroup_max(m, lid, lane, size);
    var sum = 0.0;
    for (var c = lid; c < p.vocab; c += WG) { sum += exp(logits[base + c] - row_max); }
    let total = workgroup_sum(sum, lid, lane, size);
    if lid == 0u {
        let l = row_max + log(total);
        lse[row] = l;
        let label = labels[row];
        if label == IGNORE {
            loss[row] = 0.0;
            counted[row] = 0.0;
        } else if label < 0 || u32(label) >= p.vocab {
            let zero = 0.0;
            loss[row] = zero / zero; // NaN: loud, not silently wrong
            counted[row] = 1.0;
        } else {
            loss[row] = l - logits[base + u32(label)];
            counted[row] = 1.0;
        }
    }
}
