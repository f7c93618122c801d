//! End-to-end support: real `kiln serve` processes (with the local provider starting real
//! `kiln-node` processes that run the real `kiln-demo-agent` in real git checkouts), driven
//! over HTTP and the project WebSocket.
#![allow(dead_code, clippy::disallowed_methods)] // Tests measure and wait on wall-clock time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;

/// `target/debug`, with `kiln`, `kiln-node` and `kiln-demo-agent` built (once per test run).
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "kiln-server",
                "-p",
                "kiln-node",
                "--bins",
            ])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the binaries failed");
        for bin in ["kiln", "kiln-node", "kiln-demo-agent"] {
            assert!(dir.join(bin).is_file(), "{bin} not in {}", dir.display());
        }
        dir
    })
    .clone()
}

/// A git repository with one commit on `main`, as a project's repository.
pub fn git_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["config", "user.email", "e2e@kiln.invalid"]);
    git(&["config", "user.name", "e2e"]);
    std::fs::write(repo.join("README.md"), "# demo\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "initial"]);
    repo
}

/// `git` in `repo`, its output (None when it fails).
pub fn git(repo: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `kiln serve` process.
pub struct Kiln {
    child: Option<Child>,
    /// Its URL.
    pub base: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its database URL.
    pub database_url: Option<String>,
    log: PathBuf,
    env: Vec<(String, String)>,
}

impl Kiln {
    /// Starts `kiln serve` on a free port over `data_dir` (and `database_url`, else SQLite).
    pub async fn start(data_dir: &Path, database_url: Option<&str>, env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), data_dir, database_url, env).await
    }

    /// Starts `kiln serve` on `port` (a restart keeps the port, so nodes find it again).
    pub async fn start_on(
        port: u16,
        data_dir: &Path,
        database_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let bins = bin_dir();
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.join("kiln.log");
        let mut cmd = Command::new(bins.join("kiln"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--login-link")
            .arg("false")
            .env("KILN_LOG", "info,kiln_server=debug")
            .env("KILN_NODE_BIN", bins.join("kiln-node"))
            .stdout(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ));
        if let Some(url) = database_url {
            cmd.arg("--database-url").arg(url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn kiln serve");
        let kiln = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_owned(),
            database_url: database_url.map(str::to_owned),
            log,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let http = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if http
                .get(format!("{}/api/health", kiln.base))
                .send()
                .await
                .is_ok()
            {
                return kiln;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("kiln serve did not come up:\n{}", kiln.log_text());
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kiln user add <name>` on this server's database: an API token.
    pub fn user_token(&self, name: &str) -> String {
        let mut cmd = Command::new(bin_dir().join("kiln"));
        cmd.args(["user", "add", name, "--data-dir"])
            .arg(&self.data_dir)
            .env("KILN_LOG", "warn");
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "kiln user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Stops the server (SIGTERM, graceful) and starts it again on the same port, data
    /// directory, database and environment; the log continues in the same file.
    pub async fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "kiln stopped with {status}");
        let port: u16 = self.base.rsplit(':').next().unwrap().parse().unwrap();
        let env = std::mem::take(&mut self.env);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let next = Self::start_on(port, &self.data_dir, self.database_url.as_deref(), &env).await;
        // Only the process moves over: dropping `next` would stop the nodes this test wants
        // to see reconnect.
        let mut next = std::mem::ManuallyDrop::new(next);
        self.child = next.child.take();
        self.env = std::mem::take(&mut next.env);
    }

    /// Stops the server with SIGTERM and waits for it to exit (graceful shutdown).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("kiln did not stop within 20 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Local nodes run in their own process groups and outlive the server: stop them.
        if let Ok(entries) = std::fs::read_dir(self.data_dir.join("nodes")) {
            for entry in entries.flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path().join("node.json")) else {
                    continue;
                };
                let pid = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["pid"].as_u64())
                    .filter(|pid| *pid > 1);
                // Only a live kiln-node leading its own process group is signalled.
                if let Some(pid) = pid
                    && is_node_group_leader(pid)
                {
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{pid}")])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("--- kiln log ({}) ---\n{}", self.base, self.log_text());
        }
    }
}

/// Whether `pid` is a running `kiln-node` that leads its own process group.
fn is_node_group_leader(pid: u64) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the parenthesized name: state, ppid, pgrp, …
    let pgrp = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(2))
        .and_then(|v| v.parse::<u64>().ok());
    String::from_utf8_lossy(&cmdline).contains("kiln-node") && pgrp == Some(pid)
}

/// An API client for one user.
#[derive(Clone)]
pub struct Api {
    /// The server.
    pub base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// A client of `base` with `token`.
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// `GET`, expecting 2xx.
    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// `POST`, expecting 2xx.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Creates a project on `repo`.
    pub async fn project(&self, repo: &Path) -> Value {
        self.post(
            "/api/projects",
            json!({"name": "demo", "repositoryUrl": repo.display().to_string()}),
        )
        .await
    }

    /// Run Now.
    pub async fn run_now(&self, project: &Value, description: &str) -> Value {
        self.post(
            &format!("/api/projects/{}/tasks", project["id"].as_str().unwrap()),
            json!({"description": description, "runNow": true}),
        )
        .await
    }

    /// Waits until `task` reaches a terminal status (at most `limit`); returns it.
    pub async fn wait_terminal(&self, task: &Value, limit: Duration) -> Value {
        self.wait_task(task, limit, |s| {
            ["completed", "failed", "cancelled"].contains(&s)
        })
        .await
    }

    /// Waits until `task`'s status satisfies `done`.
    pub async fn wait_task(
        &self,
        task: &Value,
        limit: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Value {
        let id = task["id"].as_str().unwrap();
        let started = Instant::now();
        loop {
            let t = self.get(&format!("/api/tasks/{id}")).await;
            if done(t["status"].as_str().unwrap()) {
                return t;
            }
            assert!(
                started.elapsed() < limit,
                "task {id} stuck in {}",
                t["status"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every stored message of a session, oldest first.
    pub async fn messages(&self, session: &str) -> Vec<Value> {
        let page = self
            .get(&format!("/api/sessions/{session}/messages?limit=500"))
            .await;
        page["messages"].as_array().unwrap().clone()
    }

    /// Waits until `check` holds for the value at `path` (at most `limit`).
    pub async fn wait_for(
        &self,
        path: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let v = self.get(path).await;
            if check(&v) {
                return v;
            }
            assert!(started.elapsed() < limit, "{path} never matched: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Watches a project's WebSocket; every frame goes to the returned receiver.
    pub async fn watch(&self, project: &Value) -> mpsc::UnboundedReceiver<Value> {
        let url = format!(
            "{}/api/projects/{}/ws",
            self.base.replacen("http", "ws", 1),
            project["id"].as_str().unwrap()
        );
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                if let tungstenite::Message::Text(text) = frame
                    && let Ok(v) = serde_json::from_str::<Value>(&text)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        rx
    }
}

/// Drains what a watcher received so far.
pub fn drain(rx: &mut mpsc::UnboundedReceiver<Value>) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(v) = rx.try_recv() {
        out.push(v);
    }
    out
}

/// The statuses a task went through, from `task.updated` frames, without repeats.
pub fn statuses_of(frames: &[Value], task: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in frames {
        if f["type"] == "task.updated" && f["data"]["id"] == task {
            let s = f["data"]["status"].as_str().unwrap().to_owned();
            if out.last() != Some(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// Checks a session's stored messages: cursors 1..=n in order, the prompt first under its
/// derived id, and every `message.new` frame of the session matching the store in order.
pub fn check_messages(stored: &[Value], frames: &[Value], session: &str, prompt_id: &str) {
    assert!(!stored.is_empty());
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(
            m["cursor"].as_i64().unwrap(),
            i as i64 + 1,
            "cursors are contiguous"
        );
    }
    assert_eq!(
        stored[0]["id"], prompt_id,
        "the prompt is the first message, stored once"
    );
    assert_eq!(stored[0]["role"], "user");
    assert!(
        stored.iter().any(|m| m["role"] == "assistant"),
        "the agent answered: {stored:?}"
    );
    assert_eq!(
        stored.iter().filter(|m| m["id"] == prompt_id).count(),
        1,
        "the node's copy of the prompt deduplicated"
    );
    let live: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "message.new" && f["data"]["sessionId"] == session)
        .map(|f| &f["data"])
        .collect();
    let live_ids: Vec<&Value> = live.iter().map(|m| &m["id"]).collect();
    let stored_ids: Vec<&Value> = stored.iter().map(|m| &m["id"]).collect();
    // The viewer connected before the task existed: it saw every message, in order.
    assert_eq!(
        live_ids, stored_ids,
        "live messages match the store, in order"
    );
}

/// A new, empty PostgreSQL database of its own for `test` (so tests run in parallel), as
/// `(url, name)`; drop it with [`drop_pg_database`]. `None` (the test skips, saying so) when
/// `KILN_TEST_POSTGRES_URL` is unset, unless `KILN_REQUIRE_SERVICES=1` makes that a failure.
pub async fn pg_database(test: &str) -> Option<(String, String)> {
    use sqlx::Connection;
    let admin = match std::env::var("KILN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("KILN_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{test}: KILN_REQUIRE_SERVICES=1 but KILN_TEST_POSTGRES_URL is not set")
        }
        _ => {
            eprintln!(
                "SKIPPED {test}: set KILN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test to run it"
            );
            return None;
        }
    };
    let name = format!("kiln_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    Some((format!("{base}/{name}"), name))
}

/// Drops a database made by [`pg_database`] (its connections closed by force).
pub async fn drop_pg_database(name: &str) {
    use sqlx::Connection;
    let admin = std::env::var("KILN_TEST_POSTGRES_URL").unwrap();
    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}
