// The fragment shape of the cooperative-matrix matmul (`MatmulKernel::CoopF32x8`): 8x8x8,
// A, B and C in f32 (Metal's simdgroup matrices, and Vulkan drivers that list it).
// Declared by the variant: `enable wgpu_cooperative_matrix;`.

alias CoopIn = f32; // the element type A and B are staged in
alias FragA = coop_mat8x8<f32, A>;
alias FragB = coop_mat8x8<f32, B>;
alias FragC = coop_mat8x8<f32, C>;
const FRAG: u32 = 8u; // fragment rows = columns = depth
