//! A small HTTP receiver on loopback that answers every request `201 {"id": n}`, for
//! `make run-example` (and benchmarks). Not part of ferry's installed files.
//!
//! receiver [--addr-file PATH] [--quiet] [--idle-exit SECONDS]
//!
//! It prints one line per record received (unless --quiet), writes the address it
//! listens on to --addr-file, and exits after --idle-exit seconds without a request
//! (default 60), so a forgotten receiver never lingers.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use ferry_devkit::receiver;

struct Options {
    addr_file: Option<String>,
    quiet: bool,
    idle_exit: Duration,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        addr_file: None,
        quiet: false,
        idle_exit: Duration::from_secs(60),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr-file" => {
                options.addr_file = Some(args.next().ok_or("--addr-file needs a path")?)
            }
            "--quiet" => options.quiet = true,
            "--idle-exit" => {
                let secs = args.next().ok_or("--idle-exit needs seconds")?;
                options.idle_exit =
                    Duration::from_secs(secs.parse().map_err(|_| "--idle-exit needs seconds")?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> std::process::ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(err) => {
            eprintln!("receiver: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("receiver: {err}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("receiver: {err}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve(options: Options) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    if let Some(path) = &options.addr_file {
        std::fs::write(path, format!("http://{addr}\n"))?;
    }
    if !options.quiet {
        eprintln!("receiver: listening on http://{addr}");
    }
    let print: Option<receiver::OnRequest> = (!options.quiet).then(|| {
        Arc::new(|id: u64, request_line: &str, body: &[u8]| {
            let body = String::from_utf8_lossy(body);
            let shown: String = body.chars().take(160).collect();
            println!(
                "{request_line} → 201 id {id}: {shown}{}",
                if body.len() > shown.len() { "…" } else { "" }
            );
        }) as receiver::OnRequest
    });
    let answered = receiver::serve(listener, options.idle_exit, print, Duration::ZERO).await?;
    if !options.quiet {
        eprintln!(
            "receiver: idle for {:?}, exiting after {answered} records",
            options.idle_exit
        );
    }
    Ok(())
}
