//! Unit tests that need the crate's internals (the commit-failure hook, the flusher step).

mod crash_points;
mod enqueue_in;
mod group_commit;
mod model;
mod overflow;
mod recovery;

use kiln_core::{ChatMessage, LifecycleClock, ManualClock, MessageId, Role, SessionId};

/// A message of `session` with `content`, stamped by the epoch clock.
pub(crate) fn message(session: SessionId, content: &str) -> ChatMessage {
    ChatMessage {
        id: MessageId::new(),
        session_id: session,
        role: Role::Assistant,
        content: content.into(),
        tool: None,
        seq: None,
        created_at: ManualClock::starting_at_epoch().now(),
    }
}
