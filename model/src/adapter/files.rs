//! Adapter folders as the ecosystem writes them: `adapter_config.json` and
//! `adapter_model.safetensors`, in PEFT's layout for LoRA and the official HydraLoRA layout
//! (`lora_A`, `lora_B0..lora_B{E-1}` for E experts, `lora_route`, `lora_nums` = E) for HydraLoRA.

use std::path::Path;

use hydralora_engine::{no_grad, Tensor};

use super::{attach, AdapterConfig, Method};
use crate::error::{ModelError, Result};
use crate::llama::weights::{safetensors_bytes, write_atomically, WeightFile};
use crate::llama::{Layer, Llama};

/// The adapter's settings file in an adapter folder (PEFT's name).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// The adapter's tensors file in an adapter folder (PEFT's name).
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The file key prefix of an adapted module, e.g. `base_model.model.model.layers.0.mlp.up_proj`.
pub fn module_key(layer: usize, module: &str) -> String {
    format!("base_model.model.{}", Layer::module_path(layer, module))
}

/// One adapter tensor as it is stored in the file: its key, shape and where it lives.
pub struct AdapterTensor<'a> {
    /// The key in `adapter_model.safetensors`, e.g.
    /// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
    pub key: String,
    /// The stored shape (an expert's B: `[d_out, r]`).
    pub shape: Vec<usize>,
    /// The parameter holding it (the experts' B are columns of the stacked B; A and the router
    /// are rows of the down-projection).
    pub param: &'a Tensor,
    /// Which part of `param` it is: all of it, some columns (an expert's B) or some rows (A, the
    /// router).
    pub part: Part,
}

/// Where a stored tensor sits in its parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The whole parameter.
    All,
    /// Columns `start..start + len` (an expert's B, of the stacked B).
    Columns(usize, usize),
    /// Rows `start..start + len` (A or the router, of the down-projection).
    Rows(usize, usize),
}

/// Every adapter tensor of the model with its file key, in model order.
pub fn adapter_tensors(model: &Llama) -> Vec<AdapterTensor<'_>> {
    let Some(cfg) = &model.adapter else {
        return vec![];
    };
    let mut out = Vec::new();
    for (l, module, ad) in model.adapters() {
        let key = module_key(l, module);
        let (r, d_in, d_out) = (ad.rank(), ad.down.dim(1), ad.b.dim(0));
        out.push(AdapterTensor {
            key: format!("{key}.lora_A.weight"),
            shape: vec![r, d_in],
            param: &ad.down,
            part: if ad.routed {
                Part::Rows(0, r)
            } else {
                Part::All
            },
        });
        match cfg.method {
            Method::Lora => out.push(AdapterTensor {
                key: format!("{key}.lora_B.weight"),
                shape: ad.b.shape().to_vec(),
                param: &ad.b,
                part: Part::All,
            }),
            Method::Hydra => {
                for i in 0..cfg.experts {
                    out.push(AdapterTensor {
                        key: format!("{key}.lora_B{i}.weight"),
                        shape: vec![d_out, r],
                        param: &ad.b,
                        part: Part::Columns(i * r, r),
                    });
                }
                out.push(AdapterTensor {
                    key: format!("{key}.lora_route.weight"),
                    shape: vec![ad.experts(), d_in],
                    param: &ad.down,
                    part: Part::Rows(r, ad.experts()),
                });
            }
        }
    }
    out
}

/// The values of `t` (a stored adapter tensor) read from `source` (the parameter or its
/// gradient, the parameter's shape), on the host.
pub fn read_adapter_tensor(t: &AdapterTensor, source: &Tensor) -> Result<Vec<f32>> {
    Ok(adapter_part(t, source.to_vec_f32()?, source.dim(1)))
}

/// The part of a parameter (`host`, rows of `width`) that the stored tensor `t` is.
fn adapter_part(t: &AdapterTensor, host: Vec<f32>, width: usize) -> Vec<f32> {
    match t.part {
        Part::All => host,
        Part::Columns(start, len) => host
            .chunks(width)
            .flat_map(|row| row[start..start + len].to_vec())
            .collect(),
        Part::Rows(start, len) => host[start * width..(start + len) * width].to_vec(),
    }
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if
/// needed), each atomically. Fails when the model has no adapter.
///
/// ```no_run
/// use std::path::Path;
/// use hydralora_model::adapter::{attach, load_adapter, save_adapter};
/// use hydralora_model::{engine::Device, AdapterConfig, Llama};
/// # fn main() -> hydralora_model::Result<()> {
/// let device = Device::new()?;
/// let mut model = Llama::load(&device, "models/TinyLlama-1.1B")?;
/// let cfg = AdapterConfig::hydra(8, 16.0, 3, &["q_proj", "v_proj"]);
/// attach(&mut model, &cfg, 0)?;
/// save_adapter(&model, Path::new("runs/adapter"))?;
///
/// let mut fresh = Llama::load(&device, "models/TinyLlama-1.1B")?;
/// assert_eq!(load_adapter(&mut fresh, Path::new("runs/adapter"))?, cfg);
/// # Ok(()) }
/// ```
pub fn save_adapter(model: &Llama, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io("create", dir, e))?;
    let files = adapter_files(model)?;
    write_atomically(dir.join(ADAPTER_WEIGHTS_FILE), |out| {
        std::io::Write::write_all(out, &files.weights)
    })?;
    write_atomically(dir.join(ADAPTER_CONFIG_FILE), |out| {
        std::io::Write::write_all(out, files.config.as_bytes())
    })
}

/// The two files of a PEFT adapter folder, in memory.
pub struct AdapterFiles {
    /// `adapter_model.safetensors`.
    pub weights: Vec<u8>,
    /// `adapter_config.json`.
    pub config: String,
}

/// The adapter as the files [`save_adapter`] writes (for a front end without a file system:
/// the browser page offers them as downloads). Reads the adapter's tensors back (blocking).
pub fn adapter_files(model: &Llama) -> Result<AdapterFiles> {
    let params: Vec<Vec<f32>> = adapter_tensors(model)
        .iter()
        .map(|t| t.param.to_vec_f32())
        .collect::<std::result::Result<_, _>>()?;
    adapter_files_from(model, params)
}

/// [`adapter_files`] from the host copies of [`adapter_tensors`]' params (`t.param` of each,
/// in that order), read by the caller, e.g. asynchronously in a browser.
pub fn adapter_files_from(model: &Llama, params: Vec<Vec<f32>>) -> Result<AdapterFiles> {
    let cfg = model
        .adapter
        .as_ref()
        .ok_or_else(|| ModelError::Input("the model has no adapter to save".into()))?;
    let tensors = adapter_tensors(model);
    if params.len() != tensors.len() {
        return Err(ModelError::Input(format!(
            "the adapter has {} tensors, {} were given",
            tensors.len(),
            params.len()
        )));
    }
    let values: Vec<Vec<f32>> = (tensors.iter().zip(params))
        .map(|(t, host)| adapter_part(t, host, t.param.dim(1)))
        .collect();
    let entries: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .zip(&values)
        .map(|(t, v)| (t.key.clone(), t.shape.clone(), v.as_slice()))
        .collect();
    Ok(AdapterFiles {
        weights: safetensors_bytes(ADAPTER_WEIGHTS_FILE, &entries, &[("format", "pt")])?,
        config: serde_json::to_string_pretty(&cfg.to_json_for(model.base_name.as_deref()))
            .expect("a JSON value serialises"),
    })
}

/// Loads an adapter folder (PEFT LoRA or HydraLoRA), or a llama.cpp GGUF LoRA file
/// (`*.gguf`, see [`HostLora::from_gguf`](super::HostLora::from_gguf)), onto the model. Every
/// tensor the config implies must be in the file with the right shape, and nothing else may
/// be; errors name the module, the tensor and both shapes.
pub fn load_adapter(model: &mut Llama, dir: &Path) -> Result<AdapterConfig> {
    if super::is_gguf_file(dir) {
        return super::HostLora::from_gguf(dir, &model.config)?.attach_to(model);
    }
    let cfg = AdapterConfig::from_file(&dir.join(ADAPTER_CONFIG_FILE))?;
    let file = WeightFile::open(dir.join(ADAPTER_WEIGHTS_FILE))?;
    attach(model, &cfg, 0)?;
    let mut expected = std::collections::HashSet::new();
    // Gather each parameter's full value from its stored pieces, then upload once.
    let mut staged: Vec<(Tensor, Vec<f32>)> = Vec::new();
    for t in adapter_tensors(model) {
        let values = file.expect_f32(&t.key, &t.shape).map_err(|e| match e {
            ModelError::MissingTensor { tensor, file, .. } => ModelError::MissingTensor {
                tensor,
                file,
                expected: Some(t.shape.clone()),
            },
            other => other,
        })?;
        expected.insert(t.key.clone());
        let slot = match staged.iter().position(|(p, _)| p.id() == t.param.id()) {
            Some(i) => i,
            None => {
                staged.push((t.param.clone(), vec![0.0; t.param.numel()]));
                staged.len() - 1
            }
        };
        let full = &mut staged[slot].1;
        let width = t.param.dim(1);
        match t.part {
            Part::All => full.copy_from_slice(&values),
            Part::Columns(start, len) => {
                for (row, chunk) in values.chunks(len).enumerate() {
                    full[row * width + start..row * width + start + len].copy_from_slice(chunk);
                }
            }
            Part::Rows(start, len) => {
                full[start * width..(start + len) * width].copy_from_slice(&values)
            }
        }
    }
    if let Some(extra) = file.names().into_iter().find(|n| !expected.contains(*n)) {
        return Err(ModelError::UnexpectedTensor {
            tensor: extra.to_string(),
            file: file.path().to_path_buf(),
            shape: file.shape(extra).unwrap_or_default().to_vec(),
        });
    }
    no_grad(|| {
        staged
            .iter()
            .try_for_each(|(param, values)| param.write_f32(values))
    })?;
    Ok(cfg)
}
