//! The user's nodes (with lifecycle state and `warmUntil`) and workspaces, read-only, and
//! discarding the workspace a failed or cancelled task kept.

use axum::Json;
use axum::extract::{Path, State};
use kiln_core::{Node, NodeQuery, NodeState, Workspace, WorkspaceQuery, WorkspaceStatus};
use serde::Deserialize;

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiQuery, ApiResult, parse_id};
use crate::state::AppState;

/// Query of `GET /api/nodes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListNodes {
    /// Comma-separated states.
    state: Option<String>,
}

/// Query of `GET /api/workspaces`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListWorkspaces {
    task_id: Option<String>,
    node_id: Option<String>,
    /// Comma-separated statuses.
    status: Option<String>,
}

fn parse_list<T: std::str::FromStr<Err = kiln_core::ParseEnumError>>(
    raw: Option<&str>,
) -> ApiResult<Vec<T>> {
    raw.iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e: kiln_core::ParseEnumError| ApiError::bad_request(e.to_string()))
        })
        .collect()
}

pub(crate) async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiQuery(query): ApiQuery<ListNodes>,
) -> ApiResult<Json<Vec<Node>>> {
    let states: Vec<NodeState> = parse_list(query.state.as_deref())?;
    Ok(Json(
        state
            .store
            .list_nodes(&NodeQuery {
                owner: Some(user.id()),
                states,
                ..NodeQuery::default()
            })
            .await?,
    ))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Node>> {
    match state.store.get_node(parse_id(&id, "node")?).await? {
        Some(n) if n.owner == user.id() => Ok(Json(n)),
        _ => Err(ApiError::not_found("node")),
    }
}

pub(crate) async fn list_workspaces(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiQuery(query): ApiQuery<ListWorkspaces>,
) -> ApiResult<Json<Vec<Workspace>>> {
    let bad = |what: &str| ApiError::bad_request(format!("{what} is not an id"));
    let statuses: Vec<WorkspaceStatus> = parse_list(query.status.as_deref())?;
    Ok(Json(
        state
            .store
            .list_workspaces(&WorkspaceQuery {
                owner: Some(user.id()),
                node_id: query
                    .node_id
                    .map(|s| s.parse().map_err(|_| bad("nodeId")))
                    .transpose()?,
                task_id: query
                    .task_id
                    .map(|s| s.parse().map_err(|_| bad("taskId")))
                    .transpose()?,
                statuses,
            })
            .await?,
    ))
}

pub(crate) async fn get_workspace(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Workspace>> {
    match state
        .store
        .get_workspace(parse_id(&id, "workspace")?)
        .await?
    {
        Some(w) if w.owner == user.id() => Ok(Json(w)),
        _ => Err(ApiError::not_found("workspace")),
    }
}

/// `DELETE /api/workspaces/{id}`: discards the workspace a failed or cancelled task kept
/// (409 while its task runs in it, or for a chat's).
pub(crate) async fn discard_workspace(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Workspace>> {
    let id = parse_id(&id, "workspace")?;
    match state.store.get_workspace(id).await? {
        Some(w) if w.owner == user.id() => Ok(Json(state.driver.discard_workspace(id).await?)),
        _ => Err(ApiError::not_found("workspace")),
    }
}
