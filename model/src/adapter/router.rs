//! What HydraLoRA's routers do: the gates each one recorded in the last forward, their
//! statistics, the load-balancing loss, and the mean gates per data category.

use hydralora_engine::{no_grad, Tensor};

use crate::error::Result;
use crate::llama::Llama;

/// Mean gate weight of each expert and the mean routing entropy (nats) of one module's router,
/// over the tokens of its last forward.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterStats {
    /// The decoder layer.
    pub layer: usize,
    /// The adapted module, e.g. `q_proj`.
    pub module: String,
    /// Mean gate weight of each expert over the tokens, `[E]` (sums to 1).
    pub mean_gate: Vec<f32>, // [E]
    /// Mean entropy of the per-token gate distribution, in nats (ln E when uniform, for E experts).
    pub entropy: f32,
}

/// Turns on (or off) the recording of gates in every router, for [`router_stats`] and the
/// load-balancing loss.
pub fn record_gates(model: &mut Llama, on: bool) {
    for (_, _, adapter) in model.adapters_mut() {
        adapter.record_gates = on;
    }
}

/// The gates each router recorded in the last forward, with their layer and module.
pub fn recorded_gates(model: &Llama) -> Vec<(usize, &'static str, Tensor)> {
    model
        .adapters()
        .filter_map(|(l, module, adapter)| {
            let gates = adapter.last_gates.lock().unwrap_or_else(|e| e.into_inner());
            Some((l, module, gates.clone()?))
        })
        .collect()
}

/// Router statistics of the last forward (needs [`record_gates`] on), with one readback for
/// every router together.
pub fn router_stats(model: &Llama) -> Result<Vec<RouterStats>> {
    match gates_readout(model)? {
        None => Ok(Vec::new()),
        Some((routers, all)) => Ok(stats_from(&routers, &all.to_vec_f32()?)),
    }
}

/// [`router_stats`] for async callers (a browser: the readback is awaited).
pub async fn router_stats_async(model: &Llama) -> Result<Vec<RouterStats>> {
    match gates_readout(model)? {
        None => Ok(Vec::new()),
        Some((routers, all)) => Ok(stats_from(&routers, &all.to_vec_f32_async().await?)),
    }
}

/// One router's gates in a readout: its layer, module, tokens T and experts E.
type RouterGates = (usize, &'static str, usize, usize);

/// Every recorded gate tensor flattened into one, to read back at once; None when no router
/// recorded gates.
fn gates_readout(model: &Llama) -> Result<Option<(Vec<RouterGates>, Tensor)>> {
    let gates = recorded_gates(model);
    if gates.is_empty() {
        return Ok(None);
    }
    let all = hydralora_engine::no_grad(|| {
        let flat: Vec<Tensor> = gates
            .iter()
            .map(|(_, _, g)| g.reshape(&[g.numel()]))
            .collect::<std::result::Result<_, _>>()?;
        Tensor::concat(&flat, 0)
    })?;
    let routers = (gates.iter())
        .map(|(layer, module, g)| (*layer, *module, g.dim(0), g.dim(1)))
        .collect();
    Ok(Some((routers, all)))
}

/// The statistics of each router from the readout's host values (`[T, E]` per router, in turn).
fn stats_from(routers: &[RouterGates], all: &[f32]) -> Vec<RouterStats> {
    let mut offset = 0;
    routers
        .iter()
        .map(|&(layer, module, t, n)| {
            let host = &all[offset..offset + t * n];
            offset += t * n;
            let mut mean_gate = vec![0.0f64; n];
            let mut entropy = 0.0f64;
            for row in host.chunks(n) {
                for (i, &p) in row.iter().enumerate() {
                    mean_gate[i] += p as f64;
                    if p > 0.0 {
                        entropy -= p as f64 * (p as f64).ln();
                    }
                }
            }
            let t = t.max(1) as f64;
            RouterStats {
                layer,
                module: module.to_string(),
                mean_gate: mean_gate.iter().map(|m| (m / t) as f32).collect(),
                entropy: (entropy / t) as f32,
            }
        })
        .collect()
}

/// The load-balancing loss over the recorded gates: coef * sum over routers of
/// E * sum_i (mean_t g[t, i])^2 for E experts, smallest (= coef per router) when every expert gets an equal
/// share. A `[1]` tensor in the graph; None when no router recorded gates.
pub fn balance_loss(model: &Llama, coef: f32) -> Result<Option<Tensor>> {
    let mut total: Option<Tensor> = None;
    for (_, _, g) in recorded_gates(model) {
        let experts = g.dim(1) as f32;
        let share = g.mean(0)?; // [E]
        let term = share.mul(&share)?.sum_all()?.scale(experts * coef)?;
        total = Some(match total {
            Some(t) => t.add(&term)?,
            None => term,
        });
    }
    Ok(total)
}

/// Mean gate weight of each expert per category, averaged over every router of the model:
/// one row per category of `groups` (name, its token ids), one column per expert.
pub fn gates_by_category(
    model: &mut Llama,
    groups: &[(String, Vec<Vec<u32>>)],
) -> Result<Vec<Vec<f32>>> {
    Ok(gates_by_category_and_layer(model, groups)?.overall)
}

/// [`gates_by_category`] for async callers (the browser page's heatmap): the same means,
/// each forward's gates awaited. Gate recording is left as it was found (the trainer keeps
/// it on for the balance loss).
pub async fn gates_by_category_async(
    model: &mut Llama,
    groups: &[(String, Vec<Vec<u32>>)],
) -> Result<Vec<Vec<f32>>> {
    let was_recording = model.adapters().any(|(_, _, a)| a.record_gates);
    record_gates(model, true);
    let mut rows = Vec::with_capacity(groups.len());
    for (_, sequences) in groups {
        let mut overall = GateMean::default();
        for ids in sequences {
            no_grad(|| model.hidden_states(ids, 1, None))?; // the gates are all it needs
            for s in router_stats_async(model).await? {
                overall.add(&s.mean_gate);
            }
        }
        rows.push(overall.mean());
    }
    record_gates(model, was_recording);
    Ok(rows)
}

/// Mean gate weights per category, over all layers and layer by layer
/// ([`gates_by_category_and_layer`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CategoryGates {
    /// `[category][expert]`: the mean over every router of the model.
    pub overall: Vec<Vec<f32>>,
    /// `[category][layer][expert]`: the mean over the routers of each decoder layer (the
    /// layer's adapted modules); a layer without a router has an empty row.
    pub by_layer: Vec<Vec<Vec<f32>>>,
}

/// Mean gate weight of each expert per category of `groups` (name, its token ids), over
/// every router and over each layer's routers. Each sequence runs alone (no padding in the
/// gates); each (sequence, router) pair weighs the same.
pub fn gates_by_category_and_layer(
    model: &mut Llama,
    groups: &[(String, Vec<Vec<u32>>)],
) -> Result<CategoryGates> {
    let layers = model.config.num_hidden_layers;
    record_gates(model, true);
    let mut gates = CategoryGates {
        overall: Vec::with_capacity(groups.len()),
        by_layer: Vec::with_capacity(groups.len()),
    };
    for (_, sequences) in groups {
        let mut overall = GateMean::default();
        let mut by_layer = vec![GateMean::default(); layers];
        for ids in sequences {
            no_grad(|| model.hidden_states(ids, 1, None))?; // the gates are all it needs
            for s in router_stats(model)? {
                overall.add(&s.mean_gate);
                by_layer[s.layer].add(&s.mean_gate);
            }
        }
        gates.overall.push(overall.mean());
        gates
            .by_layer
            .push(by_layer.iter().map(GateMean::mean).collect());
    }
    record_gates(model, false);
    Ok(gates)
}

/// A running mean of gate vectors.
#[derive(Clone, Default)]
struct GateMean {
    sum: Vec<f64>, // [E]
    count: usize,
}

impl GateMean {
    fn add(&mut self, gate: &[f32]) {
        self.sum.resize(gate.len(), 0.0);
        for (acc, &g) in self.sum.iter_mut().zip(gate) {
            *acc += f64::from(g);
        }
        self.count += 1;
    }

    fn mean(&self) -> Vec<f32> {
        let n = self.count.max(1) as f64;
        self.sum.iter().map(|s| (s / n) as f32).collect()
    }
}
