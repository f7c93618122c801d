//! The flusher and `HttpMessageSink` against a real HTTP/1.1 server on 127.0.0.1 that fails,
//! stalls, resets connections, drops responses after storing, and answers 429/500/413/400/401
//! on a schedule: everything deliverable is stored exactly once per id, in session order,
//! and only the poisoned and the oversized messages are dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_core::{
    ChatMessage, LifecycleClock, MessageId, Role, SessionId, SystemClock, WorkspaceId,
};
use kiln_outbox::{Condition, HttpMessageSink, Outbox, OutboxConfig, Route, SinkMap};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Answer normally.
    Pass,
    /// 500 without storing.
    ServerError,
    /// 429 with `Retry-After: 1`.
    TooManyRequests,
    /// Reset the connection without answering.
    Reset,
    /// Store the batch, then reset: the client never hears of it.
    StoreThenReset,
    /// Store the batch, then stall past the client's timeout.
    StoreThenStall,
    /// Stall past the client's timeout without storing.
    Stall,
    /// 401 (refused credentials).
    Unauthorized,
}

#[derive(Debug, Default)]
struct ReceiverState {
    schedule: VecDeque<Fault>,
    token: String,
    limit_bytes: usize,
    poison: HashSet<MessageId>,
    name_culprits: bool,
    /// Stored messages in arrival order (one per id).
    stored: Vec<ChatMessage>,
    stored_ids: HashSet<MessageId>,
    duplicates: u64,
    requests: u64,
    statuses: HashMap<u16, u64>,
}

#[derive(Clone, Debug)]
struct Receiver {
    state: Arc<Mutex<ReceiverState>>,
    url: String,
}

impl Receiver {
    async fn start(token: &str, limit_bytes: usize, schedule: Vec<Fault>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ReceiverState {
            schedule: schedule.into(),
            token: token.to_owned(),
            limit_bytes,
            name_culprits: true,
            ..ReceiverState::default()
        }));
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, s.clone()));
            }
        });
        Self { state, url }
    }
}

/// Reads one request: (head, body), or `None` when the client closed the connection.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 16384];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some((head, body));
        }
        let mut chunk = [0u8; 16384];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    extra: &str,
    body: &str,
) -> std::io::Result<()> {
    let text = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).await
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<ReceiverState>>) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut stream, &mut buf).await {
        let (status, extra, answer, after) = handle(&state, &head, &body);
        if let Some(status) = status {
            *state.lock().unwrap().statuses.entry(status).or_default() += 1;
            if respond(&mut stream, status, &extra, &answer).await.is_err() {
                return;
            }
            continue;
        }
        match after {
            After::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            After::Stall => {
                tokio::time::sleep(Duration::from_millis(700)).await;
                return;
            }
        }
    }
}

enum After {
    Reset,
    Stall,
}

fn handle(
    state: &Mutex<ReceiverState>,
    head: &str,
    body: &[u8],
) -> (Option<u16>, String, String, After) {
    let mut s = state.lock().unwrap();
    s.requests += 1;
    let answer = |status: u16, body: serde_json::Value| {
        (Some(status), String::new(), body.to_string(), After::Reset)
    };
    let auth_ok = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {}", s.token)));
    let fault = s.schedule.pop_front().unwrap_or(Fault::Pass);
    if !auth_ok || matches!(fault, Fault::Unauthorized) {
        return answer(401, json!({"error": "unauthorized"}));
    }
    match fault {
        Fault::ServerError => return answer(500, json!({"error": "boom"})),
        Fault::TooManyRequests => {
            return (
                Some(429),
                "retry-after: 1\r\n".into(),
                "{}".into(),
                After::Reset,
            );
        }
        Fault::Reset => return (None, String::new(), String::new(), After::Reset),
        Fault::Stall => return (None, String::new(), String::new(), After::Stall),
        _ => {}
    }
    // A store-then-fail fault waits for a request that gets stored.
    let keep_for_later = |s: &mut ReceiverState| {
        if matches!(fault, Fault::StoreThenReset | Fault::StoreThenStall) {
            s.schedule.push_front(fault);
        }
    };
    if body.len() > s.limit_bytes {
        keep_for_later(&mut s);
        return answer(413, json!({"error": "too large"}));
    }
    let parsed: serde_json::Value = serde_json::from_slice(body).unwrap();
    let messages: Vec<ChatMessage> = serde_json::from_value(parsed["messages"].clone()).unwrap();
    let bad: Vec<MessageId> = messages
        .iter()
        .map(|m| m.id)
        .filter(|id| s.poison.contains(id))
        .collect();
    if !bad.is_empty() {
        keep_for_later(&mut s);
        let named = if s.name_culprits { bad } else { Vec::new() };
        s.name_culprits = !s.name_culprits;
        return answer(
            400,
            json!({"error": "invalid", "message": "poisoned content", "rejected": named}),
        );
    }
    let (mut persisted, mut duplicates) = (0, 0);
    for m in messages {
        if s.stored_ids.insert(m.id) {
            s.stored.push(m);
            persisted += 1;
        } else {
            duplicates += 1;
        }
    }
    s.duplicates += duplicates;
    match fault {
        Fault::StoreThenReset => (None, String::new(), String::new(), After::Reset),
        Fault::StoreThenStall => (None, String::new(), String::new(), After::Stall),
        _ => answer(
            200,
            json!({"persisted": persisted, "duplicates": duplicates}),
        ),
    }
}

fn config() -> OutboxConfig {
    OutboxConfig {
        retry_initial_interval: Duration::from_millis(20),
        retry_max_interval: Duration::from_millis(200),
        auth_retry_initial_interval: Duration::from_millis(50),
        auth_retry_max_interval: Duration::from_millis(200),
        http_timeout: Duration::from_millis(300),
        http_connect_timeout: Duration::from_millis(300),
        batch_max_wait: Duration::from_millis(100),
        ..OutboxConfig::default()
    }
}

fn message(session: SessionId, content: String) -> ChatMessage {
    ChatMessage {
        id: MessageId::new(),
        session_id: session,
        role: Role::Assistant,
        content,
        tool: None,
        seq: None,
        created_at: SystemClock.now(),
    }
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_deliverable_arrives_exactly_once_through_a_faulty_receiver() {
    use Fault::*;
    let schedule = vec![
        Pass,
        ServerError,
        Pass,
        TooManyRequests,
        Reset,
        Pass,
        StoreThenReset,
        Pass,
        Stall,
        StoreThenStall,
        Pass,
        Unauthorized,
        Unauthorized,
        Pass,
        ServerError,
        ServerError,
        Pass,
        StoreThenReset,
        Reset,
        Pass,
        TooManyRequests,
        Pass,
        Stall,
        Pass,
        StoreThenStall,
    ];
    // 8 KiB: full 50-message batches of ~1 KiB messages are too large and must be split.
    let receiver = Receiver::start("secret", 8 * 1024, schedule).await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path().join("outbox.sqlite"), config()).unwrap();
    let workspace = WorkspaceId::new();
    let sink = HttpMessageSink::new(
        &receiver.url,
        workspace,
        "secret",
        &config(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let sinks = Arc::new(SinkMap::new());
    sinks.insert(workspace, Arc::new(sink));
    let flusher = outbox.spawn_flusher_routed(sinks, Arc::new(SystemClock), Default::default());

    let sessions: Vec<SessionId> = (0..4).map(|_| SessionId::new()).collect();
    let mut expected: HashSet<MessageId> = HashSet::new();
    let mut poison: HashSet<MessageId> = HashSet::new();
    let mut oversize: HashSet<MessageId> = HashSet::new();
    // Build every message first, so the receiver knows the poisoned ones before any is sent.
    let mut plans: Vec<Vec<ChatMessage>> = Vec::new();
    for (p, &session) in sessions.iter().enumerate() {
        let mut plan = Vec::new();
        for i in 0..75 {
            let mut m = message(session, format!("{p}/{i} {}", "x".repeat(900)));
            if (p, i) == (1, 30) {
                m.content = "z".repeat(20_000); // alone still above the 8 KiB limit
                oversize.insert(m.id);
            } else if i % 25 == 7 {
                poison.insert(m.id);
            } else {
                expected.insert(m.id);
            }
            plan.push(m);
        }
        plans.push(plan);
    }
    receiver
        .state
        .lock()
        .unwrap()
        .poison
        .extend(poison.iter().copied());
    let producers: Vec<_> = plans
        .into_iter()
        .map(|plan| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for (i, m) in plan.into_iter().enumerate() {
                    outbox.enqueue(Route::from(workspace), m).await.unwrap();
                    if i % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    wait_until("the outbox to drain", Duration::from_secs(25), || {
        outbox.pending_count() == 0
    })
    .await;
    let metrics = flusher.metrics();
    let report = flusher.shutdown(SystemClock.now()).await;
    assert_eq!(report.pending, 0);

    let s = receiver.state.lock().unwrap();
    let stored_ids: HashSet<MessageId> = s.stored.iter().map(|m| m.id).collect();
    for id in &expected {
        assert!(
            stored_ids.contains(id),
            "deliverable message {id} never arrived"
        );
    }
    for id in poison.iter().chain(&oversize) {
        assert!(
            !stored_ids.contains(id),
            "a poisoned or oversized message was stored"
        );
    }
    // Per session: stored in seq order; the gaps are exactly the dropped messages, each
    // followed by a notice.
    for &session in &sessions {
        let seqs: Vec<i64> = s
            .stored
            .iter()
            .filter(|m| m.session_id == session)
            .map(|m| m.seq.unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "session out of order: {seqs:?}"
        );
    }
    let notices = s.stored.iter().filter(|m| m.role == Role::System).count();
    let dead = outbox.dead_letters().unwrap();
    let dead_ids: HashSet<String> = dead.iter().map(|d| d.id.clone()).collect();
    let dropped: HashSet<String> = poison
        .iter()
        .chain(&oversize)
        .map(ToString::to_string)
        .collect();
    assert_eq!(dead_ids, dropped, "exactly the culprits are dropped");
    assert!(dead.iter().filter(|d| d.reason == "too_large").count() == 1);
    assert!(
        notices >= 1 && notices <= dropped.len(),
        "{notices} notices"
    );
    assert_eq!(metrics.dropped.rejected as usize, poison.len());
    assert_eq!(metrics.dropped.too_large, 1);
    assert_eq!(metrics.delivered as usize, expected.len() + notices);
    assert!(
        metrics.retried >= 5,
        "the schedule's failures were retried: {}",
        metrics.retried
    );
    assert!(
        s.duplicates >= 1,
        "a response dropped after storing must cause a redelivery"
    );
    assert!(s.statuses.get(&413).copied().unwrap_or(0) >= 1);
    // One 400 that names its culprits rejects every poisoned message of its batch, so
    // there may be fewer 400s than poisoned messages (more so with larger batches); each
    // poisoned message was still rejected exactly once (`dropped.rejected` above).
    assert!(s.statuses.get(&400).copied().unwrap_or(0) >= 1);
    assert_eq!(metrics.condition, Condition::Healthy);
    eprintln!(
        "{} requests, statuses {:?}, {} duplicates absorbed, {} stored",
        s.requests,
        s.statuses,
        s.duplicates,
        s.stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_keep_everything_until_the_token_is_rotated() {
    let receiver = Receiver::start("new-token", 1 << 20, Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let slow = OutboxConfig {
        auth_retry_initial_interval: Duration::from_secs(60),
        auth_retry_max_interval: Duration::from_secs(300),
        ..config()
    };
    let outbox = Outbox::open(dir.path().join("outbox.sqlite"), slow.clone()).unwrap();
    let workspace = WorkspaceId::new();
    let sink = HttpMessageSink::new(
        &receiver.url,
        workspace,
        "old-token",
        &slow,
        Arc::new(SystemClock),
    )
    .unwrap();
    let sinks = Arc::new(SinkMap::new());
    sinks.insert(workspace, Arc::new(sink.clone()));
    let flusher = outbox.spawn_flusher_routed(sinks, Arc::new(SystemClock), Default::default());
    let session = SessionId::new();
    for i in 0..10 {
        outbox
            .enqueue(workspace, message(session, format!("m{i}")))
            .await
            .unwrap();
    }
    wait_until("the auth failure to show", Duration::from_secs(5), || {
        flusher.metrics().auth_failed()
    })
    .await;
    let m = flusher.metrics();
    assert_eq!(m.condition, Condition::AuthFailed);
    assert_eq!(m.pending, 10, "nothing is dropped on 401");
    assert!(m.last_error.unwrap().contains("401"));
    // Rotation: the new token and a wake-up deliver at once, not after the slow retry.
    sink.set_token("new-token");
    flusher.wake();
    wait_until("delivery after rotation", Duration::from_secs(5), || {
        outbox.pending_count() == 0
    })
    .await;
    assert_eq!(flusher.metrics().condition, Condition::Healthy);
    assert_eq!(receiver.state.lock().unwrap().stored.len(), 10);
    flusher.shutdown(SystemClock.now()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_undelivered_rows_for_the_next_start() {
    // The receiver stalls every request: nothing can be delivered before the deadline.
    let receiver = Receiver::start("t", 1 << 20, vec![Fault::Stall; 100]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let workspace = WorkspaceId::new();
    let session = SessionId::new();
    {
        let outbox = Outbox::open(&path, config()).unwrap();
        let sink = HttpMessageSink::new(
            &receiver.url,
            workspace,
            "t",
            &config(),
            Arc::new(SystemClock),
        )
        .unwrap();
        let sinks = Arc::new(SinkMap::new());
        sinks.insert(workspace, Arc::new(sink));
        let flusher = outbox.spawn_flusher_routed(sinks, Arc::new(SystemClock), Default::default());
        for i in 0..5 {
            outbox
                .enqueue(workspace, message(session, format!("m{i}")))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let deadline =
            kiln_core::clock::add_duration(SystemClock.now(), Duration::from_millis(200));
        let report = flusher.shutdown(deadline).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "shutdown overran its deadline"
        );
        assert_eq!(report.pending, 5);
    }
    // Next start: the receiver works again and the rows go out.
    receiver.state.lock().unwrap().schedule.clear();
    let outbox = Outbox::open(&path, config()).unwrap();
    assert_eq!(outbox.pending_count(), 5);
    let sink = HttpMessageSink::new(
        &receiver.url,
        workspace,
        "t",
        &config(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let flusher = outbox.spawn_flusher(Arc::new(sink), Arc::new(SystemClock));
    wait_until("delivery after restart", Duration::from_secs(10), || {
        outbox.pending_count() == 0
    })
    .await;
    flusher.shutdown(SystemClock.now()).await;
    let s = receiver.state.lock().unwrap();
    let seqs: Vec<i64> = s.stored.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}
