//! A 32000 x 2048 f32 embedding and lm_head (262 MB) is larger than lavapipe's 128 MiB
//! storage-binding limit; the model splits it by rows and still gathers and projects exactly.

mod common;

use hydralora::model::{Llama, LlamaConfig};

#[test]
fn embedding_and_lm_head_larger_than_one_binding_load_and_run() {
    let dev = common::device();
    let (v, h) = (32000usize, 2048usize);
    let config = LlamaConfig {
        hidden_size: h,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 16,
        num_key_value_heads: 16,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        vocab_size: v,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    };
    // Row i of the table is filled with a value that identifies it.
    let row_value = |i: usize| ((i % 997) as f32 - 498.0) / 500.0;
    let model = Llama::from_tensors(&dev, config, |name, shape| {
        let n: usize = shape.iter().product();
        Ok(if name == "model.embed_tokens.weight" {
            (0..n).map(|k| row_value(k / h)).collect()
        } else if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            vec![0.0; n] // the layer adds nothing: residual only
        })
    })
    .unwrap();
    let limit = dev.info().max_binding_bytes() as usize;
    assert!(
        v * h * 4 > limit,
        "the test must exceed the binding limit ({limit} bytes)"
    );
    assert!(model.embed.len() > 1, "the table is split into parts");

    // Ids on both sides of every part boundary.
    let mut ids = vec![0u32, v as u32 - 1];
    let mut start = 0;
    for part in &model.embed {
        start += part.dim(0);
        if start < v {
            ids.extend([start as u32 - 1, start as u32]);
        }
    }
    let gathered = hydralora::engine::embedding_parts(
        &model.embed,
        &hydralora::engine::Tensor::from_u32(&dev, &ids, &[ids.len()]).unwrap(),
    )
    .unwrap()
    .to_vec_f32()
    .unwrap();
    for (n, &id) in ids.iter().enumerate() {
        assert!(
            gathered[n * h..(n + 1) * h]
                .iter()
                .all(|&x| x == row_value(id as usize)),
            "row of id {id}"
        );
    }

    // Logits of the full model: the final norm makes each hidden row constant c = +-1, so
    // logit[j] = sum_k c * row_value(j) = c * h * row_value(j).
    let logits = model.logits(&ids, 1).unwrap().to_vec_f32().unwrap();
    for (n, &id) in ids.iter().enumerate() {
        let c = row_value(id as usize).signum() as f64;
        for j in [0usize, 16383, 16384, 31999, 12345] {
            let want = c * h as f64 * row_value(j) as f64;
            let got = logits[n * v + j] as f64;
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "id {id}, logit {j}: {got} vs {want}"
            );
        }
    }
}
