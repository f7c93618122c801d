//! The node protocol's server side over real HTTP, with the real pool and runner: a run from
//! Run Now to a warm node, failure, cancel, the token rules, 410 for stopped nodes, deltas,
//! and the project WebSocket.

mod common;

use std::time::Duration;

use common::{TestServer, error_code};
use futures::StreamExt;
use kiln_core::protocol::NodeCommand;
use kiln_core::{
    MessageId, NodeId, NodeState, NodeStore, SessionStatus, SessionStore, TaskStatus, TaskStore,
    WorkspaceId, WorkspaceStatus,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

struct Started {
    s: TestServer,
    api: String,
    task: kiln_core::Task,
    node: NodeId,
    node_token: String,
    workspace: WorkspaceId,
    ws_token: String,
}

/// Run Now, the node says hello, picks up its CreateWorkspace command.
async fn started() -> Started {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let p = s.project(&api).await;
    let task = s.task(&api, &p, true).await;
    let (node, node_token) = s.boot_node(user.id).await;
    let batch = s.poll(node, &node_token, 0).await;
    assert_eq!(batch.commands.len(), 1);
    let NodeCommand::CreateWorkspace {
        workspace_id,
        callback_token,
        session_id,
        ..
    } = batch.commands[0].command.clone()
    else {
        panic!("expected create_workspace, got {batch:?}");
    };
    assert_eq!(session_id, task.session_id);
    Started {
        s,
        api,
        task,
        node,
        node_token,
        workspace: workspace_id,
        ws_token: callback_token,
    }
}

impl Started {
    async fn event(&self, event: Value) {
        let r = self.s.event(self.node, &self.node_token, event).await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }

    async fn post_message(&self, content: &str) -> Value {
        let r = self
            .s
            .http
            .post(
                self.s
                    .url(&format!("/api/workspaces/{}/messages", self.workspace)),
            )
            .bearer_auth(&self.ws_token)
            .json(&json!({"messages": [{
                "id": MessageId::new(),
                "sessionId": self.task.session_id,
                "role": "assistant",
                "content": content,
                "createdAt": "2026-11-25T07:00:00Z",
            }]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

#[tokio::test]
async fn a_run_goes_from_run_now_to_completed_and_the_node_warm() {
    let st = started().await;
    let s = &st.s;
    assert_eq!(s.get_task(st.task.id).await.status, TaskStatus::Delegated);
    st.event(json!({"type": "agent_started", "workspace_id": st.workspace, "branch": format!("task/{}", st.task.id)}))
        .await;
    let task = s.get_task(st.task.id).await;
    assert_eq!(task.status, TaskStatus::InProgress);
    let session = s
        .store
        .get_session(task.session_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.status, SessionStatus::Active);
    assert_eq!(session.workspace_id, Some(st.workspace));
    assert_eq!(st.post_message("Done: fixed it.").await["persisted"], 1);
    st.event(json!({"type": "completed", "workspace_id": st.workspace, "branch": format!("task/{}", st.task.id), "pr_url": null, "summary": "Fixed.", "warning": null}))
        .await;
    // A repeated report changes nothing.
    st.event(json!({"type": "completed", "workspace_id": st.workspace, "branch": null, "pr_url": null, "summary": null, "warning": null}))
        .await;
    let task = s.get_task(st.task.id).await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.summary.as_deref(), Some("Fixed."));
    let batch = s.poll(st.node, &st.node_token, 1).await;
    assert!(
        matches!(batch.commands[..], [ref c] if matches!(c.command, NodeCommand::DestroyWorkspace { workspace_id } if workspace_id == st.workspace)),
        "{batch:?}"
    );
    st.event(json!({"type": "destroyed", "workspace_id": st.workspace}))
        .await;
    let ws = s.store.get_workspace(st.workspace).await.unwrap().unwrap();
    assert_eq!(ws.status, WorkspaceStatus::Destroyed);
    let node = s.store.get_node(st.node).await.unwrap().unwrap();
    assert_eq!(node.state, NodeState::Warm);
    assert!(node.warm_until.is_some());
    // The acknowledged command is gone.
    let batch = s.poll(st.node, &st.node_token, batch.commands[0].seq).await;
    assert!(batch.commands.is_empty());
}

#[tokio::test]
async fn a_failed_agent_fails_the_task_and_keeps_the_workspace() {
    let st = started().await;
    st.event(json!({"type": "agent_started", "workspace_id": st.workspace, "branch": null}))
        .await;
    st.event(json!({"type": "failed", "workspace_id": st.workspace, "error": "agent crashed"}))
        .await;
    let task = st.s.get_task(st.task.id).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error_message.as_deref(), Some("agent crashed"));
    let ws =
        st.s.store
            .get_workspace(st.workspace)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(ws.status, WorkspaceStatus::Stopped);
    let node = st.s.store.get_node(st.node).await.unwrap().unwrap();
    assert_eq!(
        node.state,
        NodeState::Active,
        "the node stays with the kept workspace"
    );
}

#[tokio::test]
async fn cancelling_stops_the_agent_and_keeps_the_workspace() {
    let st = started().await;
    st.event(json!({"type": "agent_started", "workspace_id": st.workspace, "branch": null}))
        .await;
    let r =
        st.s.http
            .post(st.s.url(&format!("/api/tasks/{}/cancel", st.task.id)))
            .bearer_auth(&st.api)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        st.s.get_task(st.task.id).await.status,
        TaskStatus::Cancelled
    );
    let batch = st.s.poll(st.node, &st.node_token, 1).await;
    assert!(
        batch.commands.iter().any(|c| c.command
            == NodeCommand::Cancel {
                workspace_id: st.workspace
            }),
        "{batch:?}"
    );
    st.event(json!({"type": "cancelled", "workspace_id": st.workspace}))
        .await;
    let ws =
        st.s.store
            .get_workspace(st.workspace)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(ws.status, WorkspaceStatus::Stopped);
    // A cancelled task can be re-run; a completed one cannot be cancelled.
    let r =
        st.s.http
            .post(st.s.url(&format!("/api/tasks/{}/rerun", st.task.id)))
            .bearer_auth(&st.api)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn node_tokens_are_scoped_to_their_node_and_expire() {
    let st = started().await;
    let s = &st.s;
    let hb = |node: NodeId, token: Option<String>| {
        let mut r = s
            .http
            .post(s.url(&format!("/api/nodes/{node}/heartbeat")))
            .json(&json!({"nodeId": node, "outbox": {"pending": 0, "oldestPendingMs": 0, "delivered": 0, "dropped": 0, "lastError": null}, "workspaces": []}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = hb(st.node, Some(st.node_token.clone())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        s.store
            .get_node(st.node)
            .await
            .unwrap()
            .unwrap()
            .last_heartbeat_at
            .is_some()
    );
    // Another node of the same owner: node A's token is useless for it.
    let (other, other_token) = s.node(st.task.owner).await;
    assert_eq!(
        hb(other.id, Some(other_token.clone()))
            .await
            .unwrap()
            .status(),
        200
    );
    for path in ["heartbeat", "hello", "events", "deltas"] {
        let r = s
            .http
            .post(s.url(&format!("/api/nodes/{}/{path}", other.id)))
            .bearer_auth(&st.node_token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await.0, 403, "{path}");
    }
    let r = s
        .http
        .get(s.url(&format!("/api/nodes/{}/commands?waitMs=0", other.id)))
        .bearer_auth(&st.node_token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 403);
    // A workspace token is not a node token.
    assert_eq!(
        error_code(hb(st.node, Some(st.ws_token.clone())).await.unwrap())
            .await
            .0,
        403
    );
    // Missing, forged, expired: 401.
    assert_eq!(error_code(hb(st.node, None).await.unwrap()).await.0, 401);
    assert_eq!(
        error_code(hb(st.node, Some("x.y.z".into())).await.unwrap())
            .await
            .0,
        401
    );
    let now = kiln_core::LifecycleClock::now(&*s.state.clock);
    let expired = s.state.signer.node_token(
        st.node,
        now - chrono::Duration::hours(1),
        now - chrono::Duration::seconds(1),
    );
    let (st_code, body) = error_code(hb(st.node, Some(expired)).await.unwrap()).await;
    assert_eq!(
        (st_code, body["error"].as_str().unwrap()),
        (401, "token_expired")
    );
    // A report about a workspace on another node: 404.
    let r = s
        .event(
            other.id,
            &other_token,
            json!({"type": "cancelled", "workspace_id": st.workspace}),
        )
        .await;
    assert_eq!(error_code(r).await.0, 404);
}

#[tokio::test]
async fn a_stopped_node_gets_410_gone() {
    let s = TestServer::start().await;
    let (user, _) = s.user("ann").await;
    let (node, token) = s.node(user.id).await;
    let now = s.state.clock.now();
    s.store
        .begin_destroy_node(node.id, kiln_core::DestroyGuard::Any, now)
        .await
        .unwrap();
    let r = s
        .http
        .get(s.url(&format!("/api/nodes/{}/commands?waitMs=0", node.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (code, body) = error_code(r).await;
    assert_eq!(
        (code, body["error"].as_str().unwrap()),
        (410, "node_stopped")
    );
    let r = s
        .http
        .post(s.url(&format!("/api/nodes/{}/heartbeat", node.id)))
        .bearer_auth(&token)
        .json(&json!({"nodeId": node.id, "outbox": {"pending": 0, "oldestPendingMs": 0, "delivered": 0, "dropped": 0, "lastError": null}, "workspaces": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 410);
}

async fn ws_connect(
    s: &TestServer,
    token: &str,
    project: kiln_core::ProjectId,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!(
        "{}/api/projects/{project}/ws",
        s.url.replace("http://", "ws://")
    );
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn next_of(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    kind: &str,
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} within 5 s"))
            .unwrap()
            .unwrap();
        if let tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v["data"].clone();
            }
        }
    }
}

#[tokio::test]
async fn viewers_get_messages_tasks_and_live_deltas_of_their_project_only() {
    let st = started().await;
    let s = &st.s;
    let project = st.task.project_id;
    let mut viewer = ws_connect(s, &st.api, project).await;
    st.event(json!({"type": "agent_started", "workspace_id": st.workspace, "branch": null}))
        .await;
    let task = next_of(&mut viewer, "task.updated").await;
    assert_eq!(task["id"], json!(st.task.id));
    // Live text, then the stored message.
    let segment = MessageId::new();
    let delta = |text: &str| json!({"deltas": [{"workspaceId": st.workspace, "sessionId": st.task.session_id, "segmentId": segment, "text": text}]});
    let r = s
        .http
        .post(s.url(&format!("/api/nodes/{}/deltas", st.node)))
        .bearer_auth(&st.node_token)
        .json(&delta("Hel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let d = next_of(&mut viewer, "message.delta").await;
    assert_eq!(d["textSoFar"], "Hel");
    s.http
        .post(s.url(&format!("/api/nodes/{}/deltas", st.node)))
        .bearer_auth(&st.node_token)
        .json(&delta("lo"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        next_of(&mut viewer, "message.delta").await["textSoFar"],
        "Hello"
    );
    // A late viewer gets the text so far.
    let mut late = ws_connect(s, &st.api, project).await;
    let d = next_of(&mut late, "message.delta").await;
    assert_eq!(
        (d["segmentId"].clone(), d["textSoFar"].clone()),
        (json!(segment), json!("Hello"))
    );
    st.post_message("stored text").await;
    let m = next_of(&mut viewer, "message.new").await;
    assert_eq!(m["content"], "stored text");
    assert!(m["cursor"].as_i64().unwrap() >= 2);
    let m = next_of(&mut late, "message.new").await;
    assert_eq!(m["content"], "stored text");
    // Another user cannot watch the project; without credentials neither.
    let (_, bob) = s.user("bob").await;
    let url = format!(
        "{}/api/projects/{project}/ws",
        s.url.replace("http://", "ws://")
    );
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url.clone()).unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {bob}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    viewer.close(None).await.ok();
}

#[tokio::test]
async fn a_prompt_too_large_for_the_feed_reaches_the_node_whole() {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let p = s.project(&api).await;
    let description = format!("Refactor everything\n{}", "detail ".repeat(3000));
    let r = s
        .http
        .post(s.url(&format!("/api/projects/{}/tasks", p.id)))
        .bearer_auth(&api)
        .json(&json!({"description": description, "runNow": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (node, token) = s.boot_node(user.id).await;
    let batch = s.poll(node, &token, 0).await;
    match &batch.commands[0].command {
        NodeCommand::CreateWorkspace { prompt, .. } => {
            assert_eq!(prompt.as_ref().unwrap().text, description);
        }
        other => panic!("unexpected {other:?}"),
    }
}
