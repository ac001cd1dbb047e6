//! Embedding: gather rows of a table by u32 ids (any ids shape), and the deterministic
//! scatter-add backward, with repeated ids. Forward exactly, backward against float64, and
//! gradcheck.
//!
//! Tolerances: the gather copies values (exact). A table row's gradient is the f32 sum of
//! the gradient rows of every position with that id: within gamma_count * sum |dy| of the
//! exact sum (count = how often the id occurs, u = 2^-24); rows never named are exactly 0.

mod common;

use common::*;
use hydralora_engine::{embedding, Tensor};
use proptest::prelude::*;

fn check(vocab: usize, dim: usize, ids: &[u32], ids_shape: &[usize], seed: u64) {
    let dev = device();
    let table = values(vocab * dim, -1.0, 1.0, seed);
    let n = ids.len();
    let dy = values(n * dim, -1.0, 1.0, seed + 1);
    let what = format!("embedding [{vocab}, {dim}] ids {ids_shape:?}");
    let p = param(&table, &[vocab, dim]);
    let ids_t = Tensor::from_u32(&dev, ids, ids_shape).unwrap();
    let out = embedding(&p, &ids_t).unwrap();
    let mut out_shape = ids_shape.to_vec();
    out_shape.push(dim);
    assert_eq!(out.shape(), out_shape.as_slice(), "{what}");
    let expected: Vec<f32> = ids
        .iter()
        .flat_map(|&id| table[id as usize * dim..(id as usize + 1) * dim].to_vec())
        .collect();
    assert_bits_eq(&format!("{what} forward"), &read(&out), &expected);

    let grads = out.backward_with(tensor(&dy, &out_shape)).unwrap();
    let mut exact = vec![0.0f64; vocab * dim];
    let mut abs = vec![0.0f64; vocab * dim];
    let mut count = vec![0usize; vocab];
    for (pos, &id) in ids.iter().enumerate() {
        count[id as usize] += 1;
        for c in 0..dim {
            exact[id as usize * dim + c] += dy[pos * dim + c] as f64;
            abs[id as usize * dim + c] += dy[pos * dim + c].abs() as f64;
        }
    }
    let bound: Vec<f64> = (0..vocab * dim)
        .map(|i| {
            let k = count[i / dim] as f64;
            k * U / (1.0 - k * U) * 1.001 * abs[i]
        })
        .collect();
    let g = grads.get(&p).unwrap();
    assert_eq!(g.shape(), &[vocab, dim]);
    assert_within(&format!("{what} backward"), &read(g), &exact, &bound);
}

/// (vocab, dim, ids, ids shape): ids often drawn from a few values, so they repeat.
fn case() -> impl Strategy<Value = (usize, usize, Vec<u32>, Vec<usize>)> {
    (
        dim(),
        dim(),
        prop::collection::vec(1usize..=6, 1..=2),
        any::<bool>(),
    )
        .prop_flat_map(|(vocab, dim, ids_shape, few)| {
            let n: usize = ids_shape.iter().product();
            let hi = if few { vocab.min(3) } else { vocab } as u32;
            (
                Just(vocab),
                Just(dim),
                prop::collection::vec(0..hi, n),
                Just(ids_shape),
            )
        })
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn embedding_gather_and_scatter_add((vocab, dim, ids, ids_shape) in case(), seed in 0u64..1000) {
        check(vocab, dim, &ids, &ids_shape, seed);
    }
}

#[test]
fn repeated_ids_accumulate_in_a_fixed_order() {
    // id 3 appears 5 times, id 0 twice, ids 1, 2, 4..9 never; 257 columns (one past a
    // workgroup).
    let ids = [3, 0, 3, 3, 7, 3, 0, 3, 10];
    check(11, 257, &ids, &[3, 3], 1);
    // Many positions for one id: the sum of 300 rows.
    let ids = vec![2u32; 300];
    check(4, 5, &ids, &[300], 2);
}

#[test]
fn backward_is_deterministic() {
    let dev = device();
    let ids: Vec<u32> = (0..200).map(|i| (i * 7 % 5) as u32).collect();
    let ids_t = Tensor::from_u32(&dev, &ids, &[200]).unwrap();
    let dy = tensor(&values(200 * 33, -1.0, 1.0, 3), &[200, 33]);
    let run = || {
        let p = param(&values(5 * 33, -1.0, 1.0, 4), &[5, 33]);
        let g = embedding(&p, &ids_t)
            .unwrap()
            .backward_with(dy.clone())
            .unwrap();
        read(g.get(&p).unwrap())
    };
    assert_bits_eq("two backward passes", &run(), &run());
}

#[test]
fn gradcheck_embedding_table() {
    // Linear in the table: no truncation error; eps 1e-2 makes rounding of L (|L| < 20)
    // < 1e-3. atol and rtol 1e-2.
    let dev = device();
    let opts = gc_opts(1e-2, 1e-2, 1e-2, 24);
    let ids = Tensor::from_u32(&dev, &[1, 4, 1, 0, 1, 2], &[2, 3]).unwrap();
    let table = tensor(&values(5 * 3, -1.0, 1.0, 5), &[5, 3]);
    assert_gradcheck("embedding", |xs| embedding(&xs[0], &ids), &[table], &opts);
}

#[test]
fn a_table_split_into_parts_gathers_like_the_whole() {
    // embedding_parts: a table too large for one binding, split by rows, gives the same rows.
    let dev = device();
    let (vocab, dim) = (17, 9);
    let table = values(vocab * dim, -1.0, 1.0, 7);
    let ids: Vec<u32> = vec![0, 16, 5, 6, 5, 11, 12, 3];
    let ids_t = Tensor::from_u32(&dev, &ids, &[2, 4]).unwrap();
    let whole = embedding(&tensor(&table, &[vocab, dim]), &ids_t).unwrap();
    let cuts = [0, 6, 7, 12, vocab];
    let parts: Vec<Tensor> = cuts
        .windows(2)
        .map(|w| tensor(&table[w[0] * dim..w[1] * dim], &[w[1] - w[0], dim]))
        .collect();
    let split = hydralora_engine::embedding_parts(&parts, &ids_t).unwrap();
    assert_eq!(split.shape(), &[2, 4, dim]);
    assert_bits_eq("embedding_parts", &read(&split), &read(&whole));
}
