//! `GET /api/projects/{projectId}/ws`: live updates for one project's owner.
//!
//! Every frame is a JSON text `{"type": …, "data": …}` carrying the full object:
//!
//! | type | data |
//! |---|---|
//! | `message.new` | a stored message (`cursor`, `id`, `sessionId`, `role`, `content`, …) |
//! | `message.delta` | `{projectId, sessionId, segmentId, text, textSoFar}`: text an agent streams right now |
//! | `session.updated` | a chat session |
//! | `task.updated` | a task |
//! | `task.deleted` | `{id, projectId}`: a task that no longer exists (deleted) |
//! | `node.updated` | a node of the owner |
//! | `workspace.updated` | a workspace |
//!
//! Right after connecting, a viewer gets one `message.delta` per segment still streaming
//! (with the text so far). Updates come from the store's change feed, so a viewer connected
//! to one replica hears of changes made through any replica sharing the database; messages
//! stored through this replica also come straight from the messages endpoint, without a store
//! read. Either way each session's messages reach the viewer once each, in cursor order: a
//! gap is filled from the store before what follows it.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use std::collections::HashMap;

use kiln_core::{Change, MessagePage, ProjectId, SessionId, StoreEvent, StoredMessage, UserId};
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult, parse_id};
use crate::state::AppState;

pub(crate) async fn connect(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(project_id): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let project = state
        .owned_project(user.id(), parse_id(&project_id, "project")?)
        .await?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            e.body_text(),
        )
    })?;
    // Subscribe before upgrading, so nothing stored from now on is missed.
    let feed = state.store.subscribe().await?;
    let live = state.live.subscribe();
    let stored = state.live.subscribe_stored();
    Ok(upgrade.on_upgrade(move |socket| async move {
        let viewer = Viewer {
            state,
            owner: user.id(),
            project: project.id,
            sent: HashMap::new(),
        };
        if let Err(err) = viewer.serve(socket, feed, live, stored).await {
            tracing::debug!(%err, "websocket closed");
        }
    }))
}

fn frame(kind: &str, data: &impl Serialize) -> Message {
    Message::Text(json!({"type": kind, "data": data}).to_string().into())
}

/// One connected viewer: what it may see, and how far each session has been sent.
struct Viewer {
    state: AppState,
    owner: UserId,
    project: ProjectId,
    /// Per session, the highest message cursor sent.
    sent: HashMap<SessionId, i64>,
}

impl Viewer {
    async fn serve(
        mut self,
        mut socket: WebSocket,
        mut feed: futures::stream::BoxStream<'static, StoreEvent>,
        mut live: broadcast::Receiver<crate::live::LiveDelta>,
        mut stored: broadcast::Receiver<crate::live::StoredBatch>,
    ) -> Result<(), axum::Error> {
        for delta in self.state.live.snapshot(self.project) {
            if delta.owner == self.owner {
                socket.send(frame("message.delta", &delta)).await?;
            }
        }
        loop {
            let frames = tokio::select! {
                event = feed.next() => {
                    let Some(event) = event else { return Ok(()) };
                    self.frames_for_event(&event).await
                }
                batch = stored.recv() => match batch {
                    Ok(b) if b.owner == self.owner && b.project_id == self.project => {
                        self.frames_for_messages(&b.messages).await
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => Vec::new(),
                    Err(RecvError::Closed) => return Ok(()),
                },
                delta = live.recv() => match delta {
                    Ok(d) if d.owner == self.owner && d.project_id == self.project => {
                        vec![frame("message.delta", &d)]
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => Vec::new(),
                    Err(RecvError::Closed) => return Ok(()),
                },
                incoming = socket.recv() => match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(_)) => Vec::new(),
                },
            };
            for f in frames {
                socket.send(f).await?;
            }
        }
    }

    async fn frames_for_event(&mut self, event: &StoreEvent) -> Vec<Message> {
        if event.owner != self.owner {
            return Vec::new();
        }
        let relevant = event.project_id == Some(self.project)
            || (event.project_id.is_none() && matches!(event.change, Change::Node { .. }));
        if !relevant {
            return Vec::new();
        }
        let result = self.read_frames(&event.change).await;
        result.unwrap_or_else(|err| {
            tracing::warn!(%err, change = ?event.change, "could not read a change for a viewer");
            Vec::new()
        })
    }

    /// `message.new` frames for messages of one session not sent yet, reading any gap
    /// before them from the store first.
    async fn frames_for_messages(&mut self, messages: &[StoredMessage]) -> Vec<Message> {
        let Some(first) = messages.first() else {
            return Vec::new();
        };
        let session = first.message.session_id;
        let mut frames = Vec::new();
        let sent = self.sent.get(&session).copied();
        if let Some(sent) = sent
            && first.cursor > sent + 1
        {
            match self
                .read_messages(session, sent + 1, first.cursor - 1)
                .await
            {
                Ok(f) => frames = f,
                Err(err) => tracing::warn!(%err, "could not fill a message gap for a viewer"),
            }
        }
        let sent = self.sent.get(&session).copied().unwrap_or(0);
        let mut high = sent;
        for m in messages.iter().filter(|m| m.cursor > sent) {
            frames.push(frame("message.new", m));
            high = high.max(m.cursor);
        }
        self.sent.insert(session, high);
        frames
    }

    async fn read_messages(
        &mut self,
        session: SessionId,
        from: i64,
        to: i64,
    ) -> Result<Vec<Message>, kiln_core::StoreError> {
        let limit = u32::try_from((to - from + 1).max(1)).unwrap_or(u32::MAX);
        let page = MessagePage::After {
            cursor: from - 1,
            limit,
        };
        let messages = self.state.store.list_messages(session, page).await?;
        let high = messages.last().map_or(to, |m| m.cursor.max(to));
        let sent = self.sent.get(&session).copied().unwrap_or(0);
        let frames = messages
            .iter()
            .filter(|m| m.cursor > sent)
            .map(|m| frame("message.new", m))
            .collect();
        self.sent.insert(session, sent.max(high));
        Ok(frames)
    }

    /// The frames for one change, read fresh from the store (the feed carries only ids).
    async fn read_frames(
        &mut self,
        change: &Change,
    ) -> Result<Vec<Message>, kiln_core::StoreError> {
        let store = self.state.store.clone();
        let owner = self.owner;
        let mut frames = Vec::new();
        match change {
            Change::MessagesStored {
                session_id,
                first,
                last,
            } => {
                let sent = self.sent.get(session_id).copied().unwrap_or(0);
                // A viewer that has not seen the session yet starts at this change.
                let from = if self.sent.contains_key(session_id) {
                    sent + 1
                } else {
                    *first
                };
                if from <= *last {
                    frames = self.read_messages(*session_id, from, *last).await?;
                }
            }
            Change::Task { task_id } => match store.get_task(*task_id).await? {
                Some(t) if t.owner == owner && t.project_id == self.project => {
                    frames.push(frame("task.updated", &t));
                }
                Some(_) => {}
                // Announced for this owner and project (checked by the caller) and gone: the
                // task was deleted, and pages showing it must drop it.
                None => frames.push(frame(
                    "task.deleted",
                    &json!({"id": task_id, "projectId": self.project}),
                )),
            },
            Change::Session { session_id } => {
                if let Some(s) = store.get_session(*session_id).await?
                    && s.owner == owner
                {
                    frames.push(frame("session.updated", &s));
                }
            }
            Change::Node { node_id } => {
                if let Some(n) = store.get_node(*node_id).await?
                    && n.owner == owner
                {
                    frames.push(frame("node.updated", &n));
                }
            }
            Change::Workspace { workspace_id } => {
                if let Some(w) = store.get_workspace(*workspace_id).await?
                    && w.owner == owner
                {
                    frames.push(frame("workspace.updated", &w));
                }
            }
            // Carries a callback token: for the replicas, never for viewers.
            Change::NodeCommand { .. } => {}
            // Reaches viewers through the live hub (`message.delta`), not as a change.
            Change::LiveText { .. } => {}
        }
        Ok(frames)
    }
}
