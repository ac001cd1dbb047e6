// A and C of the matmul kernels that load and store one f32 at a time (general, tiled,
// cooperative): their bindings, zero-padded loads and the store of one invocation's 4x4
// block of C. B comes through the weight slot (lib/weights_*.wgsl).

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// A at (row, k) and B at (k, col) of slice `s`; 0 past the edges of the product or of the
// slice's k range (how the staged kernels pad their tiles).
fn a_or_zero(s: Slice, row: u32, k: u32) -> f32 {
    if row < p.m && k < s.k_end {
        return a[s.a_base + row * p.a_row + k * p.a_col];
    }
    return 0.0;
}

fn b_or_zero(s: Slice, k: u32, col: u32) -> f32 {
    if col < p.n && k < s.k_end {
        return load_b(s.b_base + k * p.b_row + col * p.b_col);
    }
    return 0.0;
}

// Stores acc (rows row0 .. row0 + 3, columns col0 .. col0 + 3 of the slice `wid.z`),
// scaled by alpha, added to what C holds when accumulating; rows and columns past the
// edge are not stored.
fn store_block(slice: u32, row0: u32, col0: u32, acc: array<vec4<f32>, 4>) {
    let c_base = slice * p.c_batch;
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + i;
        if row < p.m {
            for (var j = 0u; j < 4u; j++) {
                let col = col0 + j;
                if col < p.n {
                    let at = c_base + row * p.c_row + col * p.c_col;
                    if ACCUMULATE {
                        c[at] += p.alpha * acc[i][j];
                    } else {
                        c[at] = p.alpha * acc[i][j];
                    }
                }
            }
        }
    }
}
