//! An ordinary LoRA standing in for a HydraLoRA adapter, for tools without a per-token router
//! (llama.cpp, Ollama): one head's B, or the router-weighted mean of the heads' B.
//!
//! HydraLoRA computes `scale * sum_i g_i(x) B_i A x` with gates `g(x)` that change per token;
//! a LoRA has one B. Head `k` is the LoRA `B_k A` (the adapter as if the router always picked
//! `k`); the mean is `(sum_i w_i B_i) A` with `w` the module's gates averaged over the tokens
//! of some data, exact when the gates do not vary. Neither equals the adapter in general: the
//! export command measures what it costs on the user's data.

use std::collections::BTreeMap;

use hydralora_engine::no_grad;

use super::gguf::{HostLora, LoraPair};
use super::{record_gates, router_stats, AdapterConfig, Method};
use crate::error::{ModelError, Result};
use crate::llama::Llama;

/// Which LoRA stands in for the heads.
#[derive(Clone, Debug, PartialEq)]
pub enum HeadChoice {
    /// Head `k` alone.
    One(usize),
    /// The router-weighted mean of the heads.
    Mean,
}

impl std::str::FromStr for HeadChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mean" => Ok(HeadChoice::Mean),
            _ => s
                .parse()
                .map(HeadChoice::One)
                .map_err(|_| format!("`{s}` is neither a head number nor `mean`")),
        }
    }
}

/// Each router's mean gates over the tokens of `sequences` (every token weighs the same),
/// by (layer, module): `[E]` each, summing to 1.
pub fn mean_gates(
    model: &mut Llama,
    sequences: &[Vec<u32>],
) -> Result<BTreeMap<(usize, String), Vec<f64>>> {
    record_gates(model, true);
    let mut sums: BTreeMap<(usize, String), Vec<f64>> = BTreeMap::new();
    let mut tokens = 0usize;
    let result = sequences.iter().try_for_each(|ids| -> Result<()> {
        no_grad(|| model.hidden_states(ids, 1, None))?;
        for stats in router_stats(model)? {
            let sum = sums
                .entry((stats.layer, stats.module))
                .or_insert_with(|| vec![0.0; stats.mean_gate.len()]);
            for (acc, g) in sum.iter_mut().zip(&stats.mean_gate) {
                *acc += *g as f64 * ids.len() as f64;
            }
        }
        tokens += ids.len();
        Ok(())
    });
    record_gates(model, false);
    result?;
    if tokens == 0 {
        return Err(ModelError::Input(
            "the data has no tokens to average the router's gates over".into(),
        ));
    }
    for sum in sums.values_mut() {
        sum.iter_mut().for_each(|s| *s /= tokens as f64);
    }
    Ok(sums)
}

/// The LoRA standing in for the HydraLoRA adapter on `model`: A and the scale are the
/// adapter's; B is head `k`'s, or the heads' B weighted by `gates` (from [`mean_gates`]).
pub fn hydra_as_lora(
    model: &Llama,
    choice: &HeadChoice,
    gates: Option<&BTreeMap<(usize, String), Vec<f64>>>,
) -> Result<HostLora> {
    let cfg = model
        .adapter
        .as_ref()
        .filter(|c| c.method == Method::Hydra)
        .ok_or_else(|| ModelError::Input("the model has no HydraLoRA adapter".into()))?;
    if let HeadChoice::One(k) = choice {
        if *k >= cfg.experts {
            return Err(ModelError::Input(format!(
                "--head {k}: the adapter has heads 0 to {}",
                cfg.experts - 1
            )));
        }
    }
    let r = cfg.r;
    let mut pairs = Vec::new();
    for (layer, module, adapter) in model.adapters() {
        let d_in = adapter.down.dim(1);
        let a = adapter.down.to_vec_f32()?[..r * d_in].to_vec();
        let b_all = adapter.b.to_vec_f32()?; // [d_out, E r]
        let weights: Vec<f64> = match choice {
            HeadChoice::One(k) => (0..cfg.experts)
                .map(|i| f64::from(u8::from(i == *k)))
                .collect(),
            HeadChoice::Mean => gates
                .and_then(|g| g.get(&(layer, module.to_string())))
                .cloned()
                .ok_or_else(|| {
                    ModelError::Input(format!(
                        "no router gates measured for layer {layer} `{module}`"
                    ))
                })?,
        };
        let b = b_all
            .chunks(cfg.experts * r)
            .flat_map(|row| {
                (0..r).map(|j| {
                    (0..cfg.experts)
                        .map(|i| weights[i] * row[i * r + j] as f64)
                        .sum::<f64>() as f32
                })
            })
            .collect();
        pairs.push(LoraPair {
            layer,
            module: module.to_string(),
            a,
            b,
        });
    }
    let config = AdapterConfig {
        method: Method::Lora,
        experts: 1,
        top_k: None,
        balance_coef: 0.0,
        ..cfg.clone()
    };
    Ok(HostLora { config, pairs })
}
