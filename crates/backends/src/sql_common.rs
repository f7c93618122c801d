//! What the SQLite and PostgreSQL stores share: planning a message batch (deduplication,
//! cursors, topics, change events), the in-process fan-out of the change feed, the first
//! half of error classification and small decoding helpers.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use futures::StreamExt;
use futures::stream::BoxStream;
use kiln_core::model::topic_from_message;
use kiln_core::{
    Change, ChatMessage, DestroyGuard, MessageId, Node, ParseEnumError, ProjectId, Role, SessionId,
    StoreError, StoreEvent, StoredMessage, UserId,
};
use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it skips ahead.
const FEED_CAPACITY: usize = 4096;

/// The in-process side of the change feed: every subscriber of this store instance.
#[derive(Debug, Clone)]
pub(crate) struct Feed {
    tx: broadcast::Sender<StoreEvent>,
}

impl Feed {
    pub(crate) fn new() -> Self {
        Self {
            tx: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    /// Hands `event` to every current subscriber (none listening is fine).
    pub(crate) fn send(&self, event: StoreEvent) {
        let _ = self.tx.send(event);
    }

    /// Every event sent from now on. A subscriber that lags skips what it missed: listeners
    /// re-read current rows, and viewers catch up by cursor.
    pub(crate) fn subscribe(&self) -> BoxStream<'static, StoreEvent> {
        futures::stream::unfold(self.tx.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "change feed subscriber lagged; events skipped");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}

/// A session as a message insert needs it, read (and locked) in the inserting transaction.
#[derive(Debug, Clone)]
pub(crate) struct SessionHead {
    pub(crate) owner: UserId,
    pub(crate) project_id: ProjectId,
    pub(crate) message_count: i64,
    pub(crate) has_topic: bool,
}

/// How one session moves with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionAdvance {
    pub(crate) session_id: SessionId,
    /// The session's message count after the batch.
    pub(crate) message_count: i64,
    /// The topic to set when the session has none.
    pub(crate) topic: Option<String>,
}

/// What a batch insert writes, decided before writing.
#[derive(Debug, Default)]
pub(crate) struct MessagePlan {
    /// The new messages with their cursors, in input order.
    pub(crate) stored: Vec<StoredMessage>,
    /// Input messages already stored (or repeated within the batch).
    pub(crate) duplicates: u64,
    /// One entry per session that gains messages, in order of first appearance.
    pub(crate) sessions: Vec<SessionAdvance>,
    /// One `MessagesStored` event per run of consecutive messages of one session.
    pub(crate) events: Vec<StoreEvent>,
}

/// The distinct sessions of a batch, in order of first appearance.
pub(crate) fn distinct_sessions(messages: &[ChatMessage]) -> Vec<SessionId> {
    let mut seen = HashSet::new();
    messages
        .iter()
        .map(|m| m.session_id)
        .filter(|s| seen.insert(*s))
        .collect()
}

/// The first session of the batch that does not exist, as the error the insert returns.
pub(crate) fn missing_session(
    messages: &[ChatMessage],
    heads: &HashMap<SessionId, SessionHead>,
) -> Option<StoreError> {
    messages
        .iter()
        .find(|m| !heads.contains_key(&m.session_id))
        .map(|m| StoreError::not_found("session", m.session_id))
}

/// Decides cursors, counts, topics and events for a batch whose sessions all exist (`heads`)
/// and of which the ids in `existing` are already stored.
pub(crate) fn plan_messages(
    messages: &[ChatMessage],
    heads: &HashMap<SessionId, SessionHead>,
    existing: &HashSet<MessageId>,
) -> MessagePlan {
    let mut plan = MessagePlan::default();
    let mut seen: HashSet<MessageId> = HashSet::with_capacity(messages.len());
    let mut advance: HashMap<SessionId, usize> = HashMap::new();
    for m in messages {
        if existing.contains(&m.id) || !seen.insert(m.id) {
            plan.duplicates += 1;
            continue;
        }
        let Some(head) = heads.get(&m.session_id) else {
            continue; // The caller checked `missing_session` first.
        };
        let index = *advance.entry(m.session_id).or_insert_with(|| {
            plan.sessions.push(SessionAdvance {
                session_id: m.session_id,
                message_count: head.message_count,
                topic: None,
            });
            plan.sessions.len() - 1
        });
        let session = &mut plan.sessions[index];
        session.message_count += 1;
        if !head.has_topic && session.topic.is_none() && m.role == Role::User {
            session.topic = Some(topic_from_message(&m.content));
        }
        let cursor = session.message_count;
        plan.stored.push(StoredMessage {
            cursor,
            message: m.clone(),
        });
        match plan.events.last_mut() {
            Some(StoreEvent {
                change:
                    Change::MessagesStored {
                        session_id, last, ..
                    },
                ..
            }) if *session_id == m.session_id => *last = cursor,
            _ => plan.events.push(StoreEvent {
                owner: head.owner,
                project_id: Some(head.project_id),
                change: Change::MessagesStored {
                    session_id: m.session_id,
                    first: cursor,
                    last: cursor,
                },
            }),
        }
    }
    plan
}

/// The part of error classification both databases share. `retryable_code` says whether a
/// database error code (SQLSTATE or SQLite result code) means "try again".
pub(crate) fn classify(err: sqlx::Error, retryable_code: impl Fn(&str) -> bool) -> StoreError {
    use sqlx::error::ErrorKind;
    match err {
        sqlx::Error::Database(db) => {
            let message = db.message().to_owned();
            if db.code().is_some_and(|c| retryable_code(&c)) {
                StoreError::Unavailable { message }
            } else if matches!(db.kind(), ErrorKind::UniqueViolation) {
                StoreError::Conflict { message }
            } else if matches!(
                db.kind(),
                ErrorKind::CheckViolation | ErrorKind::NotNullViolation
            ) {
                StoreError::Invalid { message }
            } else {
                StoreError::Backend {
                    message: format!("{message} (code {})", db.code().unwrap_or_default()),
                }
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable {
            message: err.to_string(),
        },
        other => StoreError::Backend {
            message: other.to_string(),
        },
    }
}

/// The `WHERE` condition under which `guard` lets a node start destroying: `table` qualifies
/// the node row's columns (`""` or `"nodes."`), `now` is the placeholder of the bound time.
/// A node already destroying always may (a retry of the provider delete).
pub(crate) fn destroy_guard_sql(guard: DestroyGuard, table: &str, now: &str) -> String {
    let t = table;
    match guard {
        DestroyGuard::ExpiredWarm => {
            format!("(({t}state = 'warm' AND {t}warm_until <= {now}) OR {t}state = 'destroying')")
        }
        DestroyGuard::Unclaimed => format!(
            "({t}state <> 'destroyed' AND NOT ({t}state = 'active' AND {t}claimed_by IS NOT NULL))"
        ),
        DestroyGuard::Any => format!("({t}state <> 'destroyed')"),
    }
}

/// The conflict of a destroy `guard` that does not hold for `node`.
pub(crate) fn destroy_conflict(node: &Node, guard: DestroyGuard) -> StoreError {
    StoreError::conflict(format!(
        "node {} ({}{}) may not be destroyed under {guard:?}",
        node.id,
        node.state,
        if node.claimed_by.is_some() {
            ", claimed"
        } else {
            ""
        }
    ))
}

/// The conflict of a guarded transition that found `node` in the wrong state.
pub(crate) fn wrong_state(node: &Node, wanted: &str) -> StoreError {
    StoreError::conflict(format!("node {} is {}, not {wanted}", node.id, node.state))
}

/// Parses a stored enum value; a value the domain does not know is a backend error.
pub(crate) fn parse_enum<T: FromStr<Err = ParseEnumError>>(value: &str) -> Result<T, StoreError> {
    value
        .parse()
        .map_err(|e: ParseEnumError| StoreError::Backend {
            message: format!("stored value: {e}"),
        })
}

/// A stored `tool` column (JSON) back into its type.
pub(crate) fn parse_tool(json: Option<&str>) -> Result<Option<kiln_core::ToolMeta>, StoreError> {
    json.map(|j| {
        serde_json::from_str(j).map_err(|e| StoreError::Backend {
            message: format!("stored tool metadata: {e}"),
        })
    })
    .transpose()
}

/// A message's `tool` metadata as the JSON text the stores keep.
pub(crate) fn tool_json(message: &ChatMessage) -> Option<String> {
    message
        .tool
        .as_ref()
        .map(|t| serde_json::to_string(t).unwrap_or_else(|_| "null".into()))
}

/// A stored attempt counter back into its type.
pub(crate) fn attempt(value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Backend {
        message: format!("stored attempt {value} out of range"),
    })
}

/// Reads a `u64` setting from the environment, falling back to `default` when unset or
/// unparsable (with a warning).
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            tracing::warn!(name, value = %v, default, "ignoring unparsable setting");
            default
        }),
        Err(_) => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{LifecycleClock, ManualClock};

    fn message(session: SessionId, role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            id: MessageId::new(),
            session_id: session,
            role,
            content: content.into(),
            tool: None,
            seq: None,
            created_at: ManualClock::starting_at_epoch().now(),
        }
    }

    #[test]
    fn plans_cursors_topics_duplicates_and_one_event_per_run() {
        let (a, b) = (SessionId::new(), SessionId::new());
        let head = |count, has_topic| SessionHead {
            owner: UserId::new(),
            project_id: ProjectId::new(),
            message_count: count,
            has_topic,
        };
        let heads = HashMap::from([(a, head(3, false)), (b, head(0, true))]);
        let old = message(a, Role::User, "old");
        let first = message(a, Role::Assistant, "hi");
        let prompt = message(a, Role::User, "\n Fix it \nplease");
        let other = message(b, Role::User, "ignored topic");
        let batch = vec![
            old.clone(),
            first.clone(),
            first.clone(),
            prompt,
            other,
            message(a, Role::User, "second prompt"),
        ];
        let plan = plan_messages(&batch, &heads, &HashSet::from([old.id]));
        assert_eq!(plan.duplicates, 2);
        let cursors: Vec<i64> = plan.stored.iter().map(|m| m.cursor).collect();
        assert_eq!(cursors, vec![4, 5, 1, 6]);
        assert_eq!(
            plan.sessions,
            vec![
                SessionAdvance {
                    session_id: a,
                    message_count: 6,
                    topic: Some("Fix it".into())
                },
                SessionAdvance {
                    session_id: b,
                    message_count: 1,
                    topic: None
                },
            ]
        );
        let runs: Vec<(SessionId, i64, i64)> = plan
            .events
            .iter()
            .map(|e| match e.change {
                Change::MessagesStored {
                    session_id,
                    first,
                    last,
                } => (session_id, first, last),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(runs, vec![(a, 4, 5), (b, 1, 1), (a, 6, 6)]);
        assert!(missing_session(&batch, &heads).is_none());
        assert!(missing_session(&[message(SessionId::new(), Role::User, "x")], &heads).is_some());
    }
}
