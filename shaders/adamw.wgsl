// AdamW in place, PyTorch semantics: decoupled weight decay, then bias-corrected moments.
//   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - b_i^step
// Pieces: lib/ids (flat_id).

struct AdamParams {
    numel: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
}

@group(0) @binding(0) var<storage, read> p: AdamParams;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if i >= p.numel { return; }
    let g = grad[i];
    let mi = m[i] + (g - m[i]) * (1.0 - p.beta1);
    let vi = v[i] * p.beta2 + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let denom = sqrt(vi) / p.bias_correction2_sqrt + p.eps;
    param[i] = param[i] * (1.0 - p.lr * p.weight_decay) - (p.lr / p.bias_correction1) * mi / denom;
}
