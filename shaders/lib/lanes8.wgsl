// For kernels where a workgroup is one subgroup of 8 lanes (matmul_subgroup,
// flash_attention*_subgroup): each lane loads one row's vec4 and subgroupBroadcast hands
// it to every lane, a register shuffle on llvmpipe where a buffer load is scalarised.

// One vec4 of each of 8 rows, row i from lane i: the same in every lane.
alias Rows8 = array<vec4<f32>, 8>;

// Every lane's vec4 `v`, in lane order.
fn broadcast8(v: vec4<f32>) -> Rows8 {
    return Rows8(
        subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
        subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u),
        subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
        subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u),
    );
}
