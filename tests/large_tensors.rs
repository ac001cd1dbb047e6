//! A 32000 x 2048 f32 embedding and lm_head (262 MB) is larger than lavapipe's 128 MiB
//! storage-binding limit; the model splits it by rows and still gathers and projects exactly.
//! Logits larger than one binding are never made whole: a training step whose logits would
//! pass a (lowered) limit runs, with the loss and gradients of the whole-logits path.

mod common;

use hydralora::model::adapter::{attach, trainable_params, AdapterConfig};
use hydralora::model::train::{TrainSettings, Trainer};
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

/// The test device's adapter again, opened with storage bindings of at most `limit` bytes:
/// a device as small as the model below needs, to show what happens past the limit.
fn device_with_binding_limit(limit: u64) -> hydralora::engine::Device {
    let name = common::device().info().name.clone();
    pollster::block_on(async {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .enumerate_adapters(wgpu::Backends::all())
            .await
            .into_iter()
            .find(|a| a.get_info().name == name)
            .expect("the test device's adapter");
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                required_features: adapter.features()
                    & (wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP),
                required_limits: wgpu::Limits {
                    max_storage_buffer_binding_size: limit,
                    ..adapter.limits()
                },
                ..Default::default()
            })
            .await
            .expect("a device with a lower binding limit");
        hydralora::engine::Device::from_wgpu_adapter(&adapter, device, queue)
    })
}

/// A one-layer model with a 3000-token vocabulary, untied, its weights from `seed`.
fn small_model(device: &hydralora::engine::Device, seed: u64) -> Llama {
    let config = LlamaConfig {
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 2,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        vocab_size: 3000,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    };
    let mut rng = hydralora::engine::rng::Rng::new(seed);
    let mut model = Llama::from_tensors(device, config, |name, shape| {
        let n: usize = shape.iter().product();
        Ok(if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            (0..n).map(|_| rng.next_f32() - 0.5).collect()
        })
    })
    .unwrap();
    let targets = ["q_proj", "v_proj", "down_proj"];
    attach(&mut model, &AdapterConfig::lora(4, 8.0, &targets), seed + 1).unwrap();
    // A nonzero B, so that every adapter tensor gets a gradient.
    for p in trainable_params(&model) {
        let values: Vec<f32> = (0..p.numel())
            .map(|_| 0.1 * (rng.next_f32() - 0.5))
            .collect();
        p.write_f32(&values).unwrap();
    }
    model
}

#[test]
fn a_training_step_whose_logits_would_pass_the_binding_limit_runs_and_is_exact() {
    let limit = 64 * 1024;
    let small = device_with_binding_limit(limit);
    assert_eq!(small.info().max_binding_bytes(), limit);
    let (batch, seq, vocab) = (4usize, 32usize, 3000usize);
    let logits_bytes = batch * seq * vocab * 4;
    assert!(
        logits_bytes > limit as usize,
        "the logits ({logits_bytes} bytes) must pass the limit"
    );
    let data = common::random_examples(batch, seq, 3, &[]);
    let ids: Vec<u32> = data.iter().flat_map(|e| e.ids.clone()).collect();
    let labels: Vec<i32> = data.iter().flat_map(|e| e.labels.clone()).collect();

    let model = small_model(&small, 7);
    assert!(model.lm_head.len() > 1, "lm_head is split into parts too");
    // The whole logits cannot exist on this device ...
    assert!(model.logits(&ids, batch).is_err());
    // ... while the loss and its gradients can, equal to the whole-logits path on a device
    // that holds them (same weights; f32 sums in another order: within 1e-5).
    let loss = model.loss(&ids, batch, &labels).unwrap();
    let grads = loss.backward().unwrap();
    let reference = small_model(&common::device(), 7);
    let ref_loss = reference
        .causal_lm_loss(&reference.forward(&ids, batch, None).unwrap(), &labels)
        .unwrap();
    let ref_grads = ref_loss.backward().unwrap();
    let (got, want) = (loss.to_scalar().unwrap(), ref_loss.to_scalar().unwrap());
    assert!(((got - want) / want).abs() < 1e-5, "loss {got} vs {want}");
    let params = trainable_params(&model);
    let ref_params = trainable_params(&reference);
    assert!(!params.is_empty());
    for (p, q) in params.iter().zip(&ref_params) {
        let g = grads.get(p).unwrap().to_vec_f32().unwrap();
        let r = ref_grads.get(q).unwrap().to_vec_f32().unwrap();
        let err = hydralora::model::verify::relative_l2_error(&g, &r);
        assert!(
            err < 1e-5,
            "gradient {:?}: relative L2 error {err}",
            p.shape()
        );
    }

    // A trainer step runs on that device.
    model.check_batch_fits(batch, seq).unwrap();
    let settings = TrainSettings {
        micro_batch: batch,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, data, 0, settings).unwrap();
    let stats = trainer.step().unwrap();
    assert!(stats.loss.is_finite());
}
