//! The loopback receiver shared by `examples/receiver.rs` and the benchmark: every
//! request is answered `201 {"id": n}` on a kept-alive HTTP/1.1 connection (a batch
//! too: an answer without `results` accepts every member, docs/PROTOCOL.md §3). Small on
//! purpose, so it is not what a benchmark measures (the benchmark measures its
//! ceiling first).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Called with each request's answered id, first line and body, when the request is
/// complete.
pub type OnRequest = Arc<dyn Fn(u64, &str, &[u8]) + Send + Sync>;

/// Serves `listener` until no request arrives for `idle` (a connection idle that
/// long closes too), each answer written `delay` after its request was read (a
/// server across a WAN link, as a Pi on home broadband sees a cloud server). Returns
/// how many requests were answered.
pub async fn serve(
    listener: TcpListener,
    idle: Duration,
    on_request: Option<OnRequest>,
    delay: Duration,
) -> std::io::Result<u64> {
    let counter = Arc::new(AtomicU64::new(0));
    let mut seen = 0;
    loop {
        let Ok(accepted) = tokio::time::timeout(idle, listener.accept()).await else {
            // Idle means no request either, not only no new connection.
            let answered = counter.load(Ordering::Relaxed);
            if answered == seen {
                return Ok(answered);
            }
            seen = answered;
            continue;
        };
        let (socket, _) = accepted?;
        tokio::spawn(connection(
            socket,
            Arc::clone(&counter),
            on_request.clone(),
            idle,
            delay,
        ));
    }
}

async fn connection(
    mut socket: TcpStream,
    counter: Arc<AtomicU64>,
    on_request: Option<OnRequest>,
    idle: Duration,
    delay: Duration,
) {
    let _ = socket.set_nodelay(true);
    let mut buffer: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
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
        if let Some(hook) = &on_request {
            hook(id, head.lines().next().unwrap_or(""), &buffer[..length]);
        }
        buffer.drain(..length);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
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
