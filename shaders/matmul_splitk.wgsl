// Second pass of split-K matmul: out[b, i] = sum over s of part[b, s, i], the splits added
// in order s = 0, 1, ... so the result is the same on every run (no float atomics).
// Pieces: lib/ids (flat_id).

// ACCUMULATE, a constant each variant declares (engine/src/shaders.rs): C += the
// result (C holds a sum so far, e.g. a gradient) instead of C = it.

struct SplitKParams {
    numel: u32,  // elements of the output: batch * m * n
    slice: u32,  // m * n
    splits: u32,
}

@group(0) @binding(0) var<storage, read> p: SplitKParams;
@group(0) @binding(1) var<storage, read> part: array<f32>; // [batch, splits, m * n]
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // [batch, m * n]

@compute @workgroup_size(256)
fn splitk_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if i >= p.numel { return; }
    let batch = i / p.slice;
    let within = i % p.slice;
    var src = batch * p.splits * p.slice + within;
    var acc = 0.0;
    if ACCUMULATE { acc = out[i]; }
    for (var s = 0u; s < p.splits; s++) {
        acc += part[src];
        src += p.slice;
    }
    out[i] = acc;
}
