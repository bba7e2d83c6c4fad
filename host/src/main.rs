//! The `iotrules` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            // One line, the whole chain of causes: what failed and why.
            eprintln!("iotrules: {error:#}");
            ExitCode::FAILURE
        }
    }
}
