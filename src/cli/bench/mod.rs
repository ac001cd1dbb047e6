//! `hydralora bench ...`: micro-benchmarks, the baseline for speed work.
//!
//! Each benchmark is a module with its clap arguments and a `run`; they share the timing
//! loop (`timing::measure`: warm-up, then timed runs that each end in a device
//! synchronize) and the output (`report`: an aligned table, or one JSON object per line).

use clap::{Args, Subcommand};

use super::CliResult;

pub mod matmul;
pub mod report;
pub mod step;
pub mod timing;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Matmul throughput (f32, or f16 weights): square N x N x N products, or the skinny
    /// shapes of LoRA.
    Matmul(matmul::MatmulArgs),
    /// One training step (forward, backward, AdamW) on a benchmark config: s/step, tokens/s,
    /// FLOPs, GFLOP/s, pool memory.
    Step(step::StepArgs),
    /// An inference forward pass on a benchmark config: tokens/s.
    Forward(step::ForwardArgs),
}

pub fn run(args: BenchArgs) -> CliResult {
    match args.command {
        BenchCommand::Matmul(args) => matmul::run(args),
        BenchCommand::Step(args) => step::run_step(args),
        BenchCommand::Forward(args) => step::run_forward(args),
    }
}
