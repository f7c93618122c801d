//! `DELETE /api/workspaces/{id}` discards the workspace a failed or cancelled task kept, and
//! re-run, task delete and project delete do it too: the destroy goes to the node, and the
//! node goes back to the warm pool once it reports the workspace gone.

mod common;

use common::{TestServer, error_code};
use kiln_core::protocol::NodeCommand;
use kiln_core::{
    NodeId, NodeState, NodeStore, Task, TaskStatus, TaskStore, Workspace, WorkspaceId,
    WorkspaceStatus,
};
use serde_json::json;

/// A Run Now task on a booted node, its agent started.
async fn running(s: &TestServer, api: &str, owner: kiln_core::UserId) -> Started {
    let p = s.project(api).await;
    let task = s.task(api, &p, true).await;
    let (node, token) = s.boot_node(owner).await;
    let batch = s.poll(node, &token, 0).await;
    let NodeCommand::CreateWorkspace { workspace_id, .. } = batch.commands[0].command.clone()
    else {
        panic!("expected create_workspace, got {batch:?}");
    };
    let r = s
        .event(
            node,
            &token,
            json!({"type": "agent_started", "workspace_id": workspace_id, "branch": null}),
        )
        .await;
    assert_eq!(r.status(), 200);
    Started {
        project: p.id,
        task: s.get_task(task.id).await,
        node,
        token,
        workspace: workspace_id,
        seq: batch.commands[0].seq,
    }
}

struct Started {
    project: kiln_core::ProjectId,
    task: Task,
    node: NodeId,
    token: String,
    workspace: WorkspaceId,
    seq: u64,
}

/// The task's agent fails: the task is failed, its workspace kept, its node claimed.
async fn fail(s: &TestServer, st: &Started) {
    let r = s
        .event(
            st.node,
            &st.token,
            json!({"type": "failed", "workspace_id": st.workspace, "error": "tests failed"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.get_task(st.task.id).await.status, TaskStatus::Failed);
    let node = s.store.get_node(st.node).await.unwrap().unwrap();
    assert_eq!(
        (node.state, node.claimed_by),
        (NodeState::Active, Some(st.task.id))
    );
}

/// The node receives the destroy command of `workspace` and reports it done.
async fn node_destroys(s: &TestServer, st: &Started, workspace: WorkspaceId) {
    let mut after = st.seq;
    loop {
        let batch = s.poll(st.node, &st.token, after).await;
        assert!(!batch.commands.is_empty(), "no destroy command arrived");
        for c in &batch.commands {
            after = c.seq;
            if c.command
                == (NodeCommand::DestroyWorkspace {
                    workspace_id: workspace,
                })
            {
                let r = s
                    .event(
                        st.node,
                        &st.token,
                        json!({"type": "destroyed", "workspace_id": workspace}),
                    )
                    .await;
                assert_eq!(r.status(), 200);
                return;
            }
        }
    }
}

async fn node_is_warm_and_free(s: &TestServer, node: NodeId) {
    let node = s.store.get_node(node).await.unwrap().unwrap();
    assert_eq!((node.state, node.claimed_by), (NodeState::Warm, None));
}

async fn discard(s: &TestServer, token: &str, workspace: WorkspaceId) -> reqwest::Response {
    s.http
        .delete(s.url(&format!("/api/workspaces/{workspace}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn discarding_a_failed_tasks_workspace_destroys_it_and_frees_its_node() {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let st = running(&s, &api, user.id).await;
    fail(&s, &st).await;

    let r = discard(&s, &api, st.workspace).await;
    assert_eq!(r.status(), 200);
    let ws: Workspace = r.json().await.unwrap();
    assert_eq!(ws.status, WorkspaceStatus::Destroying);
    node_destroys(&s, &st, st.workspace).await;
    let ws = s.store.get_workspace(st.workspace).await.unwrap().unwrap();
    assert_eq!(ws.status, WorkspaceStatus::Destroyed);
    node_is_warm_and_free(&s, st.node).await;
    // Again: unchanged.
    let r = discard(&s, &api, st.workspace).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Workspace>().await.unwrap().status,
        WorkspaceStatus::Destroyed
    );
}

#[tokio::test]
async fn a_running_tasks_workspace_is_409_and_unknown_or_foreign_ones_are_404() {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let (_, bob) = s.user("bob").await;
    let st = running(&s, &api, user.id).await;

    let (status, body) = error_code(discard(&s, &api, st.workspace).await).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cancel the task first"),
        "{body}"
    );
    let (status, _) = error_code(discard(&s, &bob, st.workspace).await).await;
    assert_eq!(status, 404, "another user's workspace is not found");
    let (status, _) = error_code(discard(&s, &api, WorkspaceId::new()).await).await;
    assert_eq!(status, 404);
    let r = s
        .http
        .delete(s.url("/api/workspaces/not-an-id"))
        .bearer_auth(&api)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await.0,
        404,
        "as for GET, a malformed id is not found"
    );
    let r = s
        .http
        .delete(s.url(&format!("/api/workspaces/{}", st.workspace)))
        .send()
        .await
        .unwrap();
    let (status, _) = error_code(r).await;
    assert_eq!(status, 401);
    // Nothing was touched.
    let ws = s.store.get_workspace(st.workspace).await.unwrap().unwrap();
    assert_eq!(ws.status, WorkspaceStatus::Running);
    assert_eq!(s.get_task(st.task.id).await.status, TaskStatus::InProgress);

    // Cancelled, it can be discarded.
    let r = s
        .http
        .post(s.url(&format!("/api/tasks/{}/cancel", st.task.id)))
        .bearer_auth(&api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = discard(&s, &api, st.workspace).await;
    assert_eq!(r.status(), 200);
    node_destroys(&s, &st, st.workspace).await;
    node_is_warm_and_free(&s, st.node).await;
}

#[tokio::test]
async fn a_rerun_discards_the_kept_workspace_and_frees_the_old_node() {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let st = running(&s, &api, user.id).await;
    fail(&s, &st).await;

    let r = s
        .http
        .post(s.url(&format!("/api/tasks/{}/rerun", st.task.id)))
        .bearer_auth(&api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The old node removes the kept workspace while the re-run waits for a node.
    node_destroys(&s, &st, st.workspace).await;
    node_is_warm_and_free(&s, st.node).await;
}

#[tokio::test]
async fn deleting_a_task_discards_its_kept_workspace() {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let st = running(&s, &api, user.id).await;
    fail(&s, &st).await;

    let r = s
        .http
        .delete(s.url(&format!("/api/tasks/{}", st.task.id)))
        .bearer_auth(&api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    node_destroys(&s, &st, st.workspace).await;
    node_is_warm_and_free(&s, st.node).await;
}

#[tokio::test]
async fn deleting_a_project_discards_its_tasks_kept_workspaces() {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let st = running(&s, &api, user.id).await;
    let r = s
        .http
        .post(s.url(&format!("/api/tasks/{}/cancel", st.task.id)))
        .bearer_auth(&api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = s
        .http
        .delete(s.url(&format!("/api/projects/{}", st.project)))
        .bearer_auth(&api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    node_destroys(&s, &st, st.workspace).await;
    node_is_warm_and_free(&s, st.node).await;
}
