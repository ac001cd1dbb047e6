//! The commands that use a model without training it: `generate`, `eval`, `verify`, `merge`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use hydralora::engine::Device;
use hydralora::model::adapter::load_adapter;
use hydralora::model::adapter::merge_lora;
use hydralora::model::data::{read_jsonl, tokenize, Example, PromptTemplate, ReadOptions};
use hydralora::model::demo::exact_match;
use hydralora::model::llama::codec::{load_codec, TextCodec};
use hydralora::model::train::evaluate;
use hydralora::model::verify::{check_all, fixtures_root};
use hydralora::model::{generate, GenerationConfig, Llama, SamplingConfig};

use super::CliResult;

/// The model folder, and an adapter folder to put on it.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json), or a GGUF
    /// LLaMA file (model.gguf: f32, f16, bf16, q8_0, q4_0, q4_K, q6_K tensors).
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA or HydraLoRA adapter folder (adapter_config.json + adapter_model.safetensors),
    /// or a llama.cpp GGUF LoRA file (adapter.gguf).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl ModelArgs {
    fn load(
        &self,
        device: &Device,
    ) -> Result<(Llama, Box<dyn TextCodec>), Box<dyn std::error::Error>> {
        let mut model = Llama::load(device, &self.model)?;
        if let Some(dir) = &self.adapter {
            load_adapter(&mut model, dir)?;
        }
        let codec = load_codec(&self.model, &model.config)?;
        Ok((model, codec))
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    /// Most new tokens [default: generation_config.json's max_new_tokens, else 128].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// 0 = greedy [default: generation_config.json's, else 0].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this probability.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn generate_cmd(a: GenerateArgs) -> CliResult {
    let device = Device::new()?;
    let (model, codec) = a.model.load(&device)?;
    let gen = GenerationConfig::from_dir(&a.model.model)?;
    let mut prompt: Vec<u32> = codec.bos_id().into_iter().collect();
    prompt.extend(codec.encode(&a.prompt)?);
    let sampling = SamplingConfig {
        max_new_tokens: a.max_tokens.or(gen.max_new_tokens).unwrap_or(128),
        temperature: a
            .temperature
            .or(gen
                .temperature
                .filter(|_| gen.do_sample.unwrap_or(false))
                .map(|t| t as f32))
            .unwrap_or(0.0),
        top_k: a.top_k.or(gen.top_k),
        top_p: a.top_p.or(gen.top_p.map(|p| p as f32)),
        seed: a.seed,
        stop_tokens: if gen.eos_token_ids.is_empty() {
            model.config.eos_token_ids.clone()
        } else {
            gen.eos_token_ids.clone()
        },
        use_cache: true,
    };
    let mut out = std::io::stdout();
    print!("{}", a.prompt);
    // Decode the growing sequence and print what is new: multi-byte pieces appear whole.
    let mut generated = Vec::new();
    let mut shown = String::new();
    let mut failure = None;
    generate(&model, &prompt, &sampling, |t| {
        generated.push(t);
        match codec.decode(&generated) {
            Ok(text) => {
                if let Some(new) = text.strip_prefix(shown.as_str()) {
                    print!("{new}");
                    let _ = out.flush();
                }
                shown = text;
                true
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    println!();
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL data in any of the training formats; a `category` field breaks the numbers down.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Skip the greedy-generation exact match (perplexity only).
    #[arg(long)]
    pub no_generate: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub skip_bad_lines: bool,
}

pub fn eval_cmd(a: EvalArgs) -> CliResult {
    if a.data.is_empty() {
        return Err("--data is required".into());
    }
    let device = Device::new()?;
    let (model, codec) = a.model.load(&device)?;
    let (examples, _) = read_jsonl(
        &a.data,
        &ReadOptions {
            skip_bad_lines: a.skip_bad_lines,
            template: PromptTemplate::alpaca(),
        },
    )?;
    let (tokens, _) = tokenize(
        &examples,
        codec.as_ref(),
        a.max_len.min(model.config.max_position_embeddings),
    )?;
    let stats = evaluate(&model, &tokens, 8)?;
    let em: BTreeMap<String, f64> = if a.no_generate {
        BTreeMap::new()
    } else {
        let labelled: Vec<Example> = examples
            .iter()
            .map(|e| Example {
                category: Some(e.category.clone().unwrap_or_else(|| "all".into())),
                ..e.clone()
            })
            .collect();
        exact_match(&model, codec.as_ref(), &labelled)?
    };
    if a.json {
        let per: BTreeMap<&String, serde_json::Value> = stats
            .per_category
            .iter()
            .map(|(c, l)| {
                (
                    c,
                    serde_json::json!({"loss": l, "perplexity": l.exp(), "exact_match": em.get(c)}),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"loss": stats.loss, "perplexity": stats.loss.exp(), "tokens": stats.tokens, "exact_match": em, "per_category": per})
        );
        return Ok(());
    }
    println!(
        "{:<16} {:>10} {:>12} {:>12}",
        "category", "loss", "perplexity", "exact match"
    );
    for (c, l) in &stats.per_category {
        let e = em
            .get(c)
            .map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
        println!("{c:<16} {l:>10.4} {:>12.3} {e:>12}", l.exp());
    }
    let total = if em.is_empty() {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * em.values().sum::<f64>() / em.len() as f64)
    };
    println!(
        "{:<16} {:>10.4} {:>12.3} {total:>12}  ({} tokens)",
        "all",
        stats.loss,
        stats.loss.exp(),
        stats.tokens
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A folder of reference cases [default: $HYDRALORA_FIXTURES, else ../shared/fixtures].
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
}

pub fn verify_cmd(a: VerifyArgs) -> CliResult {
    let root = a
        .fixtures
        .unwrap_or_else(|| fixtures_root("../shared/fixtures"));
    let device = Device::new()?;
    println!(
        "device: {} ({}, {})",
        device.info().name,
        device.info().backend,
        device.info().driver
    );
    println!(
        "{:<22} {:<52} {:>10} {:>10}  verdict",
        "case", "check", "error", "tolerance"
    );
    let checks = check_all(&device, &root)?;
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if failed > 0 {
        return Err(format!(
            "{failed} of {} checks failed: this device or driver does not compute correctly",
            checks.len()
        )
        .into());
    }
    println!("all {} checks passed", checks.len());
    Ok(())
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The base: a Hugging Face folder or a GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter folder or llama.cpp GGUF LoRA file (HydraLoRA adapters cannot be merged:
    /// their mixture is per token).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The folder (`--format hf`) or file (`--format gguf`) to write.
    #[arg(long)]
    pub out: PathBuf,
    /// hf: a Hugging Face folder; gguf: one GGUF file for llama.cpp and Ollama.
    #[arg(long, value_enum, default_value = "hf")]
    pub format: super::export::MergeFormat,
    /// The GGUF file's weight format: f32, f16, bf16, q8_0, q4_0, q4_k (llama.cpp's Q4_K_M mix:
    /// output and some attn_v/ffn_down in q6_k), q6_k. Norms stay f32.
    #[arg(long, default_value = "f16")]
    pub weights: String,
}

pub fn merge_cmd(a: MergeArgs) -> CliResult {
    if a.format == super::export::MergeFormat::Gguf {
        return super::export::merge_gguf(&a.model, &a.adapter, &a.out, &a.weights);
    }
    merge_lora(&a.model, &a.adapter, &a.out)?;
    println!("merged model written to {}", a.out.display());
    Ok(())
}
