//! `GET /api/nodes/{nodeId}/workspaces/{workspaceId}/git-token`: a workspace's git token
//! again, for a `kiln-node` that restarted and lost it (the node keeps it in memory only;
//! see `kiln_node::credentials`). Authenticated by the node's own token like every node
//! route, answered only for a live workspace on that node whose project has a token, with
//! `Cache-Control: no-store`. The token is never logged.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_core::{Node, WorkspaceId, WorkspaceStatus};
use serde::Serialize;

use crate::api::node_protocol::AuthorizedNode;
use crate::commands::{ProjectGitToken, project_git_token};
use crate::error::{ApiError, ApiResult, parse_id};
use crate::state::AppState;

/// The answer: the token itself.
#[derive(Serialize)]
struct GitTokenBody {
    token: kiln_core::secret::Secret,
}

/// Every answer, refusals included, carries `Cache-Control: no-store`.
pub(crate) async fn get(
    State(state): State<AppState>,
    node: Result<AuthorizedNode, ApiError>,
    Path((_, workspace)): Path<(String, String)>,
) -> Response {
    let mut response = match node {
        Ok(AuthorizedNode(node)) => answer(&state, &node, &workspace).await.into_response(),
        Err(refused) => refused.into_response(),
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn answer(state: &AppState, node: &Node, workspace: &str) -> ApiResult<Json<GitTokenBody>> {
    let workspace_id: WorkspaceId = parse_id(workspace, "workspace")?;
    // Another node's workspace is answered like a missing one: a node learns nothing of
    // what runs elsewhere.
    let workspace = state
        .store
        .get_workspace(workspace_id)
        .await?
        .filter(|w| w.node_id == node.id)
        .ok_or_else(|| no_such_workspace(workspace_id))?;
    if matches!(
        workspace.status,
        WorkspaceStatus::Destroying | WorkspaceStatus::Destroyed
    ) {
        return Err(no_such_workspace(workspace_id));
    }
    let no_token = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_git_token",
            "the workspace's project has no git token",
        )
    };
    let project = workspace.project_id.ok_or_else(no_token)?;
    let token = match project_git_token(&state.store, &state.credentials, project).await? {
        ProjectGitToken::Opened(token) => token,
        ProjectGitToken::None => return Err(no_token()),
        ProjectGitToken::Unopenable(err) => {
            tracing::warn!(workspace = %workspace.id, %project, %err, "the project's git token cannot be opened (vault key changed?)");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git_token_unopenable",
                "the project's git token cannot be opened with this server's vault key",
            ));
        }
    };
    tracing::info!(node = %node.id, workspace = %workspace.id, "git token handed to a restarted node");
    Ok(Json(GitTokenBody { token }))
}

fn no_such_workspace(id: WorkspaceId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("workspace {id} not found on this node"),
    )
}
