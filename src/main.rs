//! `hydralora`: the command-line program. Today: `info` (the GPU the engine would use) and
//! `bench` (kernel micro-benchmarks). Training, generation and the demo arrive with the model.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
