//! Every validation and auth rule of `POST /api/workspaces/{id}/messages`.

mod common;

use common::{TestServer, error_code};
use kiln_core::{MessageId, SessionId, Task, Workspace};
use serde_json::{Value, json};

struct Fixture {
    s: TestServer,
    task: Task,
    ws: Workspace,
    token: String,
}

async fn fixture() -> Fixture {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let p = s.project(&api).await;
    let task = s.task(&api, &p, true).await;
    let (node, _) = s.node(user.id).await;
    let (ws, token) = s.workspace(&node, &task).await;
    Fixture { s, task, ws, token }
}

fn message(session: SessionId, content: &str) -> Value {
    json!({
        "id": MessageId::new(),
        "sessionId": session,
        "role": "assistant",
        "content": content,
        "seq": 1,
        "createdAt": "2026-11-25T07:00:00.123Z",
    })
}

impl Fixture {
    fn session(&self) -> SessionId {
        self.task.session_id.unwrap()
    }

    async fn post_as(&self, token: Option<&str>, ws: &str, body: &Value) -> reqwest::Response {
        let mut r = self
            .s
            .http
            .post(self.s.url(&format!("/api/workspaces/{ws}/messages")))
            .json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    async fn post(&self, body: &Value) -> reqwest::Response {
        self.post_as(Some(&self.token), &self.ws.id.to_string(), body)
            .await
    }
}

#[tokio::test]
async fn a_batch_is_stored_and_redelivery_counts_duplicates() {
    let f = fixture().await;
    let batch = json!({"messages": [message(f.session(), "one"), message(f.session(), "two")]});
    let r = f.post(&batch).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"persisted": 2, "duplicates": 0})
    );
    let r = f.post(&batch).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"persisted": 0, "duplicates": 2})
    );
    // The task prompt the node captures under the derived id is a duplicate of the server's.
    let mut prompt = message(f.session(), "Fix the bug\nin login");
    prompt["id"] = json!(MessageId::for_task_prompt(f.task.id));
    prompt["role"] = json!("user");
    let r = f.post(&json!({"messages": [prompt]})).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"persisted": 0, "duplicates": 1})
    );
    let session = kiln_core::SessionStore::get_session(&*f.s.store, f.session())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.message_count, 3);
}

#[tokio::test]
async fn missing_invalid_and_expired_tokens_are_401() {
    let f = fixture().await;
    let body = json!({"messages": [message(f.session(), "x")]});
    let ws = f.ws.id.to_string();
    let (st, _) = error_code(f.post_as(None, &ws, &body).await).await;
    assert_eq!(st, 401);
    let (st, _) = error_code(f.post_as(Some("not.a.jwt"), &ws, &body).await).await;
    assert_eq!(st, 401);
    let forged = kiln_server::tokens::TokenSigner::new(b"another key".to_vec()).workspace_token(
        f.ws.node_id,
        f.ws.id,
        f.s.state.clock.now(),
        f.s.state.token_expiry(),
    );
    let (st, _) = error_code(f.post_as(Some(&forged), &ws, &body).await).await;
    assert_eq!(st, 401);
    let now = kiln_core::LifecycleClock::now(&*f.s.state.clock);
    let expired = f.s.state.signer.workspace_token(
        f.ws.node_id,
        f.ws.id,
        now - chrono::Duration::hours(2),
        now - chrono::Duration::seconds(1),
    );
    let (st, b) = error_code(f.post_as(Some(&expired), &ws, &body).await).await;
    assert_eq!((st, b["error"].as_str().unwrap()), (401, "token_expired"));
}

#[tokio::test]
async fn a_token_for_another_workspace_or_a_node_token_is_403() {
    let f = fixture().await;
    let body = json!({"messages": [message(f.session(), "x")]});
    let other = kiln_core::WorkspaceId::new();
    let (st, _) = error_code(f.post_as(Some(&f.token), &other.to_string(), &body).await).await;
    assert_eq!(st, 403);
    let node_token = f.s.state.signer.node_token(
        f.ws.node_id,
        kiln_core::LifecycleClock::now(&*f.s.state.clock),
        f.s.state.token_expiry(),
    );
    let (st, _) = error_code(
        f.post_as(Some(&node_token), &f.ws.id.to_string(), &body)
            .await,
    )
    .await;
    assert_eq!(st, 403);
    // A valid token for a workspace the store does not know: 404.
    let ghost = f.s.state.signer.workspace_token(
        f.ws.node_id,
        other,
        kiln_core::LifecycleClock::now(&*f.s.state.clock),
        f.s.state.token_expiry(),
    );
    let (st, b) = error_code(f.post_as(Some(&ghost), &other.to_string(), &body).await).await;
    assert_eq!(
        (st, b["error"].as_str().unwrap()),
        (404, "workspace_not_found")
    );
}

#[tokio::test]
async fn batch_size_must_be_1_to_100() {
    let f = fixture().await;
    let (st, b) = error_code(f.post(&json!({"messages": []})).await).await;
    assert_eq!(
        (st, b["error"].as_str().unwrap()),
        (400, "invalid_batch_size")
    );
    let many: Vec<Value> = (0..101).map(|_| message(f.session(), "x")).collect();
    let (st, _) = error_code(f.post(&json!({"messages": many})).await).await;
    assert_eq!(st, 400);
    let hundred: Vec<Value> = (0..100).map(|_| message(f.session(), "x")).collect();
    let r = f.post(&json!({"messages": hundred})).await;
    assert_eq!(r.status(), 200);
    let (st, _) = error_code(f.post(&json!({"other": []})).await).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn bodies_over_256_kib_are_413_and_non_json_is_400_or_415() {
    let f = fixture().await;
    let big = "x".repeat(200 * 1024);
    let body = json!({"messages": [message(f.session(), &big), message(f.session(), &big)]});
    let (st, _) = error_code(f.post(&body).await).await;
    assert_eq!(st, 413);
    // Just under the limit is fine.
    let body = json!({"messages": [message(f.session(), &"y".repeat(250 * 1024))]});
    assert_eq!(f.post(&body).await.status(), 200);
    let r =
        f.s.http
            .post(f.s.url(&format!("/api/workspaces/{}/messages", f.ws.id)))
            .bearer_auth(&f.token)
            .body("{\"messages\": [")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
    assert_eq!(error_code(r).await.0, 400);
    let r =
        f.s.http
            .post(f.s.url(&format!("/api/workspaces/{}/messages", f.ws.id)))
            .bearer_auth(&f.token)
            .body("{}")
            .header("content-type", "text/plain")
            .send()
            .await
            .unwrap();
    assert_eq!(error_code(r).await.0, 415);
}

#[tokio::test]
async fn invalid_messages_are_422_naming_exactly_them() {
    let f = fixture().await;
    let good = message(f.session(), "fine");
    let mut bad_role = message(f.session(), "x");
    bad_role["role"] = json!("robot");
    let empty = message(f.session(), "   ");
    let mut bad_time = message(f.session(), "x");
    bad_time["createdAt"] = json!("yesterday");
    let mut no_time = message(f.session(), "x");
    no_time.as_object_mut().unwrap().remove("createdAt");
    let mut bad_content = message(f.session(), "x");
    bad_content["content"] = json!(42);
    let bad = [&bad_role, &empty, &bad_time, &no_time, &bad_content];
    let mut all = vec![good.clone()];
    all.extend(bad.iter().map(|v| (*v).clone()));
    let (st, b) = error_code(f.post(&json!({"messages": all})).await).await;
    assert_eq!(
        (st, b["error"].as_str().unwrap()),
        (422, "invalid_messages")
    );
    let rejected: Vec<Value> = b["rejected"].as_array().unwrap().clone();
    let expected: Vec<Value> = bad.iter().map(|v| v["id"].clone()).collect();
    assert_eq!(rejected, expected);
    // Nothing was stored from a refused batch; the good one alone goes through.
    let r = f.post(&json!({"messages": [good]})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["persisted"], 1);
    // Each rule alone.
    for v in bad {
        let (st, b) = error_code(f.post(&json!({"messages": [v]})).await).await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(b["rejected"], json!([v["id"]]));
    }
    // A message without an id cannot be named: 400.
    let mut no_id = message(f.session(), "x");
    no_id.as_object_mut().unwrap().remove("id");
    let (st, _) = error_code(f.post(&json!({"messages": [no_id]})).await).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn sessions_outside_the_workspaces_project_are_404() {
    let f = fixture().await;
    // Another user's project.
    let other_user_token = f.s.user("bob").await.1;
    let other_project = f.s.project(&other_user_token).await;
    let other_task = f.s.task(&other_user_token, &other_project, false).await;
    let foreign = message(other_task.session_id.unwrap(), "sneaky");
    let unknown = message(SessionId::new(), "lost");
    let good = message(f.session(), "fine");
    let (st, b) = error_code(
        f.post(&json!({"messages": [good, foreign.clone(), unknown.clone()]}))
            .await,
    )
    .await;
    assert_eq!(
        (st, b["error"].as_str().unwrap()),
        (404, "session_not_found")
    );
    assert_eq!(b["rejected"], json!([foreign["id"], unknown["id"]]));
    let page = kiln_core::SessionStore::list_messages(
        &*f.s.store,
        other_task.session_id.unwrap(),
        kiln_core::MessagePage::Latest { limit: 10 },
    )
    .await
    .unwrap();
    assert_eq!(page.len(), 1, "only the task prompt; nothing sneaked in");
}
