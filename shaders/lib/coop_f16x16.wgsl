// The fragment shape of the cooperative-matrix matmul (`MatmulKernel::CoopF16x16`):
// 16x16x16, A and B in f16, C accumulated in f32 (the tensor-core shape Vulkan drivers
// list for NVIDIA and AMD). Declared by the variant: `enable f16;` and
// `enable wgpu_cooperative_matrix;`.

alias CoopIn = f16; // the element type A and B are staged in
alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias FragC = coop_mat16x16<f32, C>;
const FRAG: u32 = 16u; // fragment rows = columns = depth
