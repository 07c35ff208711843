//! `ferry backup DEST`: a consistent copy of the store while the daemon runs (SQLite's
//! online backup; JSON files under shared locks), with a note of what it holds.

use std::path::Path;

use super::{CliError, Exit, Stdout};
use crate::config::{Backend, Config};
use crate::store::{self, now_ms, rfc3339};

pub fn backup(config: &Config, dest: &Path) -> Result<Exit, CliError> {
    if dest.exists() && config.storage.backend == Backend::Sqlite {
        return Err(CliError::Usage(format!(
            "{} exists already; name a new file (ferry does not overwrite backups)",
            dest.display()
        )));
    }
    let mut store = store::open(config)?;
    let taken = rfc3339(now_ms());
    store.backup(dest)?;
    let mut note = format!(
        "ferry {} backup of the {} store\ntaken: {taken}\nfrom: {}\n\ncollection: records, delivered, pending, failed\n",
        env!("CARGO_PKG_VERSION"),
        config.storage.backend.as_str(),
        match config.storage.backend {
            Backend::Sqlite => config.storage.sqlite_path.display().to_string(),
            Backend::Json => config.storage.json_dir.display().to_string(),
        }
    );
    for collection in &config.collections {
        let c = store.counts(collection.name.as_str())?;
        note.push_str(&format!(
            "{}: {}, {}, {}, {}\n",
            collection.name, c.records, c.success, c.pending, c.failed
        ));
    }
    note.push_str(match config.storage.backend {
        Backend::Sqlite => "\nto restore: stop ferry, copy this file over storage.sqlite_path (remove its -wal and -shm files), start ferry\n",
        Backend::Json => "\nto restore: stop ferry, copy these files into storage.json_dir, start ferry\n",
    });
    let note_path = match config.storage.backend {
        Backend::Sqlite => {
            let mut name = dest.as_os_str().to_owned();
            name.push(".txt");
            std::path::PathBuf::from(name)
        }
        Backend::Json => dest.join("BACKUP.txt"),
    };
    // Through a temp named with this pid, like the backup: a kill leaves no half note,
    // and the next backup removes the temp.
    store::atomic::write_backup_file(&note_path, note.as_bytes())
        .map_err(|e| CliError::Runtime(format!("writing {}: {e}", note_path.display())))?;
    let mut out = Stdout::new();
    out.line(format_args!(
        "backup written to {} (note: {})",
        dest.display(),
        note_path.display()
    ))?;
    out.line(note.trim_end())?;
    out.finish()?;
    Ok(Exit::Done)
}
