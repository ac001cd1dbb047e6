//! Command-line arguments (clap derive) and the dispatch to each subcommand.

use clap::{Parser, Subcommand};

pub mod bench;
mod demo;
mod export;
mod info;
mod router_svg;
mod run_model;
mod train;
mod weights;

/// Errors a subcommand reports before the program exits with status 1.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;

/// LoRA and HydraLoRA fine-tuning of LLaMA-family models on any GPU, through WGSL compute
/// shaders (wgpu: Vulkan, Metal, DX12).
#[derive(Debug, Parser)]
#[command(name = "hydralora", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the GPU adapter the engine picks: backend, device type, driver, features, limits.
    ///
    /// `WGPU_BACKEND` (vulkan, metal, dx12, gl) and `WGPU_ADAPTER_NAME` (a substring of the
    /// adapter's name) steer the choice.
    Info,
    /// The built-in demo: a small model learns four tasks with LoRA and with HydraLoRA at
    /// equal budgets, nothing downloaded; prints per-task exact match.
    Demo(demo::DemoArgs),
    /// Fine-tune a LoRA or HydraLoRA adapter on a model folder and JSONL data.
    Train(Box<train::TrainArgs>),
    /// Perplexity and exact match (greedy generation) on JSONL data, by category.
    Eval(run_model::EvalArgs),
    /// Generate text from a prompt (KV cache; greedy, temperature, top-k, top-p).
    Generate(run_model::GenerateArgs),
    /// Check this GPU and driver against reference logits, losses and gradients.
    Verify(run_model::VerifyArgs),
    /// Fold a LoRA adapter into the base weights; writes a Hugging Face folder, or one GGUF
    /// file llama.cpp and Ollama run (`--format gguf`, quantized by `--weights`).
    Merge(run_model::MergeArgs),
    /// Write an adapter for another tool: llama.cpp's GGUF LoRA (`--format gguf`) with an
    /// Ollama Modelfile beside it.
    Export(export::ExportArgs),
    /// Micro-benchmarks of the engine's kernels.
    Bench(bench::BenchArgs),
}

pub fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Info => info::run(),
        Command::Demo(args) => demo::run(args),
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => run_model::eval_cmd(args),
        Command::Generate(args) => run_model::generate_cmd(args),
        Command::Verify(args) => run_model::verify_cmd(args),
        Command::Merge(args) => run_model::merge_cmd(args),
        Command::Export(args) => export::export_cmd(args),
        Command::Bench(args) => bench::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_argument_definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}
