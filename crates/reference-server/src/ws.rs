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
//! | `node.updated` | a node of the owner |
//! | `workspace.updated` | a workspace |
//!
//! Right after connecting, a viewer gets one `message.delta` per segment still streaming
//! (with the text so far). Updates come from the store's change feed, so a viewer connected
//! to one replica hears of changes made through any replica sharing the database.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use kiln_core::{Change, MessagePage, ProjectId, StoreEvent, UserId};
use serde::Serialize;
use serde_json::json;
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
    Ok(upgrade.on_upgrade(move |socket| async move {
        if let Err(err) = serve(socket, state, user.id(), project.id, feed, live).await {
            tracing::debug!(%err, "websocket closed");
        }
    }))
}

fn frame(kind: &str, data: &impl Serialize) -> Message {
    Message::Text(json!({"type": kind, "data": data}).to_string().into())
}

async fn serve(
    mut socket: WebSocket,
    state: AppState,
    owner: UserId,
    project: ProjectId,
    mut feed: futures::stream::BoxStream<'static, StoreEvent>,
    mut live: tokio::sync::broadcast::Receiver<crate::live::LiveDelta>,
) -> Result<(), axum::Error> {
    for delta in state.live.snapshot(project) {
        if delta.owner == owner {
            socket.send(frame("message.delta", &delta)).await?;
        }
    }
    loop {
        tokio::select! {
            event = feed.next() => {
                let Some(event) = event else { return Ok(()) };
                if event.owner != owner {
                    continue;
                }
                let relevant = event.project_id == Some(project)
                    || (event.project_id.is_none() && matches!(event.change, Change::Node { .. }));
                if !relevant {
                    continue;
                }
                for frame in frames_for(&state, owner, project, &event.change).await {
                    socket.send(frame).await?;
                }
            }
            delta = live.recv() => match delta {
                Ok(d) if d.owner == owner && d.project_id == project => {
                    socket.send(frame("message.delta", &d)).await?;
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Ok(()),
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The frames for one change, read fresh from the store (the feed carries only ids).
async fn frames_for(
    state: &AppState,
    owner: UserId,
    project: ProjectId,
    change: &Change,
) -> Vec<Message> {
    let store = &state.store;
    let mut frames = Vec::new();
    let result: Result<(), kiln_core::StoreError> = async {
        match change {
            Change::MessagesStored {
                session_id,
                first,
                last,
            } => {
                let limit = u32::try_from((last - first + 1).max(1)).unwrap_or(u32::MAX);
                let page = MessagePage::After {
                    cursor: first - 1,
                    limit,
                };
                for m in store.list_messages(*session_id, page).await? {
                    frames.push(frame("message.new", &m));
                }
                if let Some(s) = store.get_session(*session_id).await?
                    && s.owner == owner
                {
                    frames.push(frame("session.updated", &s));
                }
            }
            Change::Task { task_id } => {
                if let Some(t) = store.get_task(*task_id).await?
                    && t.owner == owner
                    && t.project_id == project
                {
                    frames.push(frame("task.updated", &t));
                }
            }
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
        }
        Ok(())
    }
    .await;
    if let Err(err) = result {
        tracing::warn!(%err, ?change, "could not read a change for a viewer");
    }
    frames
}
