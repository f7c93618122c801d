//! Live text that agents are streaming right now (`message.delta`), held per session in
//! memory so a viewer who connects late gets the text so far. Deltas are ephemeral: the
//! stored message follows through the node's outbox and replaces them.
//!
//! With several replicas (PostgreSQL), a node talks to one of them, so [`spawn_relay`] also
//! publishes each delta on the store's change feed ([`Change::LiveText`]) and feeds the
//! deltas of other replicas into this one's hub: viewers of every replica see the text grow.
//! The relay never slows the node: deltas wait in a bounded queue and are dropped when it is
//! full (the stored message still arrives).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use kiln_core::protocol::MessageDelta;
use kiln_core::{
    Change, MessageId, MessagePage, ProjectId, SessionId, Store, StoreError, StoreEvent,
    StoredMessage, UserId,
};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// The longest text kept per streaming segment; older text is cut from the front.
const MAX_SEGMENT_BYTES: usize = 256 * 1024;
/// Segments remembered as stored, so a late delta does not bring one back.
const STORED_SEGMENTS_KEPT: usize = 4096;
/// Deltas waiting to be published to the other replicas; more are dropped.
const RELAY_QUEUE: usize = 1024;
/// The most text one relayed event carries (PostgreSQL's NOTIFY payload is under 8000
/// bytes); a longer delta travels in pieces.
const RELAY_PIECE_BYTES: usize = 3000;

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
    /// Segments whose message is stored, newest last (bounded).
    stored: VecDeque<MessageId>,
    stored_set: HashSet<MessageId>,
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
    /// This replica, in relayed deltas.
    replica: uuid::Uuid,
    /// Deltas to publish to the other replicas (set by [`spawn_relay`]).
    relay: OnceLock<mpsc::Sender<StoreEvent>>,
}

impl Default for LiveHub {
    fn default() -> Self {
        Self {
            segments: Mutex::default(),
            tx: broadcast::channel(4096).0,
            stored: broadcast::channel(4096).0,
            replica: uuid::Uuid::new_v4(),
            relay: OnceLock::new(),
        }
    }
}

impl LiveHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Segments> {
        self.segments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a delta a node sent this replica: tells this replica's viewers and, when
    /// relaying, the other replicas'.
    pub fn receive(&self, project: ProjectId, owner: UserId, delta: &MessageDelta) {
        self.push(project, owner, delta);
        let Some(relay) = self.relay.get() else {
            return;
        };
        let mut rest = delta.text.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(RELAY_PIECE_BYTES);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            rest = tail;
            let event = StoreEvent {
                owner,
                project_id: Some(project),
                change: Change::LiveText {
                    replica: self.replica,
                    workspace_id: delta.workspace_id,
                    session_id: delta.session_id,
                    segment_id: delta.segment_id,
                    text: piece.to_owned(),
                },
            };
            if relay.try_send(event).is_err() {
                tracing::debug!(segment = %delta.segment_id, "relay queue full; delta not relayed");
                return;
            }
        }
    }

    /// Adds a delta of a session of `project` owned by `owner`, and tells viewers. A delta
    /// of a segment already stored is dropped (it arrived late).
    pub fn push(&self, project: ProjectId, owner: UserId, delta: &MessageDelta) {
        let text_so_far = {
            let mut s = self.lock();
            if s.stored_set.contains(&delta.segment_id) {
                return;
            }
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

    /// Forgets segments whose messages are now stored (and keeps their ids for a while, so
    /// late deltas of theirs are dropped).
    pub fn clear_segments(&self, ids: impl IntoIterator<Item = MessageId>) {
        let mut s = self.lock();
        for id in ids {
            if s.stored_set.insert(id) {
                s.stored.push_back(id);
                if s.stored.len() > STORED_SEGMENTS_KEPT
                    && let Some(old) = s.stored.pop_front()
                {
                    s.stored_set.remove(&old);
                }
            }
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

    /// Whether any segment of `session` is streaming here.
    fn streaming(&self, session: SessionId) -> bool {
        self.lock().by_session.contains_key(&session)
    }
}

/// Relays deltas between replicas through `store`'s change feed: publishes what
/// [`LiveHub::receive`] queues, feeds other replicas' deltas into `hub`, and clears a
/// relayed segment when its message is stored (through any replica). Subscribes before
/// returning. For a store shared by several replicas; a single server does not need it.
///
/// # Errors
/// The change feed cannot be subscribed to.
pub async fn spawn_relay(store: Arc<dyn Store>, hub: Arc<LiveHub>) -> Result<(), StoreError> {
    let mut feed = store.subscribe().await?;
    let (tx, mut rx) = mpsc::channel::<StoreEvent>(RELAY_QUEUE);
    if hub.relay.set(tx).is_err() {
        return Ok(());
    }
    let publisher = store.clone();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if let Err(e) = publisher.publish(&event).await {
                tracing::debug!(error = %e, "a live delta was not relayed");
            }
        }
    });
    tokio::spawn(async move {
        while let Some(event) = feed.next().await {
            match event.change {
                Change::LiveText {
                    replica,
                    workspace_id,
                    session_id,
                    segment_id,
                    text,
                } if replica != hub.replica => {
                    if let Some(project) = event.project_id {
                        let delta = MessageDelta {
                            workspace_id,
                            session_id,
                            segment_id,
                            text,
                        };
                        hub.push(project, event.owner, &delta);
                    }
                }
                Change::MessagesStored {
                    session_id,
                    first,
                    last,
                } if hub.streaming(session_id) => {
                    // Stored through another replica (or this one): its segments end here.
                    let limit = u32::try_from(last - first + 1).unwrap_or(u32::MAX);
                    let page = MessagePage::After {
                        cursor: first - 1,
                        limit,
                    };
                    match store.list_messages(session_id, page).await {
                        Ok(stored) => hub.clear_segments(stored.iter().map(|m| m.message.id)),
                        Err(e) => tracing::debug!(error = %e, "could not read stored messages"),
                    }
                }
                _ => {}
            }
        }
    });
    Ok(())
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
        // A delta arriving after its message (relayed late) does not bring it back.
        hub.push(
            project,
            owner,
            &MessageDelta {
                workspace_id: WorkspaceId::new(),
                session_id: session,
                segment_id: segment,
                text: "late".into(),
            },
        );
        assert!(hub.snapshot(project).is_empty());
        assert!(rx.try_recv().is_err(), "no frame for a late delta");
    }
}
