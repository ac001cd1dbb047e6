// Embedding gather: out[n, :] = table[ids[n] - row_offset, :] for the ids this table part
// holds (rows row_offset .. row_offset + rows); other rows of out are left as they are, so
// a table too large for one binding is gathered part by part into a zeroed output.
// Pieces: lib/ids (flat_id), and a matmul weight piece (lib/weights_*: the table binding
// `b` and `load_b`), so a table is read in any storage format a frozen weight has.

struct GatherParams {
    n: u32,
    dim: u32,
    rows: u32,       // rows in this part of the table
    row_offset: u32, // the id of this part's first row
}

@group(0) @binding(0) var<storage, read> p: GatherParams;
@group(0) @binding(1) var<storage, read> ids: array<u32>;       // [n]
// binding 2, the table [rows, dim]: `b` of the weight piece.
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // [n, dim]

@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if i >= p.n * p.dim { return; }
    let id = ids[i / p.dim];
    if id >= p.row_offset && id - p.row_offset < p.rows {
        out[i] = load_b((id - p.row_offset) * p.dim + i % p.dim);
    }
}
