//! Finding the binaries a benchmark or a check drives: they are built beside it.

use std::path::{Path, PathBuf};

/// `target/<profile>/` for a program running as `target/<profile>/examples/…`.
pub fn binaries_dir() -> Result<PathBuf, String> {
    std::env::current_exe()
        .map_err(|e| format!("cannot find this program's path: {e}"))?
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| "cannot find the binaries' folder: pass the binary's path".to_string())
}

/// `target/<profile>/<name>` for a program running as `target/<profile>/examples/…`
/// (where `cargo build --examples` puts it), or `given` when the user named one.
/// An error says how to build it.
pub fn beside_examples(name: &str, given: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match given {
        Some(path) => path,
        None => binaries_dir()?.join(name),
    };
    if !path.is_file() {
        return Err(format!(
            "{} is not built: run `cargo build --workspace --bins --examples` (with --release for figures)",
            path.display()
        ));
    }
    Ok(path)
}
