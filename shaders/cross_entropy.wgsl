// Cross-entropy of each row of logits against an i32 label; label -100 means "no loss".
// One workgroup per row writes the row's loss, its log-sum-exp (for backward) and
// whether it counts. A label outside [0, vocab) other than -100 gives a NaN loss.

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

const WG: u32 = 128u;
const IGNORE: i32 = -100;
var<workgroup> red: array<f32, 128>;

@compute @workgroup_size(128)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * groups.x;
    if row >= p.rows { return; }
    let base = row * p.vocab;
    var m = -3.4e38;
    for (var c = lid; c < p.vocab; c += WG) { m = max(m, logits[base + c]); }
    red[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let row_max = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var c = lid; c < p.vocab; c += WG) { sum += exp(logits[base + c] - row_max); }
    red[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    if lid == 0u {
        let l = row_max + log(red[0]);
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
