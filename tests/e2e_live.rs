//! End to end, every process real (`kiln serve`, local `kiln-node` processes, the demo agent,
//! git): a chat without a task, a node that stops answering (SIGSTOP) and comes back, and
//! nodes that reconnect by themselves after the server restarts.
#![allow(clippy::disallowed_methods)] // Waits on wall-clock time.

mod e2e_support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_support::{Api, Kiln, bin_dir, git_repo};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(120);

/// Node and message settings that make a test quick without changing what it checks.
const QUICK: &[(&str, &str)] = &[
    ("KILN_HEARTBEAT_INTERVAL_MS", "500"),
    ("KILN_POLL_WAIT_MS", "1000"),
    ("KILN_RECONNECT_INITIAL_MS", "100"),
    ("KILN_RECONNECT_MAX_MS", "1000"),
    ("MSG_BATCH_MAX_WAIT_MS", "50"),
    ("MSG_RETRY_INITIAL_INTERVAL_MS", "100"),
    ("MSG_RETRY_MAX_INTERVAL_MS", "1000"),
    ("TASK_TICK_INTERVAL_MS", "300"),
];

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    QUICK.iter().chain(extra).copied().collect()
}

/// A user: the API client and its token (for requests expected to fail).
struct User {
    api: Api,
    token: String,
}

impl User {
    fn new(kiln: &Kiln, name: &str) -> Self {
        let token = kiln.user_token(name);
        Self {
            api: Api::new(&kiln.base, &token),
            token,
        }
    }

    /// A request's status and JSON body.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let http = reqwest::Client::new();
        let mut req = http
            .request(method.parse().unwrap(), format!("{}{path}", self.api.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(json!({ "raw": text })),
        )
    }
}

/// Waits until the session's stored messages satisfy `done`; returns them.
async fn wait_messages(api: &Api, session: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let stored = api.messages(session).await;
        if done(&stored) {
            return stored;
        }
        assert!(
            started.elapsed() < LIMIT,
            "session {session} never matched: {stored:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cursors 1..=n and every id once.
fn check_exactly_once_in_order(stored: &[Value]) {
    let mut ids = HashSet::new();
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(
            m["cursor"].as_i64(),
            Some(i as i64 + 1),
            "contiguous cursors"
        );
        assert!(
            ids.insert(m["id"].as_str().unwrap()),
            "message {} stored twice",
            m["id"]
        );
    }
}

fn position(stored: &[Value], role: &str, contains: &str) -> Option<usize> {
    stored
        .iter()
        .position(|m| m["role"] == role && m["content"].as_str().unwrap().contains(contains))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_without_a_task_answers_two_prompts_in_order_and_closing_it_leaves_the_node_warm() {
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());
    let kiln = Kiln::start(&dir.path().join("data"), None, &env(&[])).await;
    let ann = User::new(&kiln, "ann");
    let api = &ann.api;
    let project = api.project(&repo).await;
    let pid = project["id"].as_str().unwrap();

    // Refusals, each a JSON error that says why.
    let bad = [
        (
            "POST",
            format!("/api/projects/{}/sessions", uuid::Uuid::now_v7()),
            json!({}),
            404,
        ),
        (
            "POST",
            "/api/projects/not-a-uuid/sessions".to_owned(),
            json!({}),
            404,
        ),
        (
            "POST",
            format!("/api/projects/{pid}/sessions"),
            json!({"prompt": "  "}),
            422,
        ),
        (
            "POST",
            format!("/api/projects/{pid}/sessions"),
            json!({"vmSize": "huge"}),
            422,
        ),
        (
            "POST",
            format!("/api/projects/{pid}/sessions"),
            json!({"colour": "red"}),
            422,
        ),
        (
            "POST",
            format!("/api/sessions/{}/close", uuid::Uuid::now_v7()),
            Value::Null,
            404,
        ),
    ];
    for (method, path, body, want) in bad {
        let body = (!body.is_null()).then_some(body);
        let (status, err) = ann.call(method, &path, body).await;
        assert_eq!(status, want, "{method} {path}: {err}");
        assert!(err["message"].is_string(), "{method} {path}: {err}");
    }

    // New chat (medium) with a first prompt: a session with no task, in the sidebar.
    let (status, chat) = ann
        .call(
            "POST",
            &format!("/api/projects/{pid}/sessions"),
            Some(json!({"vmSize": "medium", "prompt": "First question about the repo"})),
        )
        .await;
    assert_eq!(status, 201, "{chat}");
    assert_eq!(chat["taskId"], Value::Null);
    let session = chat["id"].as_str().unwrap().to_owned();
    let sidebar = api.get(&format!("/api/projects/{pid}/sessions")).await;
    assert!(
        sidebar
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == session.as_str()),
        "{sidebar}"
    );

    // The first answer, then a second prompt into the same running agent.
    let first = wait_messages(api, &session, |m| {
        position(m, "assistant", "First question").is_some()
    })
    .await;
    let chat = api
        .wait_for(&format!("/api/sessions/{session}"), LIMIT, |s| {
            s["status"] == "active"
        })
        .await;
    assert_eq!(first[0]["role"], "user", "{first:#?}");
    let workspace = chat["workspaceId"].as_str().unwrap().to_owned();
    let ws = api.get(&format!("/api/workspaces/{workspace}")).await;
    assert_eq!(ws["taskId"], Value::Null);
    assert_eq!(
        ws["branch"],
        Value::Null,
        "a chat works on the default branch"
    );
    let node = ws["nodeId"].as_str().unwrap().to_owned();
    let n = api.get(&format!("/api/nodes/{node}")).await;
    assert_eq!(n["size"], "medium");
    assert_eq!(n["state"], "active");

    let (status, sent) = ann
        .call(
            "POST",
            &format!("/api/sessions/{session}/prompt"),
            Some(json!({"text": "Second question, a follow-up"})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let stored = wait_messages(api, &session, |m| {
        position(m, "assistant", "Second question").is_some()
    })
    .await;
    check_exactly_once_in_order(&stored);
    let order = [
        position(&stored, "user", "First question").unwrap(),
        position(&stored, "assistant", "First question").unwrap(),
        position(&stored, "user", "Second question").unwrap(),
        position(&stored, "assistant", "Second question").unwrap(),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{order:?}: {stored:#?}"
    );
    assert_eq!(
        stored[order[2]]["id"], sent["id"],
        "the follow-up is stored once"
    );

    // A task's session cannot be closed as a chat.
    let task = api.run_now(&project, "A task of its own").await;
    let (status, err) = ann
        .call(
            "POST",
            &format!(
                "/api/sessions/{}/close",
                task["sessionId"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, 409, "{err}");

    // Close: the workspace is destroyed and the node goes warm; the chat is read-only.
    let (status, closed) = ann
        .call("POST", &format!("/api/sessions/{session}/close"), None)
        .await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["status"], "closed");
    api.wait_for(&format!("/api/workspaces/{workspace}"), LIMIT, |w| {
        w["status"] == "destroyed"
    })
    .await;
    api.wait_for(&format!("/api/nodes/{node}"), LIMIT, |n| {
        n["state"] == "warm"
    })
    .await;
    let (status, err) = ann
        .call(
            "POST",
            &format!("/api/sessions/{session}/prompt"),
            Some(json!({"text": "Anyone there?"})),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    let (status, again) = ann
        .call("POST", &format!("/api/sessions/{session}/close"), None)
        .await;
    assert_eq!((status, &again["status"]), (200, &json!("closed")));
    assert_eq!(
        api.messages(&session).await,
        stored,
        "nothing changed after close"
    );
}

/// The pid in a local node's `node.json`, if it is a live `kiln-node` leading its group.
fn node_pid(kiln: &Kiln, node: &str) -> Option<u32> {
    let text =
        std::fs::read_to_string(kiln.data_dir.join("nodes").join(node).join("node.json")).ok()?;
    let pid = serde_json::from_str::<Value>(&text).ok()?["pid"].as_u64()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let pgrp: u64 = fields.nth(1)?.parse().ok()?;
    (String::from_utf8_lossy(&cmdline).contains("kiln-node") && pgrp == pid && state != "Z")
        .then(|| u32::try_from(pid).unwrap())
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// The environment of a process, from `/proc`.
fn environ(pid: u32) -> Vec<(String, String)> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_silent_past_the_heartbeat_timeout_is_lost_and_when_it_comes_back_it_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());
    let kiln = Kiln::start(
        &dir.path().join("data"),
        None,
        &env(&[
            ("NODE_HEARTBEAT_TIMEOUT_MS", "3000"),
            ("KILN_DEMO_PACE_MS", "200"),
            ("KILN_DEMO_MESSAGES", "40"),
        ]),
    )
    .await;
    let api = User::new(&kiln, "ann").api;
    let project = api.project(&repo).await;
    let task = api.run_now(&project, "A long task").await;
    let task = api.wait_task(&task, LIMIT, |s| s == "in_progress").await;
    let session = task["sessionId"].as_str().unwrap().to_owned();
    let node = task["nodeId"].as_str().unwrap().to_owned();
    let workspace = task["workspaceId"].as_str().unwrap().to_owned();
    wait_messages(&api, &session, |m| {
        m.iter().any(|m| m["role"] == "assistant")
    })
    .await;

    // Freeze the node's agent host (its agent keeps its process, blocked on the host).
    let pid = node_pid(&kiln, &node).expect("the node runs");
    let node_env = environ(pid);
    signal(pid, "STOP");
    let frozen_at = Instant::now();
    // Its data as it was, to bring "the same node" back after the provider destroyed it.
    let node_data = kiln.data_dir.join("nodes").join(&node).join("data");
    let saved = dir.path().join("returning-node-data");
    copy_dir(&node_data, &saved);

    let failed = api.wait_task(&task, LIMIT, |s| s != "in_progress").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let reason = failed["errorMessage"].as_str().unwrap();
    assert!(reason.starts_with("node lost"), "{reason}");
    // Judged from its last heartbeat, at most one interval (500 ms) before the freeze.
    let lost_after = frozen_at.elapsed();
    assert!(
        lost_after + Duration::from_millis(1000) >= Duration::from_millis(3000),
        "lost only after the timeout ({lost_after:?})"
    );
    let after_failure = api.messages(&session).await;
    // The sweep destroys it: the store says so and the provider no longer has it.
    api.wait_for(&format!("/api/nodes/{node}"), LIMIT, |n| {
        n["state"] == "destroyed"
    })
    .await;
    assert!(
        !kiln.data_dir.join("nodes").join(&node).exists(),
        "the provider removed it"
    );
    assert_eq!(
        node_pid(&kiln, &node),
        None,
        "the provider stopped its process"
    );
    let destroyed_after = frozen_at.elapsed();

    // The same node comes back (its process, token and data as they were when it froze):
    // the control plane tells it to stop, and nothing it still holds is stored.
    let log = dir.path().join("returning-node.log");
    let mut returning = Command::new(bin_dir().join("kiln-node"));
    returning
        .env_clear()
        .envs(node_env.iter().cloned())
        .env("KILN_NODE_DATA_DIR", &saved)
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ));
    let mut child = returning.spawn().unwrap();
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!(
                "the returning node did not stop:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(exit.success(), "{exit}: {log_text}");
    assert!(log_text.contains("Stopped"), "told to stop: {log_text}");
    assert!(
        !log_text.contains("registered with the control plane"),
        "never accepted: {log_text}"
    );
    // Its workspace's outbox token is refused too (410), so no late message lands.
    let record: Value = serde_json::from_slice(
        &std::fs::read(
            saved
                .join("workspaces")
                .join(&workspace)
                .join("workspace.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let token = record["callbackToken"]
        .as_str()
        .expect("the workspace token");
    let late = reqwest::Client::new()
        .post(format!("{}/api/workspaces/{workspace}/messages", kiln.base))
        .bearer_auth(token)
        .json(
            &json!({"messages": [{"id": uuid::Uuid::now_v7(), "sessionId": session,
            "role": "assistant", "content": "late", "createdAt": "2026-01-01T00:00:00Z"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(late.status().as_u16(), 410);
    assert_eq!(
        api.messages(&session).await,
        after_failure,
        "nothing stored after the failure"
    );
    let task = api
        .get(&format!("/api/tasks/{}", task["id"].as_str().unwrap()))
        .await;
    assert_eq!(task["status"], "failed", "it did not run a second time");
    println!(
        "liveness: heartbeat timeout 3000 ms; task failed {} ms and node destroyed {} ms after \
         SIGSTOP; the returning node stopped {} ms after start; {} messages, none after the \
         failure",
        lost_after.as_millis(),
        destroyed_after.as_millis(),
        started.elapsed().as_millis(),
        after_failure.len()
    );
    for line in log_text
        .lines()
        .filter(|l| l.contains("410") || l.contains("Stopped") || l.contains("node_stopped"))
    {
        println!("returning node: {line}");
    }
}

/// How many lines of a node's log contain `text`.
fn node_log_lines(kiln: &Kiln, node: &str, text: &str) -> usize {
    let log: PathBuf = kiln.data_dir.join("nodes").join(node).join("node.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(text))
        .count()
}

/// How many times a node's log says it registered.
fn registrations(kiln: &Kiln, node: &str) -> usize {
    node_log_lines(kiln, node, "registered with the control plane")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_carries_on_through_a_server_restart_and_every_message_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());
    let mut kiln = Kiln::start(
        &dir.path().join("data"),
        None,
        &env(&[("KILN_DEMO_PACE_MS", "150")]),
    )
    .await;
    let api = User::new(&kiln, "ann").api;
    let project = api.project(&repo).await;
    let task = api
        .run_now(&project, "Write through a restart\nkiln-demo: messages 12")
        .await;
    let task = api.wait_task(&task, LIMIT, |s| s == "in_progress").await;
    let session = task["sessionId"].as_str().unwrap().to_owned();
    let node = task["nodeId"].as_str().unwrap().to_owned();
    let pid = node_pid(&kiln, &node).expect("the node runs");
    wait_messages(&api, &session, |m| {
        position(m, "assistant", "(1/12)").is_some()
    })
    .await;
    assert_eq!(registrations(&kiln, &node), 1);
    // A chat on its own node, answered once before the restart.
    let chat = api
        .post(
            &format!("/api/projects/{}/sessions", project["id"].as_str().unwrap()),
            json!({"prompt": "Before the restart\nkiln-demo: messages 1"}),
        )
        .await;
    let chat_id = chat["id"].as_str().unwrap().to_owned();
    wait_messages(&api, &chat_id, |m| {
        position(m, "assistant", "Before the restart").is_some()
    })
    .await;
    let chat = api
        .wait_for(&format!("/api/sessions/{chat_id}"), LIMIT, |s| {
            s["status"] == "active"
        })
        .await;
    let chat_ws = api
        .get(&format!(
            "/api/workspaces/{}",
            chat["workspaceId"].as_str().unwrap()
        ))
        .await;
    let chat_node = chat_ws["nodeId"].as_str().unwrap().to_owned();
    assert_ne!(chat_node, node, "the chat has a node of its own");
    let mid_turn = api.messages(&session).await;
    assert!(
        position(&mid_turn, "assistant", "(12/12)").is_none(),
        "the restart falls in the middle of the task's turn"
    );

    let down = Instant::now();
    kiln.restart().await;
    let downtime = down.elapsed();

    let done = api.wait_terminal(&task, LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        node_pid(&kiln, &node),
        Some(pid),
        "the same node process carried on"
    );
    assert!(
        registrations(&kiln, &node) >= 2,
        "the node said hello again after the restart"
    );
    assert!(
        node_log_lines(&kiln, &node, "reconnecting") + node_log_lines(&kiln, &node, "unreachable")
            >= 1,
        "the node noticed the outage and retried with backoff"
    );
    // The chat carries on too: a prompt after the restart reaches its agent.
    api.post(
        &format!("/api/sessions/{chat_id}/prompt"),
        json!({"text": "After the restart"}),
    )
    .await;
    let chat_messages = wait_messages(&api, &chat_id, |m| {
        position(m, "assistant", "After the restart").is_some()
    })
    .await;
    check_exactly_once_in_order(&chat_messages);
    assert!(registrations(&kiln, &chat_node) >= 2);
    api.post(&format!("/api/sessions/{chat_id}/close"), json!({}))
        .await;
    api.wait_for(&format!("/api/nodes/{chat_node}"), LIMIT, |n| {
        n["state"] == "warm"
    })
    .await;
    let stored = wait_messages(&api, &session, |m| {
        position(m, "assistant", "(12/12)").is_some()
    })
    .await;
    check_exactly_once_in_order(&stored);
    let answers: Vec<usize> = (1..=12)
        .map(|n| {
            let at = position(&stored, "assistant", &format!("({n}/12)"))
                .unwrap_or_else(|| panic!("answer {n} stored: {stored:#?}"));
            let count = stored
                .iter()
                .filter(|m| {
                    m["content"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("({n}/12)"))
                })
                .count();
            assert_eq!(count, 1, "answer {n} stored once");
            at
        })
        .collect();
    assert!(
        answers.windows(2).all(|w| w[0] < w[1]),
        "answers in order: {answers:?}"
    );
    api.wait_for(&format!("/api/nodes/{node}"), LIMIT, |n| {
        n["state"] == "warm"
    })
    .await;
    println!(
        "restart: server down {} ms; {} messages stored once each",
        downtime.as_millis(),
        stored.len()
    );
}
