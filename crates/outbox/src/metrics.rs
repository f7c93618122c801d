//! What the host can read from a running flusher.

use std::time::Duration;

use kiln_core::WorkspaceId;

/// The state of delivery, worst route first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Condition {
    /// Delivering normally (or nothing to deliver).
    #[default]
    Healthy,
    /// Transient failures (network, 5xx, 429); retrying with backoff.
    Retrying,
    /// No sink is registered for a route that has messages.
    NoSink,
    /// The sink reports a misconfiguration (404, bad URL); retrying slowly, nothing dropped.
    Misconfigured,
    /// Credentials refused (401/403); retrying slowly until a rotated token works.
    AuthFailed,
    /// Failing continuously for longer than `MSG_RETRY_MAX_ELAPSED_TIME_MS`; still retrying,
    /// nothing dropped.
    Stalled,
}

/// Messages that left the outbox without delivery, by reason (rows, notices included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Evicted because the outbox was full.
    pub overflow: u64,
    /// Rejected by the receiver (400/422).
    pub rejected: u64,
    /// Too large for the receiver even alone (413).
    pub too_large: u64,
    /// Unreadable rows.
    pub corrupt: u64,
}

impl Dropped {
    /// All reasons together.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.overflow + self.rejected + self.too_large + self.corrupt
    }
}

/// A snapshot of the outbox and its flusher. Counters count since this process opened the
/// outbox; `pending` and `oldest_pending_age` describe the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxMetrics {
    /// Rows waiting for delivery.
    pub pending: u64,
    /// Age of the oldest pending message (by its `created_at`).
    pub oldest_pending_age: Option<Duration>,
    /// Messages stored by `enqueue` (duplicates of pending ids not counted).
    pub enqueued: u64,
    /// Drop notices the outbox queued itself.
    pub notices: u64,
    /// Rows acknowledged by a sink and removed.
    pub delivered: u64,
    /// Of those, how many the receiver said it already had.
    pub receiver_duplicates: u64,
    /// Delivery attempts made (batches sent to a sink).
    pub batches_sent: u64,
    /// Failed attempts whose messages were kept for another try.
    pub retried: u64,
    /// Dropped rows by reason.
    pub dropped: Dropped,
    /// The most recent delivery error.
    pub last_error: Option<String>,
    /// The worst condition over all routes.
    pub condition: Condition,
    /// Routes not [`Condition::Healthy`], with their condition.
    pub troubled_routes: Vec<(WorkspaceId, Condition)>,
}

impl OutboxMetrics {
    /// Credentials were refused on some route (a token may need rotating).
    #[must_use]
    pub fn auth_failed(&self) -> bool {
        self.troubled_routes
            .iter()
            .any(|(_, c)| *c == Condition::AuthFailed)
    }
}
