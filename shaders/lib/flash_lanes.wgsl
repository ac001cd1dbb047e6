// What the subgroup flash kernels (flash_attention_subgroup, flash_attention_backward_subgroup)
// share: blocks of 8 rows, one per lane of a subgroup of 8 (uses lib/lanes8, lib/flash).
// Rows are read in vec4s: D and the strides are multiples of 4 here (the host checks).

const MAXV: u32 = MAXD / 4u; // head dims in vec4s

// Eight values, one per key (or query) of a block: lanes 0..3 in lo, 4..7 in hi.
struct Eight {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// acc + (a . r[i]) for each lane i's vector.
fn dots(acc: Eight, a: vec4<f32>, r: Rows8) -> Eight {
    return Eight(
        acc.lo + vec4(dot(a, r[0]), dot(a, r[1]), dot(a, r[2]), dot(a, r[3])),
        acc.hi + vec4(dot(a, r[4]), dot(a, r[5]), dot(a, r[6]), dot(a, r[7])),
    );
}

// sum_i w_i r[i].
fn combine(w: Eight, r: Rows8) -> vec4<f32> {
    var s = w.lo.x * r[0];
    s = fma(vec4(w.lo.y), r[1], s);
    s = fma(vec4(w.lo.z), r[2], s);
    s = fma(vec4(w.lo.w), r[3], s);
    s = fma(vec4(w.hi.x), r[4], s);
    s = fma(vec4(w.hi.y), r[5], s);
    s = fma(vec4(w.hi.z), r[6], s);
    return fma(vec4(w.hi.w), r[7], s);
}

// `e` with the entries of keys j0 + i >= keys (those a lane does not see) set to `fill`.
fn masked(e: Eight, j0: u32, keys: u32, fill: f32) -> Eight {
    let j = vec4(j0) + vec4(0u, 1u, 2u, 3u);
    return Eight(select(vec4(fill), e.lo, j < vec4(keys)),
                 select(vec4(fill), e.hi, j + vec4(4u) < vec4(keys)));
}

// Every lane's `x`, in lane order.
fn broadcast8s(x: f32) -> Eight {
    return Eight(
        vec4(subgroupBroadcast(x, 0u), subgroupBroadcast(x, 1u),
             subgroupBroadcast(x, 2u), subgroupBroadcast(x, 3u)),
        vec4(subgroupBroadcast(x, 4u), subgroupBroadcast(x, 5u),
             subgroupBroadcast(x, 6u), subgroupBroadcast(x, 7u)),
    );
}

// A query tile: 8 query rows t0.. of one head, one per lane. Lanes past T take row T - 1
// and do not write (t0 + lane >= T).
struct QueryTile {
    t0: u32,
    row: u32,      // this lane's query row (see `query_row`)
    keys: u32,     // keys that any lane of the tile sees
    mine: QueryRow, // this lane's row: batch, kv head, offset, the keys it sees
    qa: u32,       // this lane's row of q (and O, dO, dq), in vec4s
    past_end: bool, // the workgroup has no tile (the grid is rounded up): return
}

// Query tiles of all heads (B Hq of them).
fn query_tiles() -> u32 { return p.b * p.hq * ((p.t + 7u) / 8u); }

// Query tile `w` (of `query_tiles()`) as lane `lane` sees it.
fn query_tile(w: u32, lane: u32) -> QueryTile {
    if w >= query_tiles() {
        var none: QueryTile;
        none.past_end = true;
        return none;
    }
    let per_head = (p.t + 7u) / 8u;
    let first = (w / per_head) * p.t; // the head's first row
    let t0 = (w % per_head) * 8u;
    let last = first + min(t0 + 7u, p.t - 1u);
    let row = first + min(t0 + lane, p.t - 1u);
    let mine = query_row(row);
    return QueryTile(t0, row, query_row(last).keys, mine, mine.qa / 4u, false);
}

// qr = scale q of this lane's query row (`q` is the kernel's [B, Hq, T, D] binding, in
// vec4s). Filled in place: an array returned by value is copied whole, MAXV wide.
fn load_scaled_q(tile: QueryTile, qr: ptr<function, array<vec4<f32>, MAXV>>) {
    let dv = p.d / 4u;
    for (var c = 0u; c < dv; c++) {
        (*qr)[c] = p.scale * q[tile.qa + c];
    }
}
