//! Config errors: each one says which file, where in it, which key, and what was expected.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a problem was found: a place in a config file, or an environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    /// The file as a whole (it is missing, unreadable, or the problem has no position).
    WholeFile(PathBuf),
    Env(String),
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub origin: Origin,
    /// The key's path, `remote.timeout` or `collections[2].name`, when one is known.
    pub key: Option<String>,
    pub message: String,
}

/// Everything wrong with a configuration; a config is either valid or rejected whole.
/// The process exits 78 (`EX_CONFIG`) on it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl ConfigError {
    pub fn single(problem: ConfigProblem) -> Self {
        ConfigError {
            problems: vec![problem],
        }
    }

    pub fn whole_file(path: &Path, message: impl Into<String>) -> Self {
        Self::single(ConfigProblem {
            origin: Origin::WholeFile(path.to_path_buf()),
            key: None,
            message: message.into(),
        })
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { path, line, column } => {
                write!(f, "{}:{line}:{column}: ", path.display())?
            }
            Origin::WholeFile(path) => write!(f, "{}: ", path.display())?,
            Origin::Env(var) => write!(f, "environment variable {var}: ")?,
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "config error: {problem}")?;
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one_in_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, text.find('=').unwrap()), (1, 3));
        let second_eq = text.rfind('=').unwrap();
        assert_eq!(line_column(text, second_eq), (2, 4));
    }
}
