//! Every word ferry says to systemd (`sd_notify`), in one place. Outside systemd (no
//! `NOTIFY_SOCKET`) each call does nothing.
//!
//! The datagrams go out on a non-blocking socket: a listener that stops reading (a
//! busy or stuck service manager, a test harness) fills the socket's small queue, and
//! a blocking send would then freeze the daemon's only runtime thread. A state change
//! (READY, RELOADING, STOPPING) is tried again for up to a second; a STATUS line or a
//! watchdog ping that finds the queue full is dropped.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// How a message is treated when the socket's queue is full.
#[derive(Clone, Copy, PartialEq)]
enum Delivery {
    Retry,
    BestEffort,
}

fn send(message: &str, delivery: Delivery) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> io::Result<()> {
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        let attempts = if delivery == Delivery::Retry { 50 } else { 1 };
        for attempt in 1..=attempts {
            match socket.send_to_addr(message.as_bytes(), &addr) {
                Ok(_) => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock && attempt < attempts => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    })();
    if let Err(err) = sent {
        let first = message.lines().next().unwrap_or("");
        tracing::debug!("sd_notify {first}: {err}");
    }
}

/// One `STATUS=` value: a single line.
fn status_field(line: &str) -> String {
    format!("STATUS={}\n", line.replace('\n', " "))
}

pub fn ready(status: &str) {
    send(
        &format!("READY=1\n{}", status_field(status)),
        Delivery::Retry,
    );
}

pub fn reloading() {
    send("RELOADING=1\n", Delivery::Retry);
}

pub fn stopping() {
    send(
        &format!(
            "STOPPING=1\n{}",
            status_field("stopping: finishing requests in flight")
        ),
        Delivery::Retry,
    );
}

pub fn status(line: &str) {
    send(&status_field(line), Delivery::BestEffort);
}

pub fn watchdog() {
    send("WATCHDOG=1\n", Delivery::BestEffort);
}

/// How often to ping the watchdog: half of `WatchdogSec=`, when systemd asks for pings.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}
