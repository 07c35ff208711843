//! systemd's end of `NOTIFY_SOCKET`: a real datagram socket a `ferry run` child sends
//! READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and STOPPING=1 to. Every datagram is kept
//! with its arrival time, so a test can ask what came and when.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::BoxError;

/// How long one read waits before the caller's loop looks at its deadline again.
const READ_SLICE: Duration = Duration::from_millis(100);

pub struct NotifySocket {
    socket: UnixDatagram,
    pub path: PathBuf,
    /// Every datagram received so far, with when it came.
    pub received: Vec<(Instant, String)>,
}

impl NotifySocket {
    /// Binds `path` (a socket file left there by an earlier listener is replaced).
    pub fn bind(path: PathBuf) -> io::Result<NotifySocket> {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        socket.set_read_timeout(Some(READ_SLICE))?;
        Ok(NotifySocket {
            socket,
            path,
            received: Vec::new(),
        })
    }

    /// [`Self::bind`] at `dir/notify.sock`, for tests (a failure to bind fails the test).
    pub fn listen(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        NotifySocket::bind(path.clone())
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()))
    }

    /// Reads one datagram if one comes within [`READ_SLICE`]; keeps it.
    fn read_one(&mut self) -> io::Result<bool> {
        let mut buffer = [0u8; 4096];
        match self.socket.recv(&mut buffer) {
            Ok(n) => {
                self.received.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buffer[..n]).into_owned(),
                ));
                Ok(true)
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// Reads what arrives for `time`.
    pub fn collect(&mut self, time: Duration) {
        let end = Instant::now() + time;
        while Instant::now() < end {
            let _ = self.read_one();
        }
    }

    /// Waits (bounded) for a datagram with a line equal to `line` or starting with it,
    /// among those received so far too; returns when it came.
    pub fn wait_for(&mut self, line: &str, limit: Duration) -> Option<Instant> {
        let end = Instant::now() + limit;
        let mut looked = 0;
        loop {
            if let Some((at, _)) = self.received[looked..]
                .iter()
                .find(|(_, m)| m.lines().any(|l| l == line || l.starts_with(line)))
            {
                return Some(*at);
            }
            looked = self.received.len();
            if Instant::now() >= end {
                return None;
            }
            let _ = self.read_one();
        }
    }

    /// How many datagrams since `since` had the line `line`.
    pub fn count_since(&self, since: Instant, line: &str) -> usize {
        self.received
            .iter()
            .filter(|(at, m)| *at >= since && m.lines().any(|l| l == line))
            .count()
    }

    /// Without waiting: whether READY=1 has come (now or before).
    pub fn poll_ready(&mut self) -> io::Result<bool> {
        if !self.has_ready() {
            self.socket.set_nonblocking(true)?;
            while self.read_one()? {}
            self.socket.set_nonblocking(false)?;
        }
        Ok(self.has_ready())
    }

    fn has_ready(&self) -> bool {
        self.received
            .iter()
            .any(|(_, m)| m.lines().any(|l| l == "READY=1"))
    }

    /// Waits until READY=1 comes; returns when it came.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, BoxError> {
        self.wait_for("READY=1", timeout)
            .ok_or_else(|| format!("no READY=1 within {timeout:?}").into())
    }

    /// Forgets what came so far (a child about to be started again).
    pub fn forget(&mut self) -> io::Result<()> {
        self.socket.set_nonblocking(true)?;
        let mut buffer = [0u8; 4096];
        while self.socket.recv(&mut buffer).is_ok() {}
        self.socket.set_nonblocking(false)?;
        self.received.clear();
        Ok(())
    }
}
