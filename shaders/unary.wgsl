// Unary kernels, forward: y = f(x). Op codes match engine/src/ops/elementwise.rs: UnaryKind.
// Pieces: lib/ids (flat_id).

struct UnaryParams {
    op: u32,
    numel: u32,
    scalar: f32, // the factor of SCALE, the value of FILL
}

@group(0) @binding(0) var<storage, read> p: UnaryParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(256)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if i >= p.numel { return; }
    let v = x[i];
    var r: f32;
    switch p.op {
        case 0u: { r = -v; }               // NEG
        case 1u: { r = exp(v); }           // EXP
        case 2u: { r = log(v); }           // LOG
        case 3u: { r = sqrt(v); }          // SQRT
        case 4u: { r = v * sigmoid(v); }   // SILU
        case 6u: { r = unpack2x16float(pack2x16float(vec2(v, 0.0))).x; } // ROUND_HALF
        default: { r = v * p.scalar; }     // SCALE
    }
    y[i] = r;
}
