//! The files the config names that hold what must not leak or be wrong: the bearer
//! token (`remote.token_file`) and the extra certificate authority (`remote.ca_file`).
//! They are read and checked here, so `ferry config check` reports a problem with the
//! key that names the file, as `ferry run` would meet it. The token's `Debug` and
//! `Display` never show it.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{ConfigError, ConfigProblem, Origin, Remote};

/// The bearer token.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// The token itself, for the `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A problem with a file the config names, said with the key that names it.
fn problem(path: &Path, key: &str, message: String) -> ConfigError {
    ConfigError::single(ConfigProblem {
        origin: Origin::WholeFile(path.to_path_buf()),
        key: Some(key.to_string()),
        message,
    })
}

impl Remote {
    /// The bearer token from `token_file`, if one is set: refused when others can read
    /// the file, or when it is not one line of printable characters.
    pub fn token(&self) -> Result<Option<Token>, ConfigError> {
        let Some(path) = self.token_file.as_deref() else {
            return Ok(None);
        };
        let key = "remote.token_file";
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| problem(path, key, format!("cannot read {shown}: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(problem(
                path,
                key,
                format!(
                    "{shown} can be read by other users (mode {mode:o}); run `sudo chmod 600 {shown}` \
                     (and `sudo chown ferry: {shown}` for the service), then start ferry again"
                ),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| problem(path, key, format!("cannot read {shown}: {e}")))?;
        let token = text.trim();
        let printable = token.bytes().all(|b| (0x20..0x7f).contains(&b));
        if token.is_empty() || !printable {
            return Err(problem(
                path,
                key,
                format!("{shown} must hold the token alone, on one line of printable characters"),
            ));
        }
        Ok(Some(Token(token.to_string())))
    }

    /// The PEM certificates of `ca_file`, if one is set: refused when it cannot be read
    /// or holds none.
    pub fn ca_certificates(&self) -> Result<Vec<Vec<u8>>, ConfigError> {
        let Some(path) = self.ca_file.as_deref() else {
            return Ok(Vec::new());
        };
        let key = "remote.ca_file";
        let shown = path.display();
        let pem = std::fs::read(path)
            .map_err(|e| problem(path, key, format!("cannot read {shown}: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| problem(path, key, format!("{shown} is not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(problem(
                path,
                key,
                format!("{shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
            ));
        }
        Ok(vec![pem])
    }

    /// Every file this section names, checked as `ferry run` will read it.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(err) = self.token() {
            problems.extend(err.problems);
        }
        if let Err(err) = self.ca_certificates() {
            problems.extend(err.problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}
