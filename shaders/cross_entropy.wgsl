// Cross-entropy of each row of logits against an i32 label; label -100 means "no loss".
// One workgroup per row writes the row's loss, its log-sum-exp (for backward) and
// whether it counts. A label outside [0, vocab) other than -100 gives a NaN loss.
//
// Pieces: lib/ce_params, lib/ids, and a row-reduction flavour (lib/rows_tree or
// lib/rows_subgroup).

@group(0) @binding(0) var<storage, read> p: CeParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;        // [rows, vocab]
@group(0) @binding(2) var<storage, read> labels: array<i32>;        // [rows]
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;    // [rows]
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;     // [rows]
@group(0) @binding(5) var<storage, read_write> counted: array<f32>; // [rows] 1 or 0

const WG: u32 = 128u;

@compute @workgroup_size(WG)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, at: Lane) {
    let row = group_id(wid, groups);
    if row >= p.rows { return; }
    let base = row * p.vocab;
    var m = -3.4e38;
    for (var c = at.lid; c < p.vocab; c += WG) { m = max(m, logits[base + c]); }
    let row_max = workgroup_max(m, at);
    var sum = 0.0;
    for (var c = at.lid; c < p.vocab; c += WG) { sum += exp(logits[base + c] - row_max); }
    let l = row_max + log(workgroup_sum(sum, at));
    if at.lid != 0u { return; }
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
