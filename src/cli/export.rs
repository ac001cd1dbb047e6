//! `export`: an adapter in another tool's format (today llama.cpp's GGUF LoRA, with an Ollama
//! `Modelfile` beside it), and `merge --format gguf`.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use hydralora::engine::{DType, Device};
use hydralora::model::adapter::approximate::{hydra_as_lora, mean_gates, HeadChoice};
use hydralora::model::adapter::gguf::HostLora;
use hydralora::model::adapter::{load_adapter, merge_lora_gguf, Method};
use hydralora::model::data::{
    read_jsonl, tokenize, ChatTemplate, Example, PromptTemplate, ReadOptions,
};
use hydralora::model::demo::exact_match;
use hydralora::model::llama::codec::{load_codec, TextCodec};
use hydralora::model::llama::gguf::{gguf_path, GgmlType, GgufModel};
use hydralora::model::llama::LlamaConfig;
use hydralora::model::train::evaluate;
use hydralora::model::Llama;

use super::CliResult;

/// What `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// llama.cpp's GGUF LoRA adapter (what its convert_lora_to_gguf.py writes), for
    /// llama.cpp's `--lora`, Ollama's `ADAPTER`, LM Studio and the llama.cpp bindings.
    Gguf,
}

/// The type an exported adapter's matrices are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AdapterDtype {
    /// 32-bit floats: the adapter exactly.
    F32,
    /// IEEE half floats: half the size, about 3 decimal digits.
    F16,
    /// bfloat16: half the size, f32's range, about 2 decimal digits.
    Bf16,
}

impl AdapterDtype {
    fn ggml_type(self) -> GgmlType {
        match self {
            AdapterDtype::F32 => GgmlType::F32,
            AdapterDtype::F16 => GgmlType::F16,
            AdapterDtype::Bf16 => GgmlType::BF16,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The base model the adapter was trained on (a Hugging Face folder or a GGUF file): its
    /// heads set llama.cpp's row order of q/k, and the Modelfile's `FROM` names it.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter folder, or a llama.cpp GGUF LoRA file. A HydraLoRA adapter has no
    /// llama.cpp equivalent (its router mixes the heads per token) and is refused, with what
    /// to export instead.
    #[arg(long)]
    pub adapter: PathBuf,
    /// gguf: llama.cpp's LoRA GGUF (`blk.N.attn_q.weight.lora_a`/`lora_b`, adapter.lora.alpha),
    /// plus an Ollama `Modelfile` beside it (`FROM <model>`, `ADAPTER ./<out>`), so
    /// `ollama create NAME -f Modelfile` works as it is.
    #[arg(long, value_enum, default_value = "gguf")]
    pub format: ExportFormat,
    /// The file to write (atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// How the matrices are stored.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: AdapterDtype,
    /// For a HydraLoRA adapter, which no llama.cpp LoRA equals: export head N alone, or
    /// `mean`, the heads weighted by each router's mean gates over `--data`. Either is an
    /// approximation; with `--data` its cost in loss and exact match is measured and printed.
    #[arg(long)]
    pub head: Option<HeadChoice>,
    /// JSONL eval data (any training format) to measure the approximation on; `--head mean`
    /// also averages the router's gates over it.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Measure the loss only, without the greedy-generation exact match.
    #[arg(long)]
    pub no_generate: bool,
    #[arg(long)]
    pub skip_bad_lines: bool,
}

/// The hyper-parameters of the base at `path` (a folder or a GGUF file), read on the host.
fn base_config(path: &Path) -> Result<LlamaConfig, Box<dyn std::error::Error>> {
    Ok(match gguf_path(path) {
        Some(file) => GgufModel::open(file)?.config().clone(),
        None => LlamaConfig::from_dir(path)?,
    })
}

pub fn export_cmd(a: ExportArgs) -> CliResult {
    let ExportFormat::Gguf = a.format;
    let config = base_config(&a.model)?;
    let lora = match &a.head {
        None => HostLora::open(&a.adapter, &config)?,
        Some(choice) => approximate_hydra(&a, choice)?,
    };
    let name = a
        .adapter
        .file_stem()
        .map_or("adapter".into(), |s| s.to_string_lossy().to_string());
    lora.write_gguf(&a.out, &config, a.dtype.ggml_type(), &name)?;
    let modelfile = write_modelfile(&a.model, &a.out)?;
    println!(
        "LoRA adapter (rank {}, scale {}, {} weights adapted) written to {}\n\
         Ollama: {} (`ollama create NAME -f {}`)\n\
         llama.cpp: llama-cli -m BASE.gguf --lora {}",
        lora.config.r,
        lora.config.scale(),
        lora.pairs.len(),
        a.out.display(),
        modelfile.display(),
        modelfile.display(),
        a.out.display()
    );
    Ok(())
}

/// The LoRA standing in for the HydraLoRA adapter `a.adapter` (`--head`), with its cost on
/// `--data` measured and printed when given.
fn approximate_hydra(
    a: &ExportArgs,
    choice: &HeadChoice,
) -> Result<HostLora, Box<dyn std::error::Error>> {
    let device = Device::new()?;
    let mut model = Llama::load(&device, &a.model)?;
    let cfg = load_adapter(&mut model, &a.adapter)?;
    if cfg.method != Method::Hydra {
        return Err(format!(
            "--head is for HydraLoRA adapters; `{}` is a LoRA: export it without --head",
            a.adapter.display()
        )
        .into());
    }
    if a.data.is_empty() {
        if *choice == HeadChoice::Mean {
            return Err(
                "--head mean averages the router's gates over --data: give eval JSONL".into(),
            );
        }
        let lora = hydra_as_lora(&model, choice, None)?;
        println!("note: without --data the cost of exporting one head is not measured");
        return Ok(lora);
    }
    let codec = load_codec(&a.model, &model.config)?;
    let (examples, _) = read_jsonl(
        &a.data,
        &ReadOptions {
            skip_bad_lines: a.skip_bad_lines,
            template: PromptTemplate::alpaca(),
            chat_template: ChatTemplate::from_model(&a.model)?,
        },
    )?;
    let (tokens, _) = tokenize(
        &examples,
        codec.as_ref(),
        a.max_len.min(model.config.max_position_embeddings),
    )?;
    let gates = match choice {
        HeadChoice::Mean => {
            let sequences: Vec<Vec<u32>> = tokens.iter().map(|t| t.ids.clone()).collect();
            Some(mean_gates(&mut model, &sequences)?)
        }
        HeadChoice::One(_) => None,
    };
    let lora = hydra_as_lora(&model, choice, gates.as_ref())?;
    let hydra = measure(&model, codec.as_ref(), &examples, &tokens, a.no_generate)?;
    lora.attach_to(&mut model)?;
    let approx = measure(&model, codec.as_ref(), &examples, &tokens, a.no_generate)?;
    let what = match choice {
        HeadChoice::One(k) => format!("head {k}"),
        HeadChoice::Mean => "router-weighted mean".into(),
    };
    println!("{:<26} {:>10} {:>12}", "on --data", "loss", "exact match");
    for (name, (loss, em)) in [("HydraLoRA (here)", hydra), (what.as_str(), approx)] {
        let em = em.map_or("-".to_string(), |e| format!("{:.1}%", 100.0 * e));
        println!("{name:<26} {loss:>10.4} {em:>12}");
    }
    let em_cost = match (hydra.1, approx.1) {
        (Some(h), Some(x)) => format!(", exact match {:+.1} points", 100.0 * (x - h)),
        _ => String::new(),
    };
    println!(
        "cost of the approximation: loss {:+.4}{em_cost}",
        approx.0 - hydra.0
    );
    Ok(lora)
}

/// Mean token loss and (unless `no_generate`) the mean per-category exact match: what `eval`
/// reports, through the same functions.
fn measure(
    model: &Llama,
    codec: &dyn TextCodec,
    examples: &[Example],
    tokens: &[hydralora::model::data::TokenizedExample],
    no_generate: bool,
) -> Result<(f32, Option<f64>), Box<dyn std::error::Error>> {
    let stats = evaluate(model, tokens, 8)?;
    if no_generate {
        return Ok((stats.loss, None));
    }
    let labelled: Vec<Example> = examples
        .iter()
        .map(|e| Example {
            category: Some(e.category.clone().unwrap_or_else(|| "all".into())),
            ..e.clone()
        })
        .collect();
    let em = exact_match(model, codec, &labelled)?;
    let mean = em.values().sum::<f64>() / em.len().max(1) as f64;
    Ok((stats.loss, Some(mean)))
}

/// Writes `Modelfile` beside `adapter`: `FROM` the base (absolute), `ADAPTER` the adapter
/// (relative to the Modelfile, as Ollama resolves it).
fn write_modelfile(base: &Path, adapter: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let folder = match adapter.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // A folder holding model.gguf is named by its file: Ollama reads GGUF files, not folders of them.
    let base = std::fs::canonicalize(gguf_path(base).unwrap_or_else(|| base.to_path_buf()))?;
    let file_name = adapter
        .file_name()
        .ok_or("--out names no file")?
        .to_string_lossy();
    let text = format!("FROM {}\nADAPTER ./{file_name}\n", base.display());
    let path = folder.join("Modelfile");
    hydralora::model::llama::weights::write_atomically(&path, |out| {
        std::io::Write::write_all(out, text.as_bytes())
    })?;
    Ok(path)
}

/// What `merge` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MergeFormat {
    /// A Hugging Face folder (model.safetensors f32, config.json, the tokenizer files).
    Hf,
    /// One GGUF model file llama.cpp and Ollama run as it is (hyper-parameters, vocabulary,
    /// llama.cpp's q/k order), stored as `--weights`.
    Gguf,
}

/// `merge --format gguf`: prints what was written.
pub fn merge_gguf(model: &Path, adapter: &Path, out: &Path, weights: &str) -> CliResult {
    let dtype = DType::from_weight_name(weights).ok_or_else(|| {
        format!("--weights {weights}: not one of f32, f16, bf16, q8_0, q4_0, q4_k, q6_k")
    })?;
    let summary = merge_lora_gguf(model, adapter, out, dtype)?;
    let types: Vec<String> = summary
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    println!(
        "merged GGUF model written to {} (tensors: {}; vocabulary: {})",
        out.display(),
        types.join(", "),
        summary.vocabulary
    );
    if summary.vocabulary == "none" {
        println!(
            "note: the base has no tokenizer, so the file has none (`tokenizer.ggml.model` = \
             none): llama.cpp runs it on token ids only"
        );
    }
    Ok(())
}
