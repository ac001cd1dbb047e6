// Unary kernels, backward: dx = dy * f'(x), using the saved output y where that is cheaper.
// Pieces: lib/ids (flat_id).

struct UnaryParams {
    op: u32,
    numel: u32,
    scalar: f32,
}

@group(0) @binding(0) var<storage, read> p: UnaryParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn unary_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if i >= p.numel { return; }
    let v = x[i];
    let g = dy[i];
    var r: f32;
    switch p.op {
        case 0u: { r = -g; }                      // NEG
        case 1u: { r = g * y[i]; }                // EXP: d/dx e^x = e^x
        case 2u: { r = g / v; }                   // LOG
        case 3u: { r = g * 0.5 / y[i]; }          // SQRT
        case 4u: {                                // SILU: s (1 + x (1 - s))
            let s = 1.0 / (1.0 + exp(-v));
            r = g * s * (1.0 + v * (1.0 - s));
        }
        case 6u: { r = g; }                       // ROUND_HALF: straight through
        default: { r = g * p.scalar; }            // SCALE
    }
    dx[i] = r;
}
