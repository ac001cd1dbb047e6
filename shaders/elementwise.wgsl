// Binary ops (add, sub, mul, div), broadcasting or on one shape.
// Bindings follow the engine's convention: 0 = params, then reads, then writes.
// Pieces: lib/ids (flat_id).

const MAX_RANK: u32 = 6u;

// Binary op codes (engine/src/ops/elementwise.rs: BinaryKind).
const ADD: u32 = 0u;
const SUB: u32 = 1u;
const MUL: u32 = 2u;
const DIV: u32 = 3u;

// How b (and a) meet the output shape (engine/src/ops/elementwise.rs: Broadcast).
const SAME: u32 = 0u;     // a, b and out share one shape
const GENERAL: u32 = 1u;  // any NumPy broadcast: index arithmetic per element
const B_SCALAR: u32 = 2u; // a and out share one shape; b is one value

struct BinaryParams {
    op: u32,
    numel: u32,
    broadcast: u32,          // SAME, GENERAL or B_SCALAR
    out_dims: array<u32, 6>, // the output shape, padded in front with 1s
    a_strides: array<u32, 6>, // 0 on an axis that a broadcasts along
    b_strides: array<u32, 6>,
}

@group(0) @binding(0) var<storage, read> bp: BinaryParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn apply(op: u32, x: f32, y: f32) -> f32 {
    switch op {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        default: { return x / y; }
    }
}

@compute @workgroup_size(256)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if i >= bp.numel { return; }
    if bp.broadcast == SAME {
        out[i] = apply(bp.op, a[i], b[i]);
        return;
    }
    var rest = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = i32(MAX_RANK) - 1; d >= 0; d--) {
        let n = bp.out_dims[d];
        let c = rest % n;
        rest = rest / n;
        ia += c * bp.a_strides[d];
        ib += c * bp.b_strides[d];
    }
    out[i] = apply(bp.op, a[ia], b[ib]);
}

// a and out of one shape, b of that shape too or a single value (a scale): four elements per
// invocation, so the params are read once per four (loads are the slow part on CPU drivers).
@compute @workgroup_size(256)
fn binary_flat(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let base = 4u * flat_id(gid, groups, 256u);
    let n = bp.numel;
    let op = bp.op;
    let b_step = select(1u, 0u, bp.broadcast == B_SCALAR);
    for (var j = 0u; j < 4u; j++) {
        let i = base + j;
        if i < n { out[i] = apply(op, a[i], b[i * b_step]); }
    }
}
