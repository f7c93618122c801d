//! Heartbeats over real HTTP settle a workspace that vanished from its live node: the task
//! fails with a reason once consecutive heartbeats leave the workspace out long after it
//! last changed, and never because of heartbeats that may predate its start.

mod common;

use common::TestServer;
use kiln_core::protocol::NodeCommand;
use kiln_core::{NodeId, SessionStatus, SessionStore, TaskStatus, TaskStore, WorkspaceId};
use serde_json::json;

/// Posts a heartbeat listing `workspaces`, as the node's agent host does.
async fn heartbeat(s: &TestServer, node: NodeId, token: &str, workspaces: &[WorkspaceId]) {
    let listed: Vec<_> = workspaces
        .iter()
        .map(|w| json!({"workspaceId": w, "agentRunning": true}))
        .collect();
    let r = s
        .http
        .post(s.url(&format!("/api/nodes/{node}/heartbeat")))
        .bearer_auth(token)
        .json(&json!({
            "nodeId": node,
            "outbox": {"pending": 0, "oldestPendingMs": 0, "delivered": 0, "dropped": 0, "lastError": null},
            "workspaces": listed,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

#[tokio::test]
async fn a_workspace_gone_from_a_live_nodes_heartbeats_fails_its_task_with_a_reason() {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let p = s.project(&api).await;
    let task = s.task(&api, &p, true).await;
    let (node, token) = s.boot_node(user.id).await;
    let batch = s.poll(node, &token, 0).await;
    let NodeCommand::CreateWorkspace { workspace_id, .. } = batch.commands[0].command.clone()
    else {
        panic!("expected create_workspace, got {batch:?}");
    };

    // A heartbeat built before the workspace existed, arriving (twice) after its start.
    let r = s
        .event(
            node,
            &token,
            json!({"type": "agent_started", "workspace_id": workspace_id, "branch": null}),
        )
        .await;
    assert_eq!(r.status(), 200);
    heartbeat(&s, node, &token, &[]).await;
    heartbeat(&s, node, &token, &[]).await;
    assert_eq!(s.get_task(task.id).await.status, TaskStatus::InProgress);
    heartbeat(&s, node, &token, &[workspace_id]).await;

    // The workspace has been running for ten minutes when it vanishes from the node.
    let mut ws = s.store.get_workspace(workspace_id).await.unwrap().unwrap();
    ws.updated_at -= chrono::Duration::minutes(10);
    s.store.update_workspace(&ws).await.unwrap();
    heartbeat(&s, node, &token, &[]).await;
    assert_eq!(s.get_task(task.id).await.status, TaskStatus::InProgress);
    heartbeat(&s, node, &token, &[]).await;

    let failed = s.get_task(task.id).await;
    assert_eq!(failed.status, TaskStatus::Failed);
    let reason = failed.error_message.unwrap();
    assert!(
        reason.contains(&format!("no longer has workspace {workspace_id}")),
        "{reason}"
    );
    // Its chat is no longer stuck either.
    let session = s
        .store
        .get_session(failed.session_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.status, SessionStatus::Stopped);
}
