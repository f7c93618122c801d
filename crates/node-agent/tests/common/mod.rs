//! A small fake control plane (axum on 127.0.0.1) speaking the node protocol, a git
//! fixture, and helpers shared by the end-to-end tests.
#![allow(dead_code, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_core::protocol::{
    CommandBatch, DeltaBatch, Heartbeat, MessageDelta, NodeCommand, NodeHello, SequencedCommand,
    WorkspaceEvent,
};
use kiln_core::{ChatMessage, MessageId, WorkspaceId};
use serde::Deserialize;
use tokio::sync::Notify;

pub const NODE_TOKEN: &str = "node-token";

#[derive(Debug, Default)]
pub struct Inner {
    pub commands: Vec<SequencedCommand>,
    pub hellos: Vec<NodeHello>,
    pub heartbeats: Vec<Heartbeat>,
    pub events: Vec<WorkspaceEvent>,
    pub deltas: Vec<MessageDelta>,
    /// Stored messages, deduplicated by id, in arrival order.
    pub messages: Vec<ChatMessage>,
    pub ids: HashMap<MessageId, usize>,
    pub duplicates: u64,
    /// Tokens each workspace's deliveries must carry.
    pub workspace_tokens: HashMap<WorkspaceId, String>,
    pub rejected_auth: u64,
    /// The git token of each workspace created with one (what the control plane would
    /// answer a restarted node), and how many times a node asked for one.
    pub git_tokens: HashMap<WorkspaceId, String>,
    pub git_token_requests: u64,
    /// The `after` of every command poll: what the node acknowledged.
    pub polled_after: Vec<u64>,
}

/// The fake control plane's state, shared with the test.
#[derive(Debug, Clone, Default)]
pub struct Fake {
    pub inner: Arc<Mutex<Inner>>,
    pub notify: Arc<Notify>,
    /// Answer 410 Gone on every node endpoint.
    pub gone: Arc<AtomicBool>,
    /// Answer 503 on the messages endpoint.
    pub messages_down: Arc<AtomicBool>,
    /// Accept this many more message batches, then behave as `messages_down`.
    pub batches_left: Arc<AtomicU64>,
    /// Hold every git-token request unanswered while set (a control plane that is slow to
    /// answer it).
    pub git_token_stalled: Arc<AtomicBool>,
}

impl Fake {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn push(&self, command: NodeCommand) -> u64 {
        let mut inner = self.lock();
        if let NodeCommand::CreateWorkspace {
            workspace_id,
            callback_token,
            git_token,
            ..
        } = &command
        {
            inner
                .workspace_tokens
                .insert(*workspace_id, callback_token.clone());
            if let Some(token) = git_token {
                inner
                    .git_tokens
                    .insert(*workspace_id, token.expose().to_owned());
            }
        }
        let seq = inner.commands.len() as u64 + 1;
        inner.commands.push(SequencedCommand { seq, command });
        drop(inner);
        self.notify.notify_waiters();
        seq
    }

    pub fn events(&self) -> Vec<WorkspaceEvent> {
        self.lock().events.clone()
    }

    pub fn messages(&self) -> Vec<ChatMessage> {
        self.lock().messages.clone()
    }

    /// Waits until `check` holds (polling), panicking after `secs` seconds.
    pub async fn wait_for<T>(
        &self,
        secs: u64,
        what: &str,
        mut check: impl FnMut(&Inner) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(value) = check(&self.lock()) {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; state: {:#?}",
                    self.lock().events
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for an event of `workspace` matching `pick`.
    pub async fn wait_event(
        &self,
        what: &str,
        pick: impl Fn(&WorkspaceEvent) -> bool,
    ) -> WorkspaceEvent {
        self.wait_for(30, what, |inner| {
            inner.events.iter().find(|e| pick(e)).cloned()
        })
        .await
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {token}"))
}

fn gone() -> Response {
    (
        StatusCode::GONE,
        Json(serde_json::json!({"error": "node_stopped"})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PollQuery {
    after: u64,
    wait_ms: u64,
}

#[derive(Deserialize)]
struct MessagesBody {
    messages: Vec<ChatMessage>,
}

async fn hello(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Json(body): Json<NodeHello>,
) -> Response {
    if fake.gone.load(Ordering::Relaxed) {
        return gone();
    }
    if !authorized(&headers, NODE_TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    fake.lock().hellos.push(body);
    Json(serde_json::json!({})).into_response()
}

async fn heartbeat(State(fake): State<Fake>, Json(body): Json<Heartbeat>) -> Response {
    if fake.gone.load(Ordering::Relaxed) {
        return gone();
    }
    fake.lock().heartbeats.push(body);
    Json(serde_json::json!({})).into_response()
}

async fn commands(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<PollQuery>,
) -> Response {
    if fake.gone.load(Ordering::Relaxed) {
        return gone();
    }
    if !authorized(&headers, NODE_TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    fake.lock().polled_after.push(q.after);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms.min(2_000));
    loop {
        let notified = fake.notify.notified();
        let batch: Vec<SequencedCommand> = fake
            .lock()
            .commands
            .iter()
            .filter(|c| c.seq > q.after)
            .cloned()
            .collect();
        if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
            return Json(CommandBatch { commands: batch }).into_response();
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

async fn events(State(fake): State<Fake>, Json(body): Json<WorkspaceEvent>) -> Response {
    if fake.gone.load(Ordering::Relaxed) {
        return gone();
    }
    fake.lock().events.push(body);
    Json(serde_json::json!({})).into_response()
}

async fn git_token(
    State(fake): State<Fake>,
    UrlPath((_, workspace)): UrlPath<(String, WorkspaceId)>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, NODE_TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    fake.lock().git_token_requests += 1;
    while fake.git_token_stalled.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inner = fake.lock();
    match inner.git_tokens.get(&workspace) {
        Some(token) => (
            [("cache-control", "no-store")],
            Json(serde_json::json!({ "token": token })),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no_git_token", "message": "the workspace's project has no git token"})),
        )
            .into_response(),
    }
}

async fn deltas(State(fake): State<Fake>, Json(body): Json<DeltaBatch>) -> Response {
    fake.lock().deltas.extend(body.deltas);
    (StatusCode::ACCEPTED, Json(serde_json::json!({}))).into_response()
}

async fn messages(
    State(fake): State<Fake>,
    UrlPath(workspace): UrlPath<WorkspaceId>,
    headers: HeaderMap,
    Json(body): Json<MessagesBody>,
) -> Response {
    if fake.messages_down.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if fake
        .batches_left
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_err()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let mut inner = fake.lock();
    let token = inner
        .workspace_tokens
        .get(&workspace)
        .cloned()
        .unwrap_or_default();
    if !authorized(&headers, &token) {
        inner.rejected_auth += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let (mut persisted, mut duplicates) = (0u64, 0u64);
    for message in body.messages {
        if inner.ids.contains_key(&message.id) {
            duplicates += 1;
            continue;
        }
        let at = inner.messages.len();
        inner.ids.insert(message.id, at);
        inner.messages.push(message);
        persisted += 1;
    }
    inner.duplicates += duplicates;
    Json(serde_json::json!({"persisted": persisted, "duplicates": duplicates})).into_response()
}

/// Starts the fake on `addr` (port 0: any free port). Returns its state and base URL.
pub async fn start_fake_on(addr: SocketAddr) -> (Fake, String) {
    let fake = Fake {
        batches_left: Arc::new(AtomicU64::new(u64::MAX)),
        ..Fake::default()
    };
    let app = Router::new()
        .route("/api/nodes/{id}/hello", post(hello))
        .route("/api/nodes/{id}/heartbeat", post(heartbeat))
        .route("/api/nodes/{id}/commands", get(commands))
        .route("/api/nodes/{id}/events", post(events))
        .route("/api/nodes/{id}/deltas", post(deltas))
        .route(
            "/api/nodes/{id}/workspaces/{workspace}/git-token",
            get(git_token),
        )
        .route("/api/workspaces/{id}/messages", post(messages))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    (fake, url)
}

pub async fn start_fake() -> (Fake, String) {
    start_fake_on("127.0.0.1:0".parse().unwrap()).await
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare repository with one commit on `main` (plus the given extra branches).
pub fn bare_repo(root: &Path, extra_branches: &[&str]) -> PathBuf {
    let bare = root.join("origin.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(
        &bare,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    );
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(seed.join("README.md"), "# demo\n").unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "--quiet", "-m", "seed"]);
    git(&seed, &["remote", "add", "origin", bare.to_str().unwrap()]);
    git(&seed, &["push", "--quiet", "origin", "main"]);
    for branch in extra_branches {
        git(
            &seed,
            &[
                "push",
                "--quiet",
                "origin",
                &format!("main:refs/heads/{branch}"),
            ],
        );
    }
    bare
}

pub fn node_env(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
