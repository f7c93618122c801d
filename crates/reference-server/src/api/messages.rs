//! `POST /api/workspaces/{workspaceId}/messages`: a node's outbox delivers chat messages.
//!
//! The contract, in the order it is checked:
//! 1. `Authorization: Bearer` workspace callback token: missing, invalid or expired → 401;
//!    a token for another workspace (or a node token) → 403.
//! 2. The workspace must exist → 404 `workspace_not_found`; its node must not be stopped
//!    (destroying, destroyed or failed: a lost node that came back) → 410 `node_stopped`,
//!    so a run the control plane gave up on adds nothing to its session.
//! 3. `Content-Type: application/json` → else 415; body ≤ 256 KiB → else 413.
//! 4. `{"messages": [...]}` with 1–100 messages → else 400.
//! 5. Each message: an id, role in user/assistant/system/tool, non-empty content, an RFC 3339
//!    `createdAt` → else 422 with `"rejected": [ids]` naming exactly the refused messages.
//! 6. Each message's session must belong to the workspace's project → else 404
//!    `session_not_found`, naming those messages in `"rejected"`.
//! 7. Stored idempotently: `{"persisted": n, "duplicates": m}`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use kiln_core::{ChatMessage, MessageId, Role, SessionId, WorkspaceId};
use serde::Serialize;
use serde_json::Value;

use crate::api::node_protocol::Callback;
use crate::error::{ApiError, ApiResult, parse_id};
use crate::state::AppState;
use crate::tokens::TokenScope;

/// The largest accepted body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Bodies over [`MAX_BODY_BYTES`] but up to this size are read to the end before the 413.
const DRAIN_LIMIT_BYTES: usize = 1024 * 1024;
/// The most messages in one batch.
pub const MAX_BATCH: usize = 100;

/// The answer to a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Persisted {
    /// Messages stored now.
    pub persisted: u64,
    /// Messages already stored, skipped.
    pub duplicates: u64,
}

fn unprocessable(message: impl Into<String>, rejected: Vec<MessageId>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_messages",
        message,
    )
    .with_rejected(rejected)
}

/// Checks one message as JSON; `Err(reason)` when it is refused on its merits.
fn check_message(value: Value) -> Result<ChatMessage, String> {
    let obj = value.as_object().ok_or("a message must be an object")?;
    match obj.get("role").and_then(Value::as_str) {
        Some(r) if r.parse::<Role>().is_ok() => {}
        Some(r) => {
            return Err(format!(
                "role {r:?} is not one of user, assistant, system, tool"
            ));
        }
        None => return Err("role is required".into()),
    }
    match obj.get("content") {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(Value::String(_)) => return Err("content must not be empty".into()),
        _ => return Err("content must be a string".into()),
    }
    match obj.get("createdAt").and_then(Value::as_str) {
        Some(t) if chrono::DateTime::parse_from_rfc3339(t).is_ok() => {}
        Some(t) => return Err(format!("createdAt {t:?} is not an RFC 3339 timestamp")),
        None => return Err("createdAt is required".into()),
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

pub(crate) async fn post(
    State(state): State<AppState>,
    Callback(claims): Callback,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Persisted>> {
    // 1. Authorization, before reading anything else.
    let path_id: WorkspaceId = parse_id(&raw_id, "workspace")?;
    if claims.scope != TokenScope::Workspace {
        return Err(ApiError::forbidden("a workspace token is required"));
    }
    if claims.workspace != Some(path_id) {
        return Err(ApiError::forbidden("the token is for another workspace"));
    }
    // 2. The workspace.
    let workspace = state
        .store
        .get_workspace(path_id)
        .await?
        .filter(|w| w.node_id == claims.node)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "workspace_not_found",
                "the workspace does not exist",
            )
        })?;
    crate::api::node_protocol::live_node(&state, workspace.node_id).await?;
    // 3. Media type and size.
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body exceeds {MAX_BODY_BYTES} bytes; send smaller batches"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT_BYTES) {
        return Err(too_large());
    }
    // Read up to the drain limit even when the body is over the limit, so the sender finishes
    // writing and reads the 413 (an outbox then splits the batch) instead of a reset
    // connection, which it would take for a network error and retry as is.
    let bytes = axum::body::to_bytes(body, DRAIN_LIMIT_BYTES)
        .await
        .map_err(|_| too_large())?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    // 4. Shape.
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?;
    let Some(Value::Array(items)) = value.get("messages").cloned() else {
        return Err(ApiError::bad_request(
            "expected {\"messages\": [...]} with 1 to 100 messages",
        ));
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_batch_size",
            format!(
                "a batch holds 1 to {MAX_BATCH} messages, not {}",
                items.len()
            ),
        ));
    }
    // 5. Each message on its merits.
    let mut messages = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    let mut reasons = Vec::new();
    let mut unnamed = 0usize;
    for item in items {
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<MessageId>().ok());
        match (id, check_message(item)) {
            (Some(_), Ok(m)) => messages.push(m),
            (Some(id), Err(reason)) => {
                reasons.push(format!("{id}: {reason}"));
                rejected.push(id);
            }
            (None, _) => unnamed += 1,
        }
    }
    if unnamed > 0 {
        return Err(
            ApiError::bad_request(format!("{unnamed} message(s) have no valid id"))
                .with_rejected(rejected),
        );
    }
    if !rejected.is_empty() {
        return Err(unprocessable(
            format!(
                "{} message(s) refused: {}",
                rejected.len(),
                reasons.join("; ")
            ),
            rejected,
        ));
    }
    // 6. Sessions: only those of the workspace's project (and owner).
    let mut sessions: HashMap<SessionId, bool> =
        messages.iter().map(|m| (m.session_id, false)).collect();
    for (id, ok) in &mut sessions {
        *ok = state.store.get_session(*id).await?.is_some_and(|s| {
            Some(s.project_id) == workspace.project_id && s.owner == workspace.owner
        });
    }
    let foreign: Vec<MessageId> = messages
        .iter()
        .filter(|m| !sessions[&m.session_id])
        .map(|m| m.id)
        .collect();
    if !foreign.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "the session does not exist in this workspace's project",
        )
        .with_rejected(foreign));
    }
    // 7. Store.
    let outcome = state
        .store
        .insert_messages(&messages, state.clock.now())
        .await?;
    state.live.clear_segments(messages.iter().map(|m| m.id));
    if let Some(project) = workspace.project_id {
        state.live.stored(workspace.owner, project, &outcome.stored);
    }
    Ok(Json(Persisted {
        persisted: outcome.persisted,
        duplicates: outcome.duplicates,
    }))
}
