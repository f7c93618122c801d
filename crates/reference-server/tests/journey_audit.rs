//! Defects a user-journey audit found: a deleted task that open pages never heard of, error
//! messages that were serde's raw text, and endpoints answering alike requests unalike.

mod common;

use std::time::Duration;

use common::{TestServer, error_code};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn viewer(s: &TestServer, token: &str, project: kiln_core::ProjectId) -> Socket {
    let url = format!(
        "{}/api/projects/{project}/ws",
        s.url.replace("http://", "ws://")
    );
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The next frame of one of `kinds`, skipping others; panics after 5 s without one.
async fn next_of(ws: &mut Socket, kinds: &[&str]) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kinds:?} frame within 5 s"))
            .unwrap()
            .unwrap();
        if let tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if kinds.contains(&v["type"].as_str().unwrap_or_default()) {
                return v;
            }
        }
    }
}

/// Deleting a task sent nothing on the live feed, so every other open board kept its card
/// until reloaded. Viewers of its project now get `task.deleted` with its id.
#[tokio::test]
async fn deleting_a_task_tells_the_viewers_of_its_project() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let project = s.project(&token).await;
    let other_project = s.project(&token).await;
    let task = s.task(&token, &project, false).await;
    let mut board = viewer(&s, &token, project.id).await;
    let mut other_board = viewer(&s, &token, other_project.id).await;

    let r = s
        .http
        .delete(s.url(&format!("/api/tasks/{}", task.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let frame = next_of(&mut board, &["task.deleted", "task.updated"]).await;
    assert_eq!(frame["type"], "task.deleted", "{frame}");
    assert_eq!(frame["data"]["id"], json!(task.id));
    assert_eq!(frame["data"]["projectId"], json!(project.id));
    // The draft's session is closed and announced as before.
    let session = next_of(&mut board, &["session.updated"]).await;
    assert_eq!(session["data"]["id"], json!(task.session_id));
    assert_eq!(session["data"]["status"], "closed");

    // A viewer of another project hears nothing of it: a task made there afterwards is the
    // first task frame it gets.
    let later = s.task(&token, &other_project, false).await;
    let frame = next_of(&mut other_board, &["task.deleted", "task.updated"]).await;
    assert_eq!(frame["type"], "task.updated", "{frame}");
    assert_eq!(frame["data"]["id"], json!(later.id));
}

async fn post_raw(s: &TestServer, token: &str, path: &str, body: &str) -> (u16, Value) {
    let r = s
        .http
        .post(s.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    error_code(r).await
}

/// Body rejections were serde's text ("invalid value: integer `99999999999`, expected i32",
/// "expected struct CreateProject"). They now name the field and what it takes, in words,
/// with the same statuses: 400 for JSON that does not parse, 422 for the wrong shape.
#[tokio::test]
async fn a_rejected_body_names_the_field_and_what_it_takes() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let project = s.project(&token).await;
    let tasks = format!("/api/projects/{}/tasks", project.id);
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            &tasks,
            r#"{"description": "x", "priority": 99999999999}"#,
            422,
            "priority must be a whole number from -2147483648 to 2147483647 (got 99999999999)",
        ),
        (
            &tasks,
            r#"{"description": "x", "priority": "high"}"#,
            422,
            "priority must be a whole number from -2147483648 to 2147483647 (got a string)",
        ),
        (
            &tasks,
            r#"{"description": 5}"#,
            422,
            "description must be a string (got a number)",
        ),
        (&tasks, r#"{"title": "x"}"#, 422, "description is required"),
        (
            &tasks,
            r#"{"description": "x", "vmSize": "huge"}"#,
            422,
            "vmSize must be one of: small, medium, large (got \"huge\")",
        ),
        (
            &tasks,
            r#"{"description": "x", "runNow": "yes"}"#,
            422,
            "runNow must be true or false (got a string)",
        ),
        (
            &tasks,
            r#"{"description": "x", "colour": "red"}"#,
            422,
            "unknown field colour; the fields are: title, description, priority, vmSize, agentHint, runNow",
        ),
        (
            "/api/projects",
            "[]",
            422,
            "the body must be a JSON object (got a list)",
        ),
        (
            "/api/projects",
            r#"{"name": null, "repositoryUrl": "/tmp/r"}"#,
            422,
            "name must be a string (got null)",
        ),
        (
            "/api/tokens",
            r#"{"name": "ci", "expiresInSecs": -1}"#,
            422,
            "expiresInSecs must be a whole number from 0 to 18446744073709551615 (got -1)",
        ),
        (
            "/api/projects",
            r#"{"name": "x", "#,
            400,
            "the body is not valid JSON: EOF while parsing a value at line 1 column 14",
        ),
    ];
    for (path, body, status, message) in cases {
        let (got_status, got) = post_raw(&s, &token, path, body).await;
        assert_eq!(
            (got_status, got["message"].as_str().unwrap()),
            (*status, *message),
            "POST {path} {body}: {got}"
        );
    }
}

/// A kiln-core enum in a query ("?status=") listed the accepted values without commas and
/// with a trailing space.
#[tokio::test]
async fn an_unknown_status_filter_lists_the_statuses_with_commas() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let project = s.project(&token).await;
    let r = s
        .http
        .get(s.url(&format!("/api/projects/{}/tasks?status=done", project.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, body) = error_code(r).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        "invalid task status \"done\"; expected one of: draft, ready, queued, delegated, in_progress, completed, failed, cancelled"
    );
}

/// `limit=0` listed no sessions (200 `[]`) where the messages endpoint refuses it; both
/// refuse it now.
#[tokio::test]
async fn a_zero_session_limit_is_refused_like_a_zero_message_limit() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let project = s.project(&token).await;
    let task = s.task(&token, &project, false).await;
    let get = |path: String| s.http.get(s.url(&path)).bearer_auth(&token).send();

    let sessions = format!("/api/projects/{}/sessions", project.id);
    let (status, body) = error_code(get(format!("{sessions}?limit=0")).await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(body["message"], "limit must be at least 1");
    let messages = format!("/api/sessions/{}/messages", task.session_id.unwrap());
    let (status, _) = error_code(get(format!("{messages}?limit=0")).await.unwrap()).await;
    assert_eq!(status, 400);

    let listed: Vec<Value> = get(format!("{sessions}?limit=1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

/// `GET /login` without a token showed a browser a page of raw JSON (400); like a used
/// link, it now sends the browser to the sign-in page, and scripts keep the JSON error.
#[tokio::test]
async fn a_browser_opening_login_without_a_token_is_sent_to_the_sign_in_page() {
    let s = TestServer::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for path in ["/login", "/login?token=", "/login?other=1"] {
        let r = http
            .get(s.url(path))
            .header("accept", browser_accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{path}: a browser is not shown JSON");
        assert_eq!(r.headers()["location"], "/?login=invalid", "{path}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    let r = http
        .get(s.url("/login"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let (status, body) = error_code(r).await;
    assert_eq!(status, 400, "scripts keep the JSON error: {body}");
    assert_eq!(body["error"], "invalid_request");
}
