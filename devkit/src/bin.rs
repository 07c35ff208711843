//! Finding the binaries a benchmark or a check drives: they are built beside it.

use std::path::{Path, PathBuf};

/// `target/<profile>/<name>` for a program running as `target/<profile>/examples/…`
/// (where `cargo build --examples` puts it), or `given` when the user named one.
/// An error says how to build it.
pub fn beside_examples(name: &str, given: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program's path: {e}"))?
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join(name))
            .ok_or_else(|| format!("cannot find the {name} binary: pass its path"))?,
    };
    if !path.is_file() {
        return Err(format!(
            "{} is not built: run `cargo build --workspace --bins --examples` (with --release for figures)",
            path.display()
        ));
    }
    Ok(path)
}
