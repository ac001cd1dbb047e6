// Embedding backward, a deterministic scatter-add without atomics: the host groups the
// positions by id (CSR: uniq ids, offsets, positions in order); invocation (u, c) adds the
// rows of dy for id uniq[u] in that fixed order. Rows of ids never seen are zeroed before.
// Pieces: lib/ids (flat_id).

struct ScatterParams {
    uniq: u32,
    dim: u32,
}

@group(0) @binding(0) var<storage, read> p: ScatterParams;
@group(0) @binding(1) var<storage, read> dy: array<f32>;         // [n, dim]
@group(0) @binding(2) var<storage, read> uniq: array<u32>;       // [uniq]
@group(0) @binding(3) var<storage, read> offsets: array<u32>;    // [uniq + 1]
@group(0) @binding(4) var<storage, read> positions: array<u32>;  // [n]
@group(0) @binding(5) var<storage, read_write> dtable: array<f32>; // [vocab, dim]

@compute @workgroup_size(256)
fn scatter_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if i >= p.uniq * p.dim { return; }
    let u = i / p.dim;
    let c = i % p.dim;
    var acc = 0.0;
    for (var k = offsets[u]; k < offsets[u + 1u]; k++) {
        acc += dy[positions[k] * p.dim + c];
    }
    dtable[uniq[u] * p.dim + c] = acc;
}
