//! Live text that agents are streaming right now (`message.delta`), held per session in
//! memory so a viewer who connects late gets the text so far. Deltas are ephemeral: the
//! stored message follows through the node's outbox and replaces them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_core::protocol::MessageDelta;
use kiln_core::{MessageId, ProjectId, SessionId, StoredMessage, UserId};
use serde::Serialize;
use tokio::sync::broadcast;

/// The longest text kept per streaming segment; older text is cut from the front.
const MAX_SEGMENT_BYTES: usize = 256 * 1024;

/// A streaming segment as viewers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveDelta {
    /// The project.
    pub project_id: ProjectId,
    /// The owner (who may see it).
    #[serde(skip)]
    pub owner: UserId,
    /// The session.
    pub session_id: SessionId,
    /// The message the text will be stored as.
    pub segment_id: MessageId,
    /// The text added by this delta.
    pub text: String,
    /// All the text of the segment so far.
    pub text_so_far: String,
}

#[derive(Debug, Default)]
struct Segments {
    /// (session, segment) → (project, owner, text so far), in arrival order per session.
    by_session: HashMap<SessionId, Vec<(MessageId, ProjectId, UserId, String)>>,
    /// segment → session, to clear a segment when its message is stored.
    sessions: HashMap<MessageId, SessionId>,
}

/// Messages this replica just stored, handed to its viewers without a store read (viewers
/// of other replicas hear of them through the store's change feed).
#[derive(Debug, Clone)]
pub struct StoredBatch {
    /// The owner (who may see them).
    pub owner: UserId,
    /// The project.
    pub project_id: ProjectId,
    /// The messages, in cursor order (one session).
    pub messages: Arc<Vec<StoredMessage>>,
}

/// The live deltas of this replica, and its freshly stored messages.
#[derive(Debug)]
pub struct LiveHub {
    segments: Mutex<Segments>,
    tx: broadcast::Sender<LiveDelta>,
    stored: broadcast::Sender<StoredBatch>,
}

impl Default for LiveHub {
    fn default() -> Self {
        Self {
            segments: Mutex::default(),
            tx: broadcast::channel(4096).0,
            stored: broadcast::channel(4096).0,
        }
    }
}

impl LiveHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Segments> {
        self.segments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a delta of a session of `project` owned by `owner`, and tells viewers.
    pub fn push(&self, project: ProjectId, owner: UserId, delta: &MessageDelta) {
        let text_so_far = {
            let mut s = self.lock();
            s.sessions
                .entry(delta.segment_id)
                .or_insert(delta.session_id);
            let list = s.by_session.entry(delta.session_id).or_default();
            let entry = match list.iter_mut().position(|e| e.0 == delta.segment_id) {
                Some(i) => &mut list[i],
                None => {
                    list.push((delta.segment_id, project, owner, String::new()));
                    list.last_mut().expect("just pushed")
                }
            };
            entry.3.push_str(&delta.text);
            if entry.3.len() > MAX_SEGMENT_BYTES {
                let mut cut = entry.3.len() - MAX_SEGMENT_BYTES;
                while !entry.3.is_char_boundary(cut) {
                    cut += 1;
                }
                entry.3.drain(..cut);
            }
            entry.3.clone()
        };
        let _ = self.tx.send(LiveDelta {
            project_id: project,
            owner,
            session_id: delta.session_id,
            segment_id: delta.segment_id,
            text: delta.text.clone(),
            text_so_far,
        });
    }

    /// Forgets segments whose messages are now stored.
    pub fn clear_segments(&self, ids: impl IntoIterator<Item = MessageId>) {
        let mut s = self.lock();
        for id in ids {
            if let Some(session) = s.sessions.remove(&id)
                && let Some(list) = s.by_session.get_mut(&session)
            {
                list.retain(|e| e.0 != id);
                if list.is_empty() {
                    s.by_session.remove(&session);
                }
            }
        }
    }

    /// Forgets every segment of a session (its run ended).
    pub fn clear_session(&self, session: SessionId) {
        let mut s = self.lock();
        if let Some(list) = s.by_session.remove(&session) {
            for e in list {
                s.sessions.remove(&e.0);
            }
        }
    }

    /// The text so far of every segment in `project`'s sessions.
    #[must_use]
    pub fn snapshot(&self, project: ProjectId) -> Vec<LiveDelta> {
        let s = self.lock();
        s.by_session
            .iter()
            .flat_map(|(session, list)| {
                list.iter().filter(|e| e.1 == project).map(|e| LiveDelta {
                    project_id: e.1,
                    owner: e.2,
                    session_id: *session,
                    segment_id: e.0,
                    text: String::new(),
                    text_so_far: e.3.clone(),
                })
            })
            .collect()
    }

    /// Tells this replica's viewers of messages just stored (grouped by session).
    pub fn stored(&self, owner: UserId, project_id: ProjectId, messages: &[StoredMessage]) {
        let mut start = 0;
        while start < messages.len() {
            let session = messages[start].message.session_id;
            let end = messages[start..]
                .iter()
                .position(|m| m.message.session_id != session)
                .map_or(messages.len(), |n| start + n);
            let _ = self.stored.send(StoredBatch {
                owner,
                project_id,
                messages: Arc::new(messages[start..end].to_vec()),
            });
            start = end;
        }
    }

    /// Every batch of messages stored by this replica from now on.
    #[must_use]
    pub fn subscribe_stored(&self) -> broadcast::Receiver<StoredBatch> {
        self.stored.subscribe()
    }

    /// Every delta from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<LiveDelta> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::WorkspaceId;

    #[test]
    fn deltas_accumulate_until_their_message_is_stored() {
        let hub = LiveHub::default();
        let (project, owner, session, segment) = (
            ProjectId::new(),
            UserId::new(),
            SessionId::new(),
            MessageId::new(),
        );
        let mut rx = hub.subscribe();
        for text in ["Hel", "lo"] {
            hub.push(
                project,
                owner,
                &MessageDelta {
                    workspace_id: WorkspaceId::new(),
                    session_id: session,
                    segment_id: segment,
                    text: text.into(),
                },
            );
        }
        assert_eq!(rx.try_recv().unwrap().text_so_far, "Hel");
        assert_eq!(rx.try_recv().unwrap().text_so_far, "Hello");
        let snap = hub.snapshot(project);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].text_so_far, "Hello");
        assert!(hub.snapshot(ProjectId::new()).is_empty());
        hub.clear_segments([segment]);
        assert!(hub.snapshot(project).is_empty());
    }
}
