//! Generation on the tiny fixture model: the KV cache changes nothing but speed, and a seed
//! fixes the sampled text.

mod common;

use hydralora::engine::rng::Rng;
use hydralora::model::llama::generate::pick;
use hydralora::model::{generate, generate_greedy_batch, Llama, SamplingConfig};

fn tiny_model() -> Llama {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/tiny-llama");
    Llama::load(&common::device(), dir).expect("the tiny-llama fixture loads")
}

#[test]
fn kv_cache_gives_the_same_greedy_tokens_as_recomputing_the_prefix() {
    let model = tiny_model();
    let prompt = [1, 17, 42, 5, 88];
    let cfg = SamplingConfig {
        max_new_tokens: 24,
        ..Default::default()
    };
    let cached = generate(&model, &prompt, &cfg, |_| true).unwrap();
    let recomputed = generate(
        &model,
        &prompt,
        &SamplingConfig {
            use_cache: false,
            ..cfg
        },
        |_| true,
    )
    .unwrap();
    assert_eq!(cached.len(), 24);
    assert_eq!(cached, recomputed);
}

#[test]
fn a_fixed_seed_gives_the_same_sample_twice_and_tokens_stream() {
    let model = tiny_model();
    let cfg = SamplingConfig {
        max_new_tokens: 16,
        temperature: 1.0,
        top_k: Some(40),
        top_p: Some(0.95),
        seed: 7,
        ..Default::default()
    };
    let mut streamed = Vec::new();
    let first = generate(&model, &[1, 3, 9], &cfg, |t| {
        streamed.push(t);
        true
    })
    .unwrap();
    let second = generate(&model, &[1, 3, 9], &cfg, |_| true).unwrap();
    assert_eq!(first, second);
    assert_eq!(
        first, streamed,
        "every token reaches the callback as it is chosen"
    );
    let other = generate(
        &model,
        &[1, 3, 9],
        &SamplingConfig { seed: 8, ..cfg },
        |_| true,
    )
    .unwrap();
    assert_ne!(
        first, other,
        "another seed samples another text (random model, 16 tokens)"
    );
}

#[test]
fn stop_tokens_and_callbacks_end_generation() {
    let model = tiny_model();
    let greedy = generate(
        &model,
        &[1, 2, 3],
        &SamplingConfig {
            max_new_tokens: 8,
            ..Default::default()
        },
        |_| true,
    )
    .unwrap();
    let stop = greedy[3];
    let first_stop = greedy.iter().position(|&t| t == stop).unwrap();
    let cfg = SamplingConfig {
        max_new_tokens: 8,
        stop_tokens: vec![stop],
        ..Default::default()
    };
    assert_eq!(
        generate(&model, &[1, 2, 3], &cfg, |_| true).unwrap(),
        greedy[..first_stop]
    );
    let mut n = 0;
    let two = generate(
        &model,
        &[1, 2, 3],
        &SamplingConfig {
            max_new_tokens: 8,
            ..Default::default()
        },
        |_| {
            n += 1;
            n < 2
        },
    )
    .unwrap();
    assert_eq!(two, greedy[..2]);
}

#[test]
fn sampling_filters_behave() {
    let logits = [0.1f32, 3.0, 2.9, -1.0, 0.5];
    let mut rng = Rng::new(1);
    let greedy = SamplingConfig::default();
    assert_eq!(pick(&logits, &greedy, &mut rng), 1);
    let top1 = SamplingConfig {
        temperature: 5.0,
        top_k: Some(1),
        ..Default::default()
    };
    let tiny_p = SamplingConfig {
        temperature: 5.0,
        top_p: Some(1e-6),
        ..Default::default()
    };
    let top2 = SamplingConfig {
        temperature: 1.0,
        top_k: Some(2),
        ..Default::default()
    };
    for _ in 0..200 {
        assert_eq!(pick(&logits, &top1, &mut rng), 1);
        assert_eq!(pick(&logits, &tiny_p, &mut rng), 1);
        assert!([1, 2].contains(&pick(&logits, &top2, &mut rng)));
    }
    // Temperature 1 over all tokens: frequencies follow softmax(logits).
    let all = SamplingConfig {
        temperature: 1.0,
        ..Default::default()
    };
    let n = 20_000;
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[pick(&logits, &all, &mut rng) as usize] += 1;
    }
    let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
    for (i, &c) in counts.iter().enumerate() {
        let p = (logits[i] as f64).exp() / z;
        let freq = c as f64 / n as f64;
        // 5 standard deviations of a binomial frequency.
        assert!(
            (freq - p).abs() < 5.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-3,
            "token {i}: {freq} vs {p}"
        );
    }
}

#[test]
fn batched_greedy_generation_gives_each_prompt_s_own_tokens() {
    let model = tiny_model();
    // Lengths 5, 5, 3, 5, 3, 8, 5: groups of equal length, one cut by the batch of 3.
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 17, 42, 5, 88],
        vec![1, 3, 9, 27, 81],
        vec![1, 64, 2],
        vec![1, 5, 5, 5, 5],
        vec![1, 95, 7],
        vec![1, 11, 22, 33, 44, 55, 66, 77],
        vec![1, 90, 80, 70, 60],
    ];
    let budgets = [20, 12, 16, 0, 20, 9, 20];
    let one_at_a_time = |stop_tokens: &[u32]| -> Vec<Vec<u32>> {
        prompts
            .iter()
            .zip(budgets)
            .map(|(prompt, max_new_tokens)| {
                let cfg = SamplingConfig {
                    max_new_tokens,
                    stop_tokens: stop_tokens.to_vec(),
                    ..Default::default()
                };
                generate(&model, prompt, &cfg, |_| true).unwrap()
            })
            .collect()
    };
    let alone = one_at_a_time(&[]);
    assert_eq!(alone[3], Vec::<u32>::new());
    // A token some answer has in its middle ends that answer early when it is a stop token.
    let stop = alone[0][alone[0].len() / 2];
    let alone_stopped = one_at_a_time(&[stop]);
    assert!(alone_stopped[0].len() < alone[0].len());
    for batch in [1, 3, 8] {
        let batched = generate_greedy_batch(&model, &prompts, &budgets, &[], batch).unwrap();
        assert_eq!(batched, alone, "batch {batch}");
        let batched = generate_greedy_batch(&model, &prompts, &budgets, &[stop], batch).unwrap();
        assert_eq!(batched, alone_stopped, "batch {batch}, stop token {stop}");
    }
    assert!(generate_greedy_batch(&model, &prompts, &budgets[1..], &[], 2).is_err());
    assert!(generate_greedy_batch(&model, &prompts, &budgets, &[], 0).is_err());
}
