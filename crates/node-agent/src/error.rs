//! The crate's error type.

use std::time::Duration;

/// What can go wrong in the agent host, classified so callers know whether to retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A setting is missing or malformed.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The control plane answered `410 Gone`: this node must stop everything.
    #[error("the control plane stopped this node")]
    Stopped,
    /// The control plane could not be reached or answered 5xx/429: retry with backoff.
    #[error("control plane unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The server's requested delay, if it gave one.
        retry_after: Option<Duration>,
    },
    /// The control plane refused the request (4xx other than 410/429).
    #[error("control plane rejected the request ({status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The body, shortened.
        message: String,
    },
    /// A git command failed.
    #[error("git {command} failed: {message}")]
    Git {
        /// The git subcommand.
        command: String,
        /// Its stderr, shortened.
        message: String,
    },
    /// The git server refused the credentials (or asked for some and there were none).
    #[error("git {command} refused: authentication failed for {url}")]
    GitAuth {
        /// The git subcommand.
        command: String,
        /// The repository URL, without user information.
        url: String,
    },
    /// The agent process could not be started or broke the protocol.
    #[error("agent error: {0}")]
    Agent(String),
    /// The message outbox failed.
    #[error("outbox error: {0}")]
    Outbox(String),
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    /// Whether the same call may succeed later.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// Cuts `text` to at most `max` bytes on a character boundary, for error messages.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
