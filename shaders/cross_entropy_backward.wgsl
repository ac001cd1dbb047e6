// Cross-entropy backward: dlogits = (softmax(logits) - onehot(label)) * g, where g is the
// upstream gradient divided by the number of counted rows; ignored rows get zeros.
//
// Pieces: lib/ce_params, lib/ids.

@group(0) @binding(0) var<storage, read> p: CeParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;        // [rows, vocab]
@group(0) @binding(2) var<storage, read> labels: array<i32>;        // [rows]
@group(0) @binding(3) var<storage, read> lse: array<f32>;           // [rows]
@group(0) @binding(4) var<storage, read> g: array<f32>;             // [1]
@group(0) @binding(5) var<storage, read_write> dlogits: array<f32>; // [rows, vocab]

@compute @workgroup_size(256)
fn cross_entropy_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if i >= p.rows * p.vocab { return; }
    let row = i / p.vocab;
    let c = i % p.vocab;
    let label = labels[row];
    if label == IGNORE {
        dlogits[i] = 0.0;
        return;
    }
    var onehot = 0.0;
    if label == i32(c) { onehot = 1.0; }
    dlogits[i] = (exp(logits[i] - lse[row]) - onehot) * g[0];
}
