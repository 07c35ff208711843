//! Reading one HTTP/1.1 request off a kept-alive connection, as the loopback servers
//! of the tests and of the model check do: the head, then a body by Content-Length
//! or chunked, gunzipped when it came with `Content-Encoding: gzip`.

use std::collections::HashMap;
use std::io::Read as _;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// One request as it came.
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    /// The body, decoded when it came gzip-compressed.
    pub body: Vec<u8>,
    /// The body's size as it came over the wire (compressed, or not).
    pub wire_bytes: usize,
}

/// What a server takes before it gives up on a connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes buffered while the head is read.
    pub head: usize,
    /// Bytes of body (and buffered while it is read).
    pub body: usize,
    /// How long one read may wait for bytes; `None`: as long as it takes.
    pub wait: Option<Duration>,
}

/// More bytes into `buffer`; `None` when the peer closed, a read failed or waited
/// too long, or `buffer` already holds more than `cap`.
async fn fill(
    socket: &mut TcpStream,
    buffer: &mut Vec<u8>,
    cap: usize,
    wait: Option<Duration>,
) -> Option<()> {
    if buffer.len() > cap {
        return None;
    }
    let mut chunk = [0u8; 64 * 1024];
    let n = match wait {
        Some(wait) => tokio::time::timeout(wait, socket.read(&mut chunk))
            .await
            .ok()?
            .ok()?,
        None => socket.read(&mut chunk).await.ok()?,
    };
    if n == 0 {
        return None;
    }
    buffer.extend_from_slice(&chunk[..n]);
    Some(())
}

/// The next request on `socket` (`buffer` keeps what was read past it); `None` when
/// the connection ends, breaks or goes past `limits`.
pub async fn read_request(
    socket: &mut TcpStream,
    buffer: &mut Vec<u8>,
    limits: Limits,
) -> Option<Request> {
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        fill(socket, buffer, limits.head, limits.wait).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    buffer.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = buffer.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(socket, buffer, limits.body, limits.wait).await?;
            };
            let size_text = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buffer.drain(..line_end + 2);
            while buffer.len() < size + 2 {
                fill(socket, buffer, limits.body, limits.wait).await?;
            }
            body.extend_from_slice(&buffer[..size]);
            buffer.drain(..size + 2);
            if size == 0 {
                break body;
            }
            if body.len() > limits.body {
                return None;
            }
        }
    } else {
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if length > limits.body {
            return None;
        }
        while buffer.len() < length {
            fill(socket, buffer, limits.body, limits.wait).await?;
        }
        buffer.drain(..length).collect()
    };
    let wire_bytes = body.len();
    let body = if headers
        .get("content-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"))
    {
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut decoded)
            .ok()?;
        decoded
    } else {
        body
    };
    Some(Request {
        method,
        path,
        headers,
        body,
        wire_bytes,
    })
}
