//! Why delivery stopped or pauses, sorted by what can be done about it: the user
//! fixes the config, the store heals or is repaired, or it is a bug.

use std::time::Duration;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Something the user must fix in the config or in a file it names (exit 78).
    #[error("{0}")]
    Config(String),
    /// The store failed; [`SyncError::retry_after`] says when a loop tries again.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store failed its integrity check; ferry will not run on it.
    #[error("{0}")]
    Damaged(String),
    /// A bug or a broken runtime (a task that panicked): waiting mends nothing.
    #[error("{0}")]
    Internal(String),
}

impl SyncError {
    /// How long a delivery loop waits before it tries again after this error, or
    /// `None` when waiting cannot help and the error must reach the user.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncError::Store(err) => Some(err.retry_after()),
            SyncError::Config(_) | SyncError::Damaged(_) | SyncError::Internal(_) => None,
        }
    }
}
