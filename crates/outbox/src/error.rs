//! [`OutboxError`]: the one error type of the crate.

use std::path::PathBuf;

/// What went wrong opening or writing the outbox.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A setting is missing or out of range; the message names it.
    #[error("invalid outbox configuration: {0}")]
    InvalidConfig(String),
    /// Another `Outbox` (in this or another process) has the file open.
    #[error("outbox {path} is in use by another process or handle")]
    Locked {
        /// The outbox file.
        path: PathBuf,
    },
    /// SQLite refused a pragma the durability promise depends on (read back after setting).
    #[error("SQLite did not accept `{pragma}`: wanted {wanted}, got {got}")]
    Pragma {
        /// The pragma.
        pragma: &'static str,
        /// What was set.
        wanted: String,
        /// What SQLite reports.
        got: String,
    },
    /// A session already sends to another route; a session belongs to exactly one.
    #[error("session {session} is routed to workspace {existing}, not {requested}")]
    SessionRouteMismatch {
        /// The session.
        session: String,
        /// The route it has.
        existing: String,
        /// The route asked for.
        requested: String,
    },
    /// The outbox holds `MSG_OUTBOX_MAX_SIZE` rows and its overflow policy is
    /// [`Overflow::Reject`](crate::Overflow::Reject): nothing of the call was stored. Try
    /// again once the flusher has delivered.
    #[error("the outbox is full ({max} pending rows); nothing was stored")]
    Full {
        /// The bound (`MSG_OUTBOX_MAX_SIZE`).
        max: usize,
    },
    /// The outbox was closed (its writer thread has stopped).
    #[error("the outbox is closed")]
    Closed,
    /// SQLite or the file system failed. Nothing of the failed call was committed.
    #[error("outbox storage error: {0}")]
    Storage(String),
}

impl OutboxError {
    /// Whether trying the same call again may succeed (a storage hiccup such as a full disk,
    /// or a full outbox that the flusher drains).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Storage(_) | Self::Full { .. })
    }
}

impl From<rusqlite::Error> for OutboxError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<std::io::Error> for OutboxError {
    fn from(e: std::io::Error) -> Self {
        Self::Storage(e.to_string())
    }
}
