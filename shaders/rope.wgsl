// Rotary position embedding, Hugging Face LLaMA "rotate half" layout: for i < d/2,
//   y[i]       = x[i] cos - x[i + d/2] sin
//   y[i + d/2] = x[i + d/2] cos + x[i] sin
// Row r of x (a head vector) has position index t = (r / t_div) % t_mod into the tables.
// sign = -1 rotates backwards, which is the backward pass.
// Pieces: lib/ids (flat_id).

struct RopeParams {
    rows: u32,
    half: u32, // d / 2
    t_div: u32,
    t_mod: u32,
    sign: f32,
}

@group(0) @binding(0) var<storage, read> p: RopeParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // [rows, 2 half]
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;   // [t_mod, half]
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;   // [t_mod, half]
@group(0) @binding(4) var<storage, read_write> y: array<f32>; // [rows, 2 half]

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let id = flat_id(gid, groups, 256u);
    if id >= p.rows * p.half { return; }
    let row = id / p.half;
    let i = id % p.half;
    let t = (row / p.t_div) % p.t_mod;
    let c = cos_t[t * p.half + i];
    let s = p.sign * sin_t[t * p.half + i];
    let base = row * 2u * p.half;
    let x1 = x[base + i];
    let x2 = x[base + i + p.half];
    y[base + i] = x1 * c - x2 * s;
    y[base + i + p.half] = x2 * c + x1 * s;
}
