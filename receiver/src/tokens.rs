//! Per-device bearer tokens, stored hashed (seed 004: "token côté client worker +
//! guard côté serveur").
//!
//! The tokens file has one line per device: `<device_id> sha256:<64 hex digits>`, the
//! SHA-256 of the token; `#` starts a comment. The tokens are 256-bit random strings
//! made by `ferry-receiver token new`, so a plain SHA-256 is enough: there is nothing to
//! guess, and a stolen file reveals no token.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {path}: {source}; check tokens_file in the config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot write the tokens file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Hash → device.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<String, String>,
}

pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Tokens::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Tokens, TokensError> {
        let mut by_hash = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |message: String| TokensError::Line {
                path: path.to_path_buf(),
                line: n + 1,
                message,
            };
            let mut parts = line.split_whitespace();
            let (Some(device), Some(hashed), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(
                    "expected `<device_id> sha256:<hex>` (make one with `ferry-receiver token new DEVICE`)"
                        .into(),
                ));
            };
            let Some(digest) = hashed.strip_prefix("sha256:") else {
                return Err(bad(format!(
                    "expected a hashed token `sha256:<64 hex digits>`, not {hashed:?}: tokens are never stored in clear"
                )));
            };
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the hash needs 64 hex digits".into()));
            }
            if let Some(other) = by_hash.insert(digest.to_ascii_lowercase(), device.to_string()) {
                return Err(bad(format!(
                    "this token is also given to device {other:?}; one token per device"
                )));
            }
        }
        Ok(Tokens { by_hash })
    }

    /// The device a presented token belongs to.
    pub fn device(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&hash(token)).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// A new random token: 32 bytes from the kernel, as 64 hex digits.
pub fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex(&bytes))
}

/// Appends `device sha256:…` for `token` to the tokens file (created 0600 if missing).
pub fn append(path: &Path, device: &str, token: &str) -> Result<(), TokensError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        writeln!(file, "{device} sha256:{}", hash(token))?;
        file.sync_all()
    };
    write().map_err(|source| TokensError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_maps_to_its_device_and_only_the_hash_is_kept() {
        let token = "correct horse";
        let text = format!(
            "# devices\nraspberry-salon sha256:{}  # the salon\n",
            hash(token)
        );
        let tokens = Tokens::parse(Path::new("tokens"), &text).expect("parses");
        assert_eq!(tokens.device(token), Some("raspberry-salon"));
        assert_eq!(tokens.device("wrong"), None);
        assert!(!text.contains(token));
    }

    #[test]
    fn a_clear_token_is_refused_with_its_line() {
        let err = Tokens::parse(Path::new("tokens"), "\nbox1 hunter2\n").expect_err("clear");
        assert!(err.to_string().starts_with("tokens:2: "), "{err}");
    }

    #[test]
    fn generated_tokens_differ() {
        let a = generate().expect("urandom");
        let b = generate().expect("urandom");
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
