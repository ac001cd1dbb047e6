// The params and inputs of the SwiGLU kernels (swiglu, swiglu_backward): the gate_proj and
// up_proj outputs, elementwise over `numel`.

struct SwigluParams {
    numel: u32,
}

@group(0) @binding(0) var<storage, read> p: SwigluParams;
@group(0) @binding(1) var<storage, read> g: array<f32>; // [numel] gate_proj output
@group(0) @binding(2) var<storage, read> u: array<f32>; // [numel] up_proj output
