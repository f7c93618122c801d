//! Load generator for `POST /api/workspaces/{id}/messages`: many simulated nodes deliver
//! batches concurrently over real HTTP while a viewer watches the project's WebSocket.
//! Prints messages/s stored and the p50/p99 latency from POST to `message.new`, for SQLite
//! and (when `KILN_TEST_POSTGRES_URL` is set, in a throwaway database) PostgreSQL.
//!
//! Two loads per store: *saturating* (every node posts its next batch as soon as the last one
//! is acknowledged: the throughput ceiling, where latency is queueing) and *paced* (every
//! node posts a batch every `BENCH_PACE_MS`, like outboxes flushing on their timer).
//!
//! Then *live*: every node streams text as kiln-node forwards an agent's chunks (one
//! `POST /api/nodes/{id}/deltas` per chunk) and stores each finished segment; it prints the
//! chunk POST→`message.delta` latency beside the stored message's POST→`message.new`.
//!
//! `cargo bench -p kiln-server --bench messages` (or `cargo test --bench messages` for a
//! debug build). Sizes: `BENCH_NODES` (32), `BENCH_BATCHES` (per node, 30),
//! `BENCH_BATCH_SIZE` (10), `BENCH_PACE_MS` (250); live: `BENCH_LIVE_NODES` (8),
//! `BENCH_LIVE_SEGMENTS` (per node, 10), `BENCH_LIVE_CHUNKS` (per segment, 20),
//! `BENCH_DELTA_PACE_MS` (10).
#![allow(clippy::disallowed_methods, missing_docs)] // A benchmark measures wall-clock time.

#[path = "../tests/common/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_core::memory::MemoryProvider;
use kiln_core::{
    ChatSession, LifecycleClock, MessageId, Node, NodeId, NodeState, Project, ProjectId, SessionId,
    SessionStatus, Store, User, UserId, VmSize, Workspace, WorkspaceId, WorkspaceStatus,
};
use kiln_server::config::{Config, ServeArgs};
use serde_json::json;
use tokio_tungstenite::tungstenite;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Figures {
    messages: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// A served Kiln over `store` with one user, one project and `nodes` simulated nodes, each
/// with a running workspace and session.
struct Setup {
    base: String,
    api_token: String,
    project: ProjectId,
    /// Per node: its workspace, session, workspace token, node id and node token.
    senders: Vec<Sender>,
}

struct Sender {
    ws: WorkspaceId,
    session: SessionId,
    token: String,
    node: NodeId,
    node_token: String,
}

async fn setup(store: Arc<dyn Store>, nodes: usize) -> Setup {
    let config = Config::resolve(ServeArgs {
        data_dir: Some(std::env::temp_dir()),
        ..ServeArgs::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let parts = kiln_server::server::assemble(
        &config,
        store.clone(),
        Arc::new(MemoryProvider::new()),
        b"bench-secret-key-bench-secret-key".to_vec(),
        &base,
    )
    .await
    .unwrap();
    let state = parts.state.clone();
    tokio::spawn(async move {
        axum::serve(listener, kiln_server::app(parts.state))
            .await
            .unwrap()
    });
    // One user, one project, one session and workspace per simulated node.
    let now = state.clock.now();
    let user = User {
        id: UserId::new(),
        name: format!("bench-{}", UserId::new()),
        created_at: now,
    };
    store.create_user(&user).await.unwrap();
    let (_, api_token) = kiln_server::auth::issue_token(&state, user.id, "bench", None)
        .await
        .unwrap();
    let project = Project {
        id: ProjectId::new(),
        owner: user.id,
        name: "bench".into(),
        repository_url: "/tmp/bench".into(),
        default_vm_size: VmSize::Small,
        provider: "memory".into(),
        created_at: now,
        updated_at: now,
    };
    store.create_project(&project).await.unwrap();
    let mut senders = Vec::new();
    for _ in 0..nodes {
        let node = Node {
            id: NodeId::new(),
            owner: user.id,
            size: VmSize::Small,
            location: None,
            provider: "bench".into(),
            provider_id: None,
            state: NodeState::Provisioning,
            warm_until: None,
            claimed_by: None,
            auto_provisioned: false,
            last_heartbeat_at: None,
            error_message: None,
            created_at: now,
            updated_at: now,
        };
        store.insert_node(&node).await.unwrap();
        let session = ChatSession {
            id: SessionId::new(),
            project_id: project.id,
            owner: user.id,
            task_id: None,
            workspace_id: None,
            topic: None,
            status: SessionStatus::Active,
            agent_hint: None,
            vm_size: None,
            message_count: 0,
            created_at: now,
            updated_at: now,
        };
        store.create_session(&session).await.unwrap();
        let ws = Workspace {
            id: WorkspaceId::new(),
            node_id: node.id,
            owner: user.id,
            project_id: Some(project.id),
            task_id: None,
            session_id: Some(session.id),
            branch: None,
            status: WorkspaceStatus::Running,
            created_at: now,
            updated_at: now,
        };
        store.create_workspace(&ws).await.unwrap();
        let token = state
            .signer
            .workspace_token(node.id, ws.id, now, state.token_expiry());
        let node_token = state.signer.node_token(node.id, now, state.token_expiry());
        senders.push(Sender {
            ws: ws.id,
            session: session.id,
            token,
            node: node.id,
            node_token,
        });
    }
    Setup {
        base,
        api_token: api_token.to_string(),
        project: project.id,
        senders,
    }
}

/// A WebSocket viewer of the project, as a browser opens it.
async fn viewer(
    setup: &Setup,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!(
        "{}/api/projects/{}/ws",
        setup.base.replace("http", "ws"),
        setup.project
    );
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", setup.api_token).parse().unwrap(),
    );
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn run(label: &str, store: Arc<dyn Store>, pace: Duration) -> Figures {
    let nodes = env("BENCH_NODES", 32);
    let batches = env("BENCH_BATCHES", 30);
    let batch_size = env("BENCH_BATCH_SIZE", 10);
    let setup = setup(store, nodes).await;
    let socket = viewer(&setup).await;
    let base = setup.base.clone();
    let total = nodes * batches * batch_size;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let viewer = tokio::spawn({
        let received = received.clone();
        async move {
            let mut socket = socket;
            while let Some(Ok(frame)) = socket.next().await {
                let tungstenite::Message::Text(text) = frame else {
                    continue;
                };
                let at = Instant::now();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "message.new" {
                    let id = v["data"]["id"].as_str().unwrap().to_owned();
                    let mut r = received.lock().unwrap();
                    r.insert(id, at);
                    if r.len() >= total {
                        return;
                    }
                }
            }
        }
    });
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for Sender {
        ws, session, token, ..
    } in setup.senders
    {
        let http = http.clone();
        let base = base.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..batches {
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
                let msgs: Vec<_> = (0..batch_size)
                    .map(|i| {
                        json!({
                            "id": MessageId::new(),
                            "sessionId": session,
                            "role": "assistant",
                            "content": format!("batch {b} message {i}: {}", "lorem ipsum ".repeat(8)),
                            "seq": b * batch_size + i,
                            "createdAt": "2026-11-25T08:00:00Z",
                        })
                    })
                    .collect();
                let at = Instant::now();
                {
                    let mut s = sent.lock().unwrap();
                    for m in &msgs {
                        s.insert(m["id"].as_str().unwrap().to_owned(), at);
                    }
                }
                let r = http
                    .post(format!("{base}/api/workspaces/{ws}/messages"))
                    .bearer_auth(&token)
                    .json(&json!({"messages": msgs}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{:?}", r.text().await);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let _ = tokio::time::timeout(Duration::from_secs(60), viewer).await;
    let sent = sent.lock().unwrap();
    let received = received.lock().unwrap();
    let latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| received.get(id).map(|r| r.saturating_duration_since(*at)))
        .collect();
    figures(latencies, total, elapsed, label)
}

/// Percentiles of `latencies` (sorted here).
fn figures(
    mut latencies: Vec<Duration>,
    expected: usize,
    elapsed: Duration,
    label: &str,
) -> Figures {
    latencies.sort();
    if latencies.len() < expected {
        eprintln!(
            "{label}: only {} of {expected} reached the viewer",
            latencies.len()
        );
    }
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        messages: expected,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

/// Live text: every simulated node streams segments as kiln-node forwards an agent's chunks
/// (one `POST /api/nodes/{id}/deltas` per chunk, every `BENCH_DELTA_PACE_MS`), then stores
/// the segment's message. Returns the POST→`message.delta` latency of the chunks and the
/// POST→`message.new` latency of the stored messages, as one viewer's browser sees them.
async fn run_live(label: &str, store: Arc<dyn Store>) -> (Figures, Figures) {
    let nodes = env("BENCH_LIVE_NODES", 8);
    let segments = env("BENCH_LIVE_SEGMENTS", 10);
    let chunks = env("BENCH_LIVE_CHUNKS", 20);
    let pace = Duration::from_millis(env("BENCH_DELTA_PACE_MS", 10) as u64);
    let setup = setup(store, nodes).await;
    let mut socket = viewer(&setup).await;
    let total_chunks = nodes * segments * chunks;
    let total_messages = nodes * segments;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watcher = tokio::spawn({
        let received = received.clone();
        async move {
            let mut messages = 0;
            while let Some(Ok(frame)) = socket.next().await {
                let tungstenite::Message::Text(text) = frame else {
                    continue;
                };
                let at = Instant::now();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                let mut r = received.lock().unwrap();
                match v["type"].as_str() {
                    // Each chunk carries a marker `<node:segment:chunk>`.
                    Some("message.delta") => {
                        let text = v["data"]["text"].as_str().unwrap_or_default();
                        for marker in text.split('<').skip(1).filter_map(|m| m.split_once('>')) {
                            r.entry(format!("<{}>", marker.0)).or_insert(at);
                        }
                    }
                    Some("message.new") => {
                        r.insert(v["data"]["id"].as_str().unwrap().to_owned(), at);
                        messages += 1;
                        if messages >= total_messages {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        }
    });
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, sender) in setup.senders.into_iter().enumerate() {
        let (http, base, sent) = (http.clone(), setup.base.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..segments {
                let segment = MessageId::new();
                let mut content = String::new();
                for c in 0..chunks {
                    let marker = format!("<{n}:{k}:{c}>");
                    let text = format!("{marker} lorem ipsum dolor ");
                    content.push_str(&text);
                    sent.lock().unwrap().insert(marker, Instant::now());
                    let r = http
                        .post(format!("{base}/api/nodes/{}/deltas", sender.node))
                        .bearer_auth(&sender.node_token)
                        .json(&json!({"deltas": [{
                            "workspaceId": sender.ws,
                            "sessionId": sender.session,
                            "segmentId": segment,
                            "text": text,
                        }]}))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "{:?}", r.text().await);
                    tokio::time::sleep(pace).await;
                }
                sent.lock()
                    .unwrap()
                    .insert(segment.to_string(), Instant::now());
                let r = http
                    .post(format!("{base}/api/workspaces/{}/messages", sender.ws))
                    .bearer_auth(&sender.token)
                    .json(&json!({"messages": [{
                        "id": segment,
                        "sessionId": sender.session,
                        "role": "assistant",
                        "content": content,
                        "seq": k + 1,
                        "createdAt": "2026-11-25T08:00:00Z",
                    }]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{:?}", r.text().await);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let _ = tokio::time::timeout(Duration::from_secs(60), watcher).await;
    let sent = sent.lock().unwrap();
    let received = received.lock().unwrap();
    let (mut chunk_lat, mut message_lat) = (Vec::new(), Vec::new());
    for (key, at) in sent.iter() {
        if let Some(r) = received.get(key) {
            let d = r.saturating_duration_since(*at);
            if key.starts_with('<') {
                chunk_lat.push(d);
            } else {
                message_lat.push(d);
            }
        }
    }
    (
        figures(chunk_lat, total_chunks, elapsed, &format!("{label} chunks")),
        figures(
            message_lat,
            total_messages,
            elapsed,
            &format!("{label} stored"),
        ),
    )
}

fn report_live(label: &str, chunks: &Figures, stored: &Figures) {
    println!(
        "{label:<20} {} chunks from {} nodes in {:.2} s: chunk POST→message.delta p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         beside {} stored messages POST→message.new p50 {:.1} ms, p99 {:.1} ms",
        chunks.messages,
        env("BENCH_LIVE_NODES", 8),
        chunks.elapsed.as_secs_f64(),
        chunks.p50.as_secs_f64() * 1e3,
        chunks.p99.as_secs_f64() * 1e3,
        chunks.max.as_secs_f64() * 1e3,
        stored.messages,
        stored.p50.as_secs_f64() * 1e3,
        stored.p99.as_secs_f64() * 1e3,
    );
}

fn report(label: &str, f: &Figures) {
    println!(
        "{label:<20} {} messages from {} nodes in {:.2} s: {:.0} messages/s stored; POST→message.new p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        f.messages,
        env("BENCH_NODES", 32),
        f.elapsed.as_secs_f64(),
        f.messages as f64 / f.elapsed.as_secs_f64(),
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.max.as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite: Arc<dyn Store> = Arc::new(kiln_backends::SqliteStore::connect(&url).await.unwrap());
    let pace = Duration::from_millis(env("BENCH_PACE_MS", 250) as u64);
    for (load, pace) in [("saturating", Duration::ZERO), ("paced", pace)] {
        let f = run("sqlite", sqlite.clone(), pace).await;
        report(&format!("sqlite {load}"), &f);
    }
    let (chunks, stored) = run_live("sqlite live", sqlite.clone()).await;
    report_live("sqlite live", &chunks, &stored);
    if let Some(db) = pg::TestDatabase::create("bench messages (postgres)").await {
        let postgres: Arc<dyn Store> = Arc::new(
            kiln_backends::PostgresStore::connect(&db.url)
                .await
                .unwrap(),
        );
        for (load, pace) in [("saturating", Duration::ZERO), ("paced", pace)] {
            let f = run("postgres", postgres.clone(), pace).await;
            report(&format!("postgres {load}"), &f);
        }
        let (chunks, stored) = run_live("postgres live", postgres.clone()).await;
        report_live("postgres live", &chunks, &stored);
    }
}
