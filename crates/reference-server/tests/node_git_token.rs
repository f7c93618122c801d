//! `GET /api/nodes/{nodeId}/workspaces/{workspaceId}/git-token`: a restarted node asks
//! for its workspace's git token again. Only the node the workspace is on gets it, with its
//! own node token, and only for a live workspace whose project has a token (its own, else its
//! owner's default); every answer says `Cache-Control: no-store`.

mod common;

use common::{TestServer, error_code};
use kiln_core::{
    LifecycleClock, Node, SecretKey, SecretKind, SecretStore, SessionStore, TaskStore, Workspace,
    WorkspaceStatus,
};

const TOKEN: &str = "ghp_kilnRestartToken0123456789";

async fn ask(s: &TestServer, node: &Node, workspace: &Workspace, token: &str) -> reqwest::Response {
    let r = s
        .http
        .get(s.url(&format!(
            "/api/nodes/{}/workspaces/{}/git-token",
            node.id, workspace.id
        )))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "status {}",
        r.status()
    );
    r
}

/// Asserts a refusal's status and error code, and that it does not carry the token.
async fn refused(r: reqwest::Response, status: u16, code: &str) {
    let (got, body) = error_code(r).await;
    assert_eq!(
        (got, body["error"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    assert!(!body.to_string().contains(TOKEN), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_workspaces_node_gets_its_projects_token() {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let project = s.project(&api).await;
    let key = SecretKey::project(user.id, project.id, SecretKind::GitToken);
    s.store
        .put_secret(&s.state.credentials.seal(key, TOKEN, s.state.clock.now()))
        .await
        .unwrap();
    let task = s.task(&api, &project, false).await;
    let (node, node_token) = s.node(user.id).await;
    let (workspace, workspace_token) = s.workspace(&node, &task).await;

    let r = ask(&s, &node, &workspace, &node_token).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "token": TOKEN }));

    // Another node's token, even of the same owner, for this node's path.
    let (other, other_token) = s.node(user.id).await;
    refused(
        ask(&s, &node, &workspace, &other_token).await,
        403,
        "forbidden",
    )
    .await;
    // That node asking for this node's workspace on its own path.
    refused(
        ask(&s, &other, &workspace, &other_token).await,
        404,
        "not_found",
    )
    .await;
    // The workspace's own callback token is not a node token.
    refused(
        ask(&s, &node, &workspace, &workspace_token).await,
        403,
        "forbidden",
    )
    .await;
    // No token at all.
    let r = s
        .http
        .get(s.url(&format!(
            "/api/nodes/{}/workspaces/{}/git-token",
            node.id, workspace.id
        )))
        .send()
        .await
        .unwrap();
    refused(r, 401, "unauthorized").await;

    // A workspace that is gone gets nothing.
    let mut destroyed = workspace.clone();
    destroyed.status = WorkspaceStatus::Destroyed;
    s.store.update_workspace(&destroyed).await.unwrap();
    refused(
        ask(&s, &node, &destroyed, &node_token).await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_without_a_token_gets_none_and_the_owners_default_applies() {
    let s = TestServer::start().await;
    let (user, api) = s.user("bob").await;
    let project = s.project(&api).await;
    let task = s.task(&api, &project, false).await;
    let (node, node_token) = s.node(user.id).await;
    let (workspace, _) = s.workspace(&node, &task).await;
    refused(
        ask(&s, &node, &workspace, &node_token).await,
        404,
        "no_git_token",
    )
    .await;

    // The owner's default git token stands in for the project's own.
    let key = SecretKey::user(user.id, SecretKind::GitToken);
    s.store
        .put_secret(&s.state.credentials.seal(key, TOKEN, s.state.clock.now()))
        .await
        .unwrap();
    let r = ask(&s, &node, &workspace, &node_token).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["token"], TOKEN);
    assert!(s.store.get_project(project.id).await.unwrap().is_some());
}
