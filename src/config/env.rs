//! The process environment, behind a trait so the loader can be tested without touching
//! the real one (setting variables in a multi-threaded test process is a race).

use std::path::{Path, PathBuf};

pub trait Env {
    fn var(&self, name: &str) -> Option<String>;

    /// `path` made absolute against the current directory.
    fn absolute(&self, path: &Path) -> PathBuf {
        std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
    }

    /// systemd's `STATE_DIRECTORY` (its first entry) when set, else `/var/lib/ferry`.
    fn state_dir(&self) -> PathBuf {
        match self.var("STATE_DIRECTORY") {
            Some(dirs) => match dirs.split(':').next() {
                Some(first) if !first.is_empty() => self.absolute(Path::new(first)),
                _ => PathBuf::from(super::DEFAULT_STATE_DIR),
            },
            None => PathBuf::from(super::DEFAULT_STATE_DIR),
        }
    }
}

/// The real environment of this process.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
    }
}
