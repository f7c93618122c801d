//! The HTTP API: one module per resource; `router` mounts them all.

pub(crate) mod account;
pub(crate) mod credentials;
pub(crate) mod messages;
pub(crate) mod node_binary;
pub(crate) mod node_git_token;
pub(crate) mod node_protocol;
pub(crate) mod nodes;
pub(crate) mod projects;
pub(crate) mod sessions;
pub(crate) mod tasks;

use axum::Router;
use axum::routing::{delete, get, post};

use crate::state::AppState;

/// Every `/api` route (and `/login`).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/login", get(account::login))
        .route("/api/logout", post(account::logout))
        .route("/api/me", get(account::me))
        .route("/api/providers", get(account::providers))
        .route(
            "/api/tokens",
            get(account::list_tokens).post(account::create_token),
        )
        .route("/api/tokens/{tokenId}", delete(account::revoke_token))
        .route(
            "/api/account/hetzner-token",
            get(credentials::get_hetzner)
                .put(credentials::put_hetzner)
                .delete(credentials::delete_hetzner),
        )
        .route(
            "/api/projects/{projectId}/git-token",
            get(credentials::get_git)
                .put(credentials::put_git)
                .delete(credentials::delete_git),
        )
        .route("/api/projects", get(projects::list).post(projects::create))
        .route(
            "/api/projects/{projectId}",
            get(projects::get)
                .patch(projects::update)
                .delete(projects::delete),
        )
        .route(
            "/api/projects/{projectId}/tasks",
            get(tasks::list).post(tasks::create),
        )
        .route(
            "/api/projects/{projectId}/sessions",
            get(sessions::list).post(sessions::open),
        )
        .route("/api/projects/{projectId}/ws", get(crate::ws::connect))
        .route(
            "/api/tasks/{taskId}",
            get(tasks::get).patch(tasks::update).delete(tasks::delete),
        )
        .route("/api/tasks/{taskId}/run", post(tasks::run))
        .route("/api/tasks/{taskId}/cancel", post(tasks::cancel))
        .route("/api/tasks/{taskId}/rerun", post(tasks::rerun))
        .route("/api/sessions/{sessionId}", get(sessions::get))
        .route(
            "/api/sessions/{sessionId}/messages",
            get(sessions::messages),
        )
        .route("/api/sessions/{sessionId}/prompt", post(sessions::prompt))
        .route("/api/sessions/{sessionId}/close", post(sessions::close))
        .route("/api/nodes", get(nodes::list))
        .route("/api/nodes/{nodeId}", get(nodes::get))
        .route("/api/nodes/{nodeId}/hello", post(node_protocol::hello))
        .route("/api/nodes/{nodeId}/binary", get(node_binary::download))
        .route(
            "/api/nodes/{nodeId}/heartbeat",
            post(node_protocol::heartbeat),
        )
        .route("/api/nodes/{nodeId}/commands", get(node_protocol::commands))
        .route("/api/nodes/{nodeId}/events", post(node_protocol::events))
        .route("/api/nodes/{nodeId}/deltas", post(node_protocol::deltas))
        .route(
            "/api/nodes/{nodeId}/workspaces/{workspaceId}/git-token",
            get(node_git_token::get),
        )
        .route("/api/workspaces", get(nodes::list_workspaces))
        .route(
            "/api/workspaces/{workspaceId}",
            get(nodes::get_workspace).delete(nodes::discard_workspace),
        )
        .route(
            "/api/workspaces/{workspaceId}/messages",
            post(messages::post),
        )
}
