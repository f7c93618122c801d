//! Where a node's chat messages go: the [`MessageSink`] trait and its classified errors.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ids::MessageId;
use crate::model::ChatMessage;

/// What the receiver did with a delivered batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReport {
    /// Messages stored for the first time.
    pub persisted: u64,
    /// Messages it already had (a redelivery), skipped.
    pub duplicates: u64,
}

/// Why a batch was not accepted, classified once at the sink's boundary so the outbox can
/// act on it without knowing the transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Network error, timeout, 5xx or 429: keep the batch and retry with backoff,
    /// no sooner than `retry_after` when the receiver gave one.
    #[error("receiver unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The receiver's requested delay (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The batch is too large for the receiver (413): split it.
    #[error("batch too large: {message}")]
    PayloadTooLarge {
        /// What the receiver said.
        message: String,
    },
    /// The receiver rejected messages on their merits (400/422). When it named them,
    /// `message_ids` lists exactly those; when empty, the culprit must be isolated by splitting.
    #[error("messages rejected: {message}")]
    Rejected {
        /// What the receiver said.
        message: String,
        /// The rejected messages, when the receiver said which.
        message_ids: Vec<MessageId>,
    },
    /// The credentials were refused (401/403): keep everything and retry slowly, since a
    /// token may be rotated.
    #[error("credentials refused: {message}")]
    Unauthorized {
        /// What the receiver said.
        message: String,
    },
    /// The sink is pointed at the wrong place (404 for the endpoint, a bad URL): keep
    /// everything, retry slowly and show the condition. Never a reason to drop messages.
    #[error("sink misconfigured: {message}")]
    Misconfigured {
        /// What went wrong.
        message: String,
    },
}

impl SinkError {
    /// Whether the very same batch may succeed later (everything but a size or content
    /// rejection, which needs the batch split or a message dropped).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Unauthorized { .. } | Self::Misconfigured { .. }
        )
    }
}

/// Receives batches of chat messages: the control plane over HTTP, a store in-process, or
/// a test double. Implementations must be idempotent by message id: a batch may arrive twice.
#[async_trait]
pub trait MessageSink: Send + Sync + fmt::Debug + 'static {
    /// Delivers one batch (all messages of one workspace). Returns only after the receiver
    /// has durably accepted it, or with a classified error.
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError>;
}

#[async_trait]
impl<T: MessageSink + ?Sized> MessageSink for Arc<T> {
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
        (**self).deliver(batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_sink_is_object_safe() {
        fn takes(_: Option<Arc<dyn MessageSink>>) {}
        takes(None);
    }

    #[test]
    fn only_batch_level_conditions_are_retryable_as_is() {
        assert!(
            SinkError::Unavailable {
                message: String::new(),
                retry_after: None
            }
            .is_retryable()
        );
        assert!(
            SinkError::Unauthorized {
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            SinkError::Misconfigured {
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            !SinkError::PayloadTooLarge {
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            !SinkError::Rejected {
                message: String::new(),
                message_ids: vec![]
            }
            .is_retryable()
        );
    }
}
