//! The router heatmaps of a HydraLoRA adapter (`train`, `eval --router-svg`): the mean gate
//! of each expert per data category over all layers, and the same layer by layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hydralora::model::adapter::{gates_by_category_and_layer, Method};
use hydralora::model::data::TokenizedExample;
use hydralora::model::report::heatmap_svg;
use hydralora::model::Llama;

/// Whether the model carries a HydraLoRA adapter (the only kind with a router).
pub fn is_hydra(model: &Llama) -> bool {
    (model.adapter.as_ref()).is_some_and(|a| a.method == Method::Hydra)
}

/// The file beside `path` that holds the layer-by-layer heatmap: `router.svg` ->
/// `router-by-layer.svg`.
pub fn by_layer_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}-by-layer.svg"))
}

/// Writes `path` (rows: categories, columns: experts, all layers) and
/// [`by_layer_path`]`(path)` (rows: layers, columns: category and expert), from the gates of
/// `examples` grouped by category (examples without one are "all"), at most `cap` per
/// category when given. Returns the files written.
pub fn write_router_svgs(
    model: &mut Llama,
    examples: &[TokenizedExample],
    cap: Option<usize>,
    path: &Path,
) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut groups: BTreeMap<String, Vec<Vec<u32>>> = BTreeMap::new();
    for example in examples {
        let name = example.category.clone().unwrap_or_else(|| "all".into());
        let group = groups.entry(name).or_default();
        if cap.is_none_or(|cap| group.len() < cap) {
            group.push(example.ids.clone());
        }
    }
    let groups: Vec<(String, Vec<Vec<u32>>)> = groups.into_iter().collect();
    let gates = gates_by_category_and_layer(model, &groups)?;
    let names: Vec<String> = groups.iter().map(|(name, _)| name.clone()).collect();
    let experts = gates.overall.first().map_or(0, Vec::len);
    let expert_names: Vec<String> = (0..experts).map(|e| format!("expert {e}")).collect();
    heatmap_svg(
        path,
        "router: mean gate weight per category (all layers)",
        &names,
        &expert_names,
        &gates.overall,
    )?;
    // [layer][category * E + expert]
    let layers = model.config.num_hidden_layers;
    let by_layer: Vec<Vec<f32>> = (0..layers)
        .map(|layer| {
            (gates.by_layer.iter())
                .flat_map(|per_layer| per_layer[layer].iter().copied())
                .collect()
        })
        .collect();
    let layer_names: Vec<String> = (0..layers).map(|l| format!("layer {l}")).collect();
    let columns: Vec<String> = (names.iter())
        .flat_map(|name| (0..experts).map(move |e| format!("{name} e{e}")))
        .collect();
    let layer_path = by_layer_path(path);
    heatmap_svg(
        &layer_path,
        "router: mean gate weight per layer, by category and expert",
        &layer_names,
        &columns,
        &by_layer,
    )?;
    Ok(vec![path.to_path_buf(), layer_path])
}
