//! The `iotrules` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the decode path makes a dozen small allocations per event, and glibc's malloc
/// cost a tenth of the time per event in profiles. The decode bench uses the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    iotrules::service::disable_transparent_huge_pages();
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
