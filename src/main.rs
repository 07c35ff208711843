//! The `ferry` binary: parses the command line, runs the command, and turns its
//! outcome into an exit code (SPEC §7). Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ferry::cli::Cli::parse();
    match ferry::cli::run(cli) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(err) => {
            eprintln!("ferry: {err}");
            ExitCode::from(err.code())
        }
    }
}
