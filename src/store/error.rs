//! Store errors. Each says what failed, where (file, collection, record key), and what
//! the user can do about it.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error at {path} while {op}: {source}{}", io_hint(source))]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("SQLite error in {path} while {op}: {source}{}", sqlite_hint(source))]
    Sqlite {
        path: PathBuf,
        op: String,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "{path}:{line}:{column}: not valid JSON ({message}). ferry will not write to this \
         file until it is repaired: fix it by hand, restore it from the backups folder, or \
         run `ferry check --repair`"
    )]
    CorruptJson {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error(
        "{path}: {message}. ferry will not write to this file until it is repaired: fix it \
         by hand, restore it from the backups folder, or run `ferry check --repair`"
    )]
    BadJsonShape { path: PathBuf, message: String },

    #[error("collection {name:?} is not in the config (it has: {}); add a [[collections]] table for it", known.join(", "))]
    UnknownCollection { name: String, known: Vec<String> },

    #[error("collection {collection}{}: {message}", key.as_ref().map(|k| format!(", record {k}")).unwrap_or_default())]
    InvalidRecord {
        collection: String,
        key: Option<String>,
        message: String,
    },

    #[error("{path}: table {table:?} (collection {collection}): {message}")]
    Schema {
        path: PathBuf,
        table: String,
        collection: String,
        message: String,
    },
}

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, op, source }
    }

    pub fn sqlite(
        path: impl Into<PathBuf>,
        op: impl Into<String>,
    ) -> impl FnOnce(rusqlite::Error) -> StoreError {
        let path = path.into();
        let op = op.into();
        move |source| StoreError::Sqlite { path, op, source }
    }

    /// How long a delivery loop waits before it tries again: soon for a database
    /// another program holds for a moment, longer for a full disk (space must be
    /// freed first), and a minute for what waiting alone rarely mends (a damaged
    /// file, a table that does not fit the config), so the log says it once a minute
    /// rather than twelve times.
    pub fn retry_after(&self) -> std::time::Duration {
        use std::time::Duration;
        let busy = |source: &rusqlite::Error| {
            matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            )
        };
        match self {
            _ if self.is_disk_full() => Duration::from_secs(30),
            StoreError::Sqlite { source, .. } if busy(source) => Duration::from_secs(1),
            StoreError::Io { source, .. }
                if matches!(
                    source.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                ) =>
            {
                Duration::from_secs(5)
            }
            _ => Duration::from_secs(60),
        }
    }

    /// The disk (or the filesystem) is full: retrying later, once space is freed, helps.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => source.kind() == io::ErrorKind::StorageFull,
            StoreError::Sqlite { source, .. } => {
                source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            _ => false,
        }
    }
}

fn io_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::StorageFull => "; the disk is full: free some space (nothing was lost, the write will be retried)",
        io::ErrorKind::PermissionDenied => "; check the owner and mode of the file and its folder (the ferry service runs as user ferry)",
        io::ErrorKind::ReadOnlyFilesystem => "; the filesystem is read-only (under systemd, add the folder to ReadWritePaths=)",
        _ => "",
    }
}

fn sqlite_hint(err: &rusqlite::Error) -> &'static str {
    use rusqlite::ErrorCode;
    match err.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            "; this file is not a SQLite database (or it is damaged): check storage.sqlite_path, \
             or run `ferry check --repair`"
        }
        Some(ErrorCode::DatabaseCorrupt) => "; the database is damaged: run `ferry check --repair`",
        Some(ErrorCode::DiskFull) => {
            "; the disk is full: free some space (nothing was lost, the write will be retried)"
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "; another program holds a lock on the database for too long"
        }
        Some(ErrorCode::ReadOnly) => "; the database is read-only: check the file's owner and mode",
        Some(ErrorCode::CannotOpen) => "; check that the folder exists and ferry may write to it",
        _ => "",
    }
}
