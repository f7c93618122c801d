//! The node protocol's server side (see [`kiln_core::protocol`]): hello, heartbeat, the
//! command long poll, workspace events and live deltas, all with the node's callback token.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use kiln_core::protocol::{
    CommandBatch, DeltaBatch, Heartbeat, NODE_STOPPED, NodeHello, WorkspaceEvent,
};
use kiln_core::{Change, Node, NodeId, NodeState, WorkspaceId};
use serde::Deserialize;

use crate::auth::bearer;
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, parse_id};
use crate::state::AppState;
use crate::tokens::{CallbackClaims, TokenError, TokenScope};

/// The longest a command poll may wait.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a command poll waits when the node does not say.
const DEFAULT_WAIT: Duration = Duration::from_secs(25);

/// The verified claims of a request's callback token (any scope; handlers check it).
#[derive(Debug, Clone)]
pub struct Callback(pub CallbackClaims);

impl FromRequestParts<AppState> for Callback {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)
            .ok_or_else(|| ApiError::unauthorized("a bearer callback token is required"))?;
        match state.signer.verify(token, state.clock.now()) {
            Ok(claims) => Ok(Self(claims)),
            Err(TokenError::Expired) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_expired",
                "the callback token has expired",
            )),
            Err(e) => Err(ApiError::unauthorized(e.to_string())),
        }
    }
}

/// The node of a node-protocol request: the token is a node token for the node in the path,
/// and the node has not been stopped (else 401/403, or 410 `node_stopped`). Checked before
/// the body is read.
#[derive(Debug, Clone)]
pub struct AuthorizedNode(pub Node);

impl FromRequestParts<AppState> for AuthorizedNode {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Callback(claims) = Callback::from_request_parts(parts, state).await?;
        let Path(params) =
            Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let raw = params
            .get("nodeId")
            .ok_or_else(|| ApiError::internal("node route without a nodeId"))?;
        Ok(Self(authorized_node(state, &claims, raw).await?))
    }
}

/// 410 Gone, `node_stopped`: the node must stop everything.
fn node_stopped() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        NODE_STOPPED,
        "this node was stopped; shut down",
    )
}

/// Checks a node token against the path and returns the node, or 410 if it must stop.
async fn authorized_node(state: &AppState, claims: &CallbackClaims, raw: &str) -> ApiResult<Node> {
    let id: NodeId = parse_id(raw, "node")?;
    if claims.scope != TokenScope::Node {
        return Err(ApiError::forbidden("a node token is required"));
    }
    if claims.node != id {
        return Err(ApiError::forbidden("the token is for another node"));
    }
    live_node(state, id).await
}

/// The node, unless the store no longer has it or has given up on it (destroying,
/// destroyed, failed): then 410 `node_stopped`, and the node must stop everything.
pub(crate) async fn live_node(state: &AppState, id: NodeId) -> ApiResult<Node> {
    match state.store.get_node(id).await? {
        Some(node)
            if !matches!(
                node.state,
                NodeState::Destroying | NodeState::Destroyed | NodeState::Failed
            ) =>
        {
            Ok(node)
        }
        // Signed by us for a node the store no longer has or has given up on.
        _ => Err(node_stopped()),
    }
}

pub(crate) async fn hello(
    State(state): State<AppState>,
    AuthorizedNode(node): AuthorizedNode,
    ApiJson(body): ApiJson<NodeHello>,
) -> ApiResult<Json<serde_json::Value>> {
    if body.node_id != node.id {
        return Err(ApiError::bad_request("nodeId does not match the path"));
    }
    tracing::info!(node = %node.id, version = %body.version, workspaces = body.workspaces.len(), "node hello");
    state
        .store
        .record_heartbeat(node.id, state.clock.now())
        .await?;
    // A warm node says hello again after a reconnect or a restart: it is already ready
    // (marking it ready again would be refused as a conflict, and the node would retry
    // its hello forever instead of heartbeating).
    if node.state != NodeState::Warm {
        state.driver.node_ready(node.id).await?;
    }
    let listed: Vec<_> = body.workspaces.iter().map(|w| w.workspace_id).collect();
    if let Err(e) = state.driver.node_workspaces(node.id, &listed).await {
        tracing::warn!(node = %node.id, error = %e, "could not reconcile the node's workspaces");
    }
    state
        .announce(node.owner, None, Change::Node { node_id: node.id })
        .await;
    Ok(Json(serde_json::json!({})))
}

pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    AuthorizedNode(node): AuthorizedNode,
    ApiJson(body): ApiJson<Heartbeat>,
) -> ApiResult<Json<serde_json::Value>> {
    if body.node_id != node.id {
        return Err(ApiError::bad_request("nodeId does not match the path"));
    }
    if body.outbox.pending > 0 || body.outbox.last_error.is_some() {
        tracing::debug!(node = %node.id, pending = body.outbox.pending, error = ?body.outbox.last_error, "node outbox");
    }
    state
        .store
        .record_heartbeat(node.id, state.clock.now())
        .await?;
    // A workspace that vanished from a live node without an event (its actor died, its
    // directory was removed) would leave its task running forever; the runner settles it
    // once consecutive heartbeats prove it gone (never on one heartbeat that may predate it).
    let listed: Vec<_> = body.workspaces.iter().map(|w| w.workspace_id).collect();
    if let Err(e) = state
        .driver
        .node_heartbeat_workspaces(node.id, &listed)
        .await
    {
        tracing::warn!(node = %node.id, error = %e, "could not reconcile the node's workspaces");
    }
    Ok(Json(serde_json::json!({})))
}

/// Query of the command poll.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollQuery {
    #[serde(default)]
    after: u64,
    wait_ms: Option<u64>,
}

pub(crate) async fn commands(
    State(state): State<AppState>,
    Callback(claims): Callback,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PollQuery>,
) -> ApiResult<Json<CommandBatch>> {
    let node = authorized_node(&state, &claims, &id).await?;
    let wait = query
        .wait_ms
        .map_or(DEFAULT_WAIT, Duration::from_millis)
        .min(MAX_WAIT);
    let mut commands = state.commands.poll(node.id, query.after, wait).await;
    crate::commands::attach_git_tokens(&state.store, &state.credentials, &mut commands).await?;
    if commands.is_empty() {
        // The node may have been stopped while it waited.
        authorized_node(&state, &claims, &id).await?;
    }
    Ok(Json(CommandBatch { commands }))
}

fn event_workspace(event: &WorkspaceEvent) -> WorkspaceId {
    match event {
        WorkspaceEvent::AgentStarted { workspace_id, .. }
        | WorkspaceEvent::Completed { workspace_id, .. }
        | WorkspaceEvent::Failed { workspace_id, .. }
        | WorkspaceEvent::Cancelled { workspace_id }
        | WorkspaceEvent::Destroyed { workspace_id } => *workspace_id,
    }
}

pub(crate) async fn events(
    State(state): State<AppState>,
    AuthorizedNode(node): AuthorizedNode,
    ApiJson(event): ApiJson<WorkspaceEvent>,
) -> ApiResult<Json<serde_json::Value>> {
    let workspace_id = event_workspace(&event);
    match state.store.get_workspace(workspace_id).await? {
        Some(w) if w.node_id == node.id => {}
        _ => return Err(ApiError::not_found("workspace")),
    }
    tracing::info!(node = %node.id, ?event, "workspace event");
    state.driver.workspace_event(node.id, &event).await?;
    Ok(Json(serde_json::json!({})))
}

pub(crate) async fn deltas(
    State(state): State<AppState>,
    AuthorizedNode(node): AuthorizedNode,
    ApiJson(batch): ApiJson<DeltaBatch>,
) -> ApiResult<impl IntoResponse> {
    let mut known = std::collections::HashMap::new();
    for delta in &batch.deltas {
        let workspace = match known.get(&delta.workspace_id) {
            Some(w) => w,
            None => {
                let w = state
                    .store
                    .get_workspace(delta.workspace_id)
                    .await?
                    .filter(|w| w.node_id == node.id);
                known.entry(delta.workspace_id).or_insert(w)
            }
        };
        // A delta for a workspace or session that is not this node's is ignored: deltas
        // are ephemeral and never trusted beyond the token's scope.
        if let Some(w) = workspace
            && w.session_id == Some(delta.session_id)
            && let Some(project) = w.project_id
        {
            state.live.receive(project, w.owner, delta);
        }
    }
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({}))))
}
