//! The commands that use a model without training it: `generate`, `eval`, `verify`, `merge`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use hydralora::engine::Device;
use hydralora::model::adapter::load_adapter;
use hydralora::model::adapter::merge_lora;
use hydralora::model::data::{
    encode_prompt, read_jsonl, render_chat_prompt, tokenize, ChatMessage, ChatTemplate, Example,
    PromptTemplate, ReadOptions,
};
use hydralora::model::demo::{exact_match_with, ExactMatchOptions};
use hydralora::model::llama::codec::{load_codec, TextCodec};
use hydralora::model::train::evaluate;
use hydralora::model::verify::{check_all_at, fixtures_root};
use hydralora::model::{generate, GenerationConfig, Llama, Precision, SamplingConfig};

use super::router_svg::{by_layer_path, is_hydra, write_router_svgs};
use super::train::chat_format;
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

/// Where a model's chat template comes from, for `--help`.
const CHAT_TEMPLATE_SOURCES: &str = "the model's own chat template: chat_template.jinja or \
    tokenizer_config.json's chat_template beside the model, or a GGUF's tokenizer.chat_template; \
    a model without one gets the built-in <|role|> format";

#[derive(Debug, Args)]
#[command(after_help = format!("--chat renders the prompt with {CHAT_TEMPLATE_SOURCES}."))]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to continue (with --chat: the user's message).
    #[arg(long)]
    pub prompt: String,
    /// The prompt is a user message: render it with the model's chat template, as training
    /// renders chat lines, and generate the assistant's reply.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
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
    let (text, prompt) = if a.chat {
        let template = ChatTemplate::from_model(&a.model.model)?;
        eprintln!("chat: {}", chat_format(template.as_ref()));
        chat_prompt(
            template.as_ref(),
            codec.as_ref(),
            a.system.as_deref(),
            &a.prompt,
        )?
    } else {
        (a.prompt.clone(), encode_prompt(codec.as_ref(), &a.prompt)?)
    };
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
    print!("{text}");
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

/// The prompt of a chat's first reply, as text and as ids: `system` and `user` rendered with
/// the model's chat template (whose text carries its own BOS), else in the built-in format.
fn chat_prompt(
    template: Option<&ChatTemplate>,
    codec: &dyn TextCodec,
    system: Option<&str>,
    user: &str,
) -> Result<(String, Vec<u32>), Box<dyn std::error::Error>> {
    let message = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
    };
    let mut messages: Vec<ChatMessage> = system.map(|s| message("system", s)).into_iter().collect();
    messages.push(message("user", user));
    Ok(match template {
        Some(template) => {
            let text = template.render(&messages, true)?;
            let ids = codec.encode(&text)?;
            (text, ids)
        }
        None => {
            let text = render_chat_prompt(&messages);
            let ids = encode_prompt(codec, &text)?;
            (text, ids)
        }
    })
}

#[derive(Debug, Args)]
#[command(after_help = format!("Chat lines are rendered with {CHAT_TEMPLATE_SOURCES}, as in training."))]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL data in any of the training formats; a `category` field breaks the numbers down.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// The prompt template of Alpaca and Dolly lines, with {instruction} and {input}: the
    /// one the adapter was trained with [default: Alpaca].
    #[arg(long)]
    pub template: Option<String>,
    /// Most new tokens per example in the greedy generation [default: the expected
    /// answer's length + 2 tokens].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Examples per forward in the greedy generation (those whose prompts have the same
    /// number of tokens run together; the answers are those of one at a time).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Write the router heatmaps of a HydraLoRA adapter here: the mean gate weight of each
    /// expert per category (all layers), and in <stem>-by-layer.svg layer by layer.
    #[arg(long, value_name = "PATH")]
    pub router_svg: Option<PathBuf>,
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
    let template = match &a.template {
        Some(t) => PromptTemplate::new(t)?,
        None => PromptTemplate::alpaca(),
    };
    let device = Device::new()?;
    let (mut model, codec) = a.model.load(&device)?;
    if a.router_svg.is_some() && !is_hydra(&model) {
        return Err(
            "--router-svg needs a HydraLoRA adapter (--adapter): only HydraLoRA has a \
                    router"
                .into(),
        );
    }
    let chat_template = ChatTemplate::from_model(&a.model.model)?;
    let (examples, report) = read_jsonl(
        &a.data,
        &ReadOptions {
            skip_bad_lines: a.skip_bad_lines,
            template,
            chat_template: chat_template.clone(),
        },
    )?;
    if report.formats.chat > 0 {
        eprintln!("chat lines: {}", chat_format(chat_template.as_ref()));
    }
    let (tokens, _) = tokenize(
        &examples,
        codec.as_ref(),
        a.max_len.min(model.config.max_position_embeddings),
    )?;
    let stats = evaluate(&model, &tokens, 8)?;
    if let Some(path) = &a.router_svg {
        write_router_svgs(&mut model, &tokens, None, path)?;
        eprintln!(
            "router heatmaps written to {} and {}",
            path.display(),
            by_layer_path(path).display()
        );
    }
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
        let mut stop_tokens = model.config.eos_token_ids.clone();
        stop_tokens.extend(GenerationConfig::from_dir(&a.model.model)?.eos_token_ids);
        let options = ExactMatchOptions {
            max_new_tokens: a.max_tokens,
            stop_tokens,
            batch: a.batch.max(1),
        };
        exact_match_with(&model, codec.as_ref(), &labelled, &options)?
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
    /// f32, or mixed (as `train --precision`), checked against the mixed tolerance
    /// (1e-2 relative: nine f16-rounded products in series, see `verify::MIXED_TOLERANCE`).
    #[arg(long, value_name = "PRECISION", value_parser = crate::cli::weights::parse_precision, default_value = "f32")]
    pub precision: Precision,
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
    if a.precision == Precision::Mixed {
        println!("precision: mixed (f16 weights, f16-rounded inputs to their products)");
    }
    let checks = check_all_at(&device, &root, a.precision)?;
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
