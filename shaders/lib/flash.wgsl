// What every flash attention kernel (flash_attention*.wgsl) shares: the params, the offsets
// of query and key rows, and where a query row is and which keys it sees.

struct FlashParams {
    b: u32,
    hq: u32,
    hkv: u32,
    t: u32,      // queries per head
    s: u32,      // keys per head (>= t)
    d: u32,      // head dim (<= MAXD)
    scale: f32,
    // Strides in f32 of q, o, dO (and dq) between batches, heads and positions, then of k,
    // v (dk, dv): heads first [B, H, T, D] or tokens first [B, T, H, D].
    q_sb: u32,
    q_sh: u32,
    q_st: u32,
    kv_sb: u32,
    kv_sh: u32,
    kv_st: u32,
}

const MAXD: u32 = 128u; // the host checks

@group(0) @binding(0) var<storage, read> p: FlashParams;

// Offsets (f32) of query row (b, h, t) and of key row (b, kv head hk, j).
fn q_at(b: u32, h: u32, t: u32) -> u32 { return b * p.q_sb + h * p.q_sh + t * p.q_st; }
fn kv_at(b: u32, hk: u32, j: u32) -> u32 { return b * p.kv_sb + hk * p.kv_sh + j * p.kv_st; }

// Query row b Hq T + h T + t (of B Hq T): its batch, its kv head (query head h reads kv
// head h / (Hq / Hkv)), its query's offset, and the keys it sees: 0..keys, that is
// 0..=t + offset (offset = S - T, the keys already cached).
struct QueryRow {
    b: u32,
    hk: u32,
    qa: u32,
    keys: u32,
}

fn query_row(row: u32) -> QueryRow {
    let bh = row / p.t;
    let b = bh / p.hq;
    let h = bh % p.hq;
    let t = row % p.t;
    return QueryRow(b, h / (p.hq / p.hkv), q_at(b, h, t), min(t + (p.s - p.t) + 1u, p.s));
}
