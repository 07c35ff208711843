//! The `ferry-receiver` binary: parses the command line, runs the command, and turns
//! its outcome into an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

// mimalloc: a batch of 200 records is thousands of small allocations (JSON values,
// strings, statement parameters); glibc's malloc took 40 % of a receiver's CPU under
// `make fleet`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use ferry_receiver::cli::{dispatch, Cli, Exit};

fn main() -> ExitCode {
    let exit = dispatch(Cli::parse());
    match &exit {
        Exit::Ok => {}
        Exit::Failed(message) => eprintln!("ferry-receiver: {message}"),
        Exit::Config(message) => eprintln!("{message}"),
    }
    ExitCode::from(exit.code())
}
