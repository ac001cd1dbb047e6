// Strided copy of 32-bit words: out[out_offset + sum c_d out_strides_d] = x[in_offset + sum c_d in_strides_d]
// for every coordinate c of `dims`. Transpose, narrow, concat and expand are all this kernel.
// Pieces: lib/ids (flat_id).

struct CopyParams {
    numel: u32,
    in_offset: u32,
    out_offset: u32,
    dims: array<u32, 6>,       // the index space, padded in front with 1s
    in_strides: array<u32, 6>,
    out_strides: array<u32, 6>,
}

@group(0) @binding(0) var<storage, read> p: CopyParams;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn copy_strided(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if i >= p.numel { return; }
    var rest = i;
    var src = p.in_offset;
    var dst = p.out_offset;
    for (var d = 5; d >= 0; d--) {
        let c = rest % p.dims[d];
        rest = rest / p.dims[d];
        src += c * p.in_strides[d];
        dst += c * p.out_strides[d];
    }
    out[dst] = x[src];
}
