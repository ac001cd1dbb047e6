//! `hydralora`: the command-line program. Parses the arguments (`cli::Cli`), runs one subcommand
//! (info, demo, train, eval, generate, verify, merge, bench), and exits with status 1 on an error.

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
