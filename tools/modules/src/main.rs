//! `modules`: prints the import graph between the top-level modules of a Rust crate's `src`
//! directory and its cycles (see the library's documentation for what counts as an import).
//!
//! ```text
//! cargo run -q -p iotrules-modules -- host/src
//! ```

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: modules [--dot] <src-dir>

Shows the import graph between the top-level modules of a Rust crate's src directory
(src/X.rs and src/X/ are module X; lib.rs and main.rs, the root, are left out) and finds
its cycles. Prints the layers (bottom up), every import with the names it uses, then each
cycle with the files and names that make its imports.

options:
  --dot       print a Graphviz dot graph instead (cycles in red)
  -h, --help  print this help

exit code: 0 without a cycle, 1 with one, 2 on a usage or I/O error
";

/// What the command line asks for.
enum Request {
    Help,
    Analyze { src_dir: PathBuf, dot: bool },
}

fn parse_arguments(arguments: impl Iterator<Item = String>) -> Result<Request, String> {
    let mut dot = false;
    let mut src_dir = None;
    for argument in arguments {
        match argument.as_str() {
            "-h" | "--help" => return Ok(Request::Help),
            "--dot" => dot = true,
            option if option.starts_with('-') => return Err(format!("unknown option {option}")),
            _ if src_dir.is_some() => return Err("only one src directory, please".to_owned()),
            _ => src_dir = Some(PathBuf::from(argument)),
        }
    }
    let src_dir = src_dir.ok_or("no src directory given")?;
    Ok(Request::Analyze { src_dir, dot })
}

fn main() -> ExitCode {
    match parse_arguments(std::env::args().skip(1)) {
        Ok(Request::Help) => print(USAGE, ExitCode::SUCCESS),
        Ok(Request::Analyze { src_dir, dot }) => analyze(&src_dir, dot),
        Err(problem) => {
            eprintln!("modules: {problem}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn analyze(src_dir: &std::path::Path, dot: bool) -> ExitCode {
    let graph = match iotrules_modules::analyze(src_dir) {
        Ok(graph) => graph,
        Err(error) => {
            eprintln!("modules: {error}");
            return ExitCode::from(2);
        }
    };
    let output = if dot {
        iotrules_modules::render_dot(&graph)
    } else {
        iotrules_modules::render_text(&graph, &src_dir.display().to_string())
    };
    let code = if graph.cycles().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    print(&output, code)
}

/// Writes `text` to stdout and exits with `code`, or with 2 if stdout is gone.
fn print(text: &str, code: ExitCode) -> ExitCode {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => code,
        Err(error) => {
            eprintln!("modules: cannot write the output: {error}");
            ExitCode::from(2)
        }
    }
}
