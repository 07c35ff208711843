//! A small HTTP receiver on loopback that answers every request `201 {"id": n}`, for
//! `make run-example` (and benchmarks). Not part of ferry's installed files.
//!
//! receiver [--addr-file PATH] [--quiet] [--idle-exit SECONDS]
//!
//! It prints one line per record received (unless --quiet), writes the address it
//! listens on to --addr-file, and exits after --idle-exit seconds without a request
//! (default 60), so a forgotten receiver never lingers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let accepted = tokio::time::timeout(options.idle_exit, listener.accept()).await;
        let Ok(accepted) = accepted else {
            if !options.quiet {
                eprintln!(
                    "receiver: idle for {:?}, exiting after {} records",
                    options.idle_exit,
                    counter.load(Ordering::Relaxed)
                );
            }
            return Ok(());
        };
        let (socket, _) = accepted?;
        tokio::spawn(connection(
            socket,
            Arc::clone(&counter),
            options.quiet,
            options.idle_exit,
        ));
    }
}

async fn connection(mut socket: TcpStream, counter: Arc<AtomicU64>, quiet: bool, idle: Duration) {
    let _ = socket.set_nodelay(true);
    let mut buffer: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Head.
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match tokio::time::timeout(idle, socket.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        buffer.drain(..head_end + 4);
        while buffer.len() < length {
            match tokio::time::timeout(idle, socket.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let id = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if !quiet {
            let request_line = head.lines().next().unwrap_or("");
            let body = String::from_utf8_lossy(&buffer[..length]);
            let shown: String = body.chars().take(160).collect();
            println!(
                "{request_line} → 201 id {id}: {shown}{}",
                if body.len() > shown.len() { "…" } else { "" }
            );
        }
        buffer.drain(..length);
        let answer = format!("{{\"id\":{id}}}");
        let response = format!(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
