// f16 storage without the shader-f16 extension: two halves packed in each 32-bit word with
// the core pack2x16float / unpack2x16float builtins, so every device can store f16.
// Pieces: lib/ids (flat_id).

struct CastParams {
    numel: u32, // elements (the last word of an odd count holds one half and a zero)
}

@group(0) @binding(0) var<storage, read> p: CastParams;
@group(0) @binding(1) var<storage, read> src: array<u32>;        // f32 bits or packed halves
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;  // packed halves or f32 bits

// dst word i = the halves of elements 2i and 2i + 1.
@compute @workgroup_size(256)
fn f32_to_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if 2u * i >= p.numel { return; }
    let lo = bitcast<f32>(src[2u * i]);
    var hi = 0.0;
    if 2u * i + 1u < p.numel { hi = bitcast<f32>(src[2u * i + 1u]); }
    dst[i] = pack2x16float(vec2<f32>(lo, hi));
}

// dst elements 2i and 2i + 1 = the halves of src word i.
@compute @workgroup_size(256)
fn f16_to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if 2u * i >= p.numel { return; }
    let v = unpack2x16float(src[i]);
    dst[2u * i] = bitcast<u32>(v.x);
    if 2u * i + 1u < p.numel { dst[2u * i + 1u] = bitcast<u32>(v.y); }
}
