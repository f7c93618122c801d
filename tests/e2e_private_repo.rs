//! Private repositories end to end, every process real: `kiln serve` (SQLite, local
//! provider), `kiln-node`, `kiln-demo-agent` (told to echo the token, as an agent that came
//! across it would), and a loopback smart-HTTP git server (`git http-backend` behind HTTP
//! basic auth) that wants the project's git token for reads and pushes.
//!
//! Without the token the task fails with a clear error; with it (set through
//! `PUT /api/projects/{id}/git-token`) the task branch is pushed; and the token appears in no
//! file of the server's data directory (its database, its log, each node's log, outbox and
//! checkouts with their `.git/config`), in no API response and in no WebSocket frame.
//!
//! A `kiln-node` killed and started again (a crash, an upgrade) gets the token back from the
//! server for the workspace it resumes, so the new agent process's echo of it is redacted
//! too; the token is still in no file.

mod e2e_support;
#[path = "../crates/node-agent/tests/common/git_http.rs"]
mod git_http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_support::{Api, Kiln, bin_dir, drain};
use git_http::{Access, GitHttp};
use serde_json::{Value, json};

const TOKEN: &str = "ghp_e2eKilnPrivateRepoToken4242";
const LIMIT: Duration = Duration::from_secs(120);

fn run_git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "e2e")
        .env("GIT_AUTHOR_EMAIL", "e2e@kiln.invalid")
        .env("GIT_COMMITTER_NAME", "e2e")
        .env("GIT_COMMITTER_EMAIL", "e2e@kiln.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `root/private.git`, a bare repository with one commit on `main`.
fn bare_repo(root: &Path) {
    let bare = root.join("private.git");
    std::fs::create_dir_all(&bare).unwrap();
    run_git(&bare, &["init", "-q", "--bare", "--initial-branch=main"]);
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    run_git(&seed, &["init", "-q", "--initial-branch=main"]);
    std::fs::write(seed.join("README.md"), "# private\n").unwrap();
    run_git(&seed, &["add", "-A"]);
    run_git(&seed, &["commit", "-q", "-m", "seed"]);
    run_git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"]);
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(path.display().to_string());
        }
    }
    found
}

/// Every `.git/config` under `dir`.
fn git_configs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.ends_with(".git/config") {
            found.push(path);
        } else if path.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    found
}

/// A request with the user's token; the response body, checked not to contain the token.
async fn call(
    http: &reqwest::Client,
    kiln: &Kiln,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut request = http
        .request(method.clone(), format!("{}{path}", kiln.base))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    assert!(
        !text.contains(TOKEN),
        "{method} {path} answered the token: {text}"
    );
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repository_needs_its_token_and_the_token_leaks_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    bare_repo(&repos);
    let server = GitHttp::start(repos.clone(), TOKEN, Access::Private).await;
    let repository_url = format!("{}/private.git", server.url);

    let data = dir.path().join("data");
    let kiln = Kiln::start(
        &data,
        None,
        &[
            ("KILN_DEMO_SAY", TOKEN),
            ("KILN_DEMO_CHUNK_CHARS", "5"),
            // Slow enough for the checkout to be looked at while the agent works.
            ("KILN_DEMO_PACE_MS", "40"),
            (
                "KILN_LOG",
                "debug,hyper=info,hyper_util=info,h2=info,reqwest=info,sqlx=info,tungstenite=info",
            ),
        ],
    )
    .await;
    let user_token = kiln.user_token("ann");
    let api = Api::new(&kiln.base, &user_token);
    let http = reqwest::Client::new();
    let project = api
        .post(
            "/api/projects",
            json!({"name": "private", "repositoryUrl": repository_url}),
        )
        .await;
    let project_id = project["id"].as_str().unwrap().to_owned();
    let mut viewer = api.watch(&project).await;
    let git_token_path = format!("/api/projects/{project_id}/git-token");

    // 1. No token: the clone is refused and the task fails saying so.
    let first = api.run_now(&project, "Add a greeting").await;
    let first = api.wait_terminal(&first, LIMIT).await;
    assert_eq!(first["status"], "failed", "{first}");
    let error = first["errorMessage"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "git clone refused: authentication failed for {repository_url}"
        )),
        "{first}"
    );

    // 2. With the token: the branch is pushed.
    let set = call(
        &http,
        &kiln,
        &user_token,
        reqwest::Method::PUT,
        &git_token_path,
        Some(json!({"token": TOKEN})),
    )
    .await;
    assert_eq!(set["hint"], "…4242", "{set}");
    let second = api.run_now(&project, "Add a greeting").await;
    // The checkout goes when its workspace is destroyed: read its git configuration while
    // the task runs.
    let seen_configs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watcher = tokio::spawn({
        let (data, seen) = (data.clone(), seen_configs.clone());
        async move {
            loop {
                for config in git_configs(&data) {
                    if let Ok(text) = std::fs::read_to_string(&config) {
                        seen.lock().unwrap().push(text);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let second = api.wait_terminal(&second, LIMIT).await;
    watcher.abort();
    assert_eq!(second["status"], "completed", "{second}");
    let branch = second["outputBranch"].as_str().unwrap().to_owned();
    let pushed = Command::new("git")
        .arg("--git-dir")
        .arg(repos.join("private.git"))
        .args([
            "show-ref",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ])
        .status()
        .unwrap();
    assert!(pushed.success(), "{branch} is in the private repository");
    assert!(
        second["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("[redacted]"),
        "the agent's echo is stored redacted: {second}"
    );

    // The echoed token is stored redacted (wait for the outbox to deliver the answer).
    let session = second["sessionId"].as_str().unwrap().to_owned();
    let messages_path = format!("/api/sessions/{session}/messages?limit=500");
    api.wait_for(&messages_path, LIMIT, |page| {
        page["messages"].as_array().is_some_and(|m| {
            m.iter().any(|m| {
                m["role"] == "assistant"
                    && m["content"]
                        .as_str()
                        .unwrap_or("")
                        .contains("By the way: [redacted]")
            })
        })
    })
    .await;

    // 3. The token is in no API response…
    for path in [
        format!("/api/projects/{project_id}"),
        "/api/projects".to_owned(),
        git_token_path.clone(),
        format!("/api/projects/{project_id}/tasks"),
        format!("/api/tasks/{}", first["id"].as_str().unwrap()),
        format!("/api/tasks/{}", second["id"].as_str().unwrap()),
        format!("/api/projects/{project_id}/sessions"),
        messages_path.clone(),
        format!(
            "/api/sessions/{}/messages?limit=500",
            first["sessionId"].as_str().unwrap()
        ),
        "/api/nodes".to_owned(),
        "/api/workspaces".to_owned(),
    ] {
        call(&http, &kiln, &user_token, reqwest::Method::GET, &path, None).await;
    }
    // …no WebSocket frame (deltas included)…
    let frames = drain(&mut viewer);
    assert!(
        frames.iter().any(|f| f["type"] == "message.new"),
        "the viewer saw the messages"
    );
    let frames = serde_json::to_string(&frames).unwrap();
    assert!(
        !frames.contains(TOKEN),
        "a WebSocket frame carried the token"
    );
    // …no checkout's git configuration, and no file of the data directory: the database,
    // the server's log, each node's log, outbox and workspace record.
    let mut seen_configs = seen_configs.lock().unwrap().clone();
    assert!(
        seen_configs.iter().any(|c| c.contains(&repository_url)),
        "the checkout's configuration was seen while the task ran"
    );
    seen_configs.extend(
        git_configs(&data)
            .iter()
            .filter_map(|c| std::fs::read_to_string(c).ok()),
    );
    for text in &seen_configs {
        assert!(
            !text.contains(TOKEN) && !text.contains("credential"),
            "{text}"
        );
    }
    let node_logs: Vec<_> = std::fs::read_dir(data.join("nodes"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("node.log"))
        .filter(|log| std::fs::metadata(log).is_ok_and(|m| m.len() > 0))
        .collect();
    assert!(!node_logs.is_empty(), "the nodes logged (searched below)");
    assert!(!kiln.log_text().is_empty());
    assert_eq!(files_containing(&data, TOKEN), Vec::<String>::new());
    assert!(server.authorized() >= 2, "{:?}", server.log());
}

/// Whether `pid` is a live `kiln-node` leading its own process group (a pid read from a file
/// may by now be another process's: only then is the group signalled).
fn is_node_group_leader(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the parenthesized name: state, ppid, pgrp, …
    let mut fields = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace();
    let state = fields.next();
    let pgrp = fields.nth(1).and_then(|v| v.parse::<u32>().ok());
    String::from_utf8_lossy(&cmdline).contains("kiln-node")
        && pgrp == Some(pid)
        && !matches!(state, Some("Z" | "X") | None)
}

/// SIGKILL to the process group `pid` leads, if it is still a `kiln-node`'s.
fn kill_node_group(pid: u32) {
    if is_node_group_leader(pid) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// A `kiln-node` this test started again: its group is killed and the process reaped at the
/// end (before [`Kiln`] is dropped, which finds its pid in `node.json` too).
struct RestartedNode(Child);

impl Drop for RestartedNode {
    fn drop(&mut self) {
        kill_node_group(self.0.id());
        let _ = self.0.wait();
    }
}

/// Kills a local node's process group (node and agent: a crashed machine) and starts
/// `kiln-node` again with the same environment in the same directory (the machine rebooted
/// with its disk), recording the new pid where the local provider looks.
fn crash_and_restart_node(node_dir: &Path) -> RestartedNode {
    let file = node_dir.join("node.json");
    let mut node: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let pid = u32::try_from(node["pid"].as_u64().unwrap()).unwrap();
    assert!(is_node_group_leader(pid), "node {pid} runs");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    kill_node_group(pid);
    let killed = Instant::now();
    while is_node_group_leader(pid) {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "node {pid} survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(node_dir.join("node.log"))
            .unwrap()
    };
    let mut cmd = Command::new(bin_dir().join("kiln-node"));
    cmd.env_clear();
    for var in environ.split(|b| *b == 0).filter(|v| !v.is_empty()) {
        let var = String::from_utf8_lossy(var);
        if let Some((k, v)) = var.split_once('=') {
            cmd.env(k, v);
        }
    }
    use std::os::unix::process::CommandExt;
    let child = cmd
        .current_dir(node_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log()))
        .stderr(Stdio::from(log()))
        .process_group(0)
        .spawn()
        .expect("kiln-node starts again");
    node["pid"] = json!(child.id());
    std::fs::write(&file, node.to_string()).unwrap();
    RestartedNode(child)
}

/// The assistant message of `messages` that answers `prompt` (the demo agent quotes it).
fn answer_to<'a>(messages: &'a Value, prompt: &str) -> Option<&'a Value> {
    messages["messages"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == "assistant" && m["content"].as_str().unwrap_or("").contains(prompt))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_gets_the_token_back_from_the_server_and_still_writes_it_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    bare_repo(&repos);
    let server = GitHttp::start(repos.clone(), TOKEN, Access::Private).await;
    let repository_url = format!("{}/private.git", server.url);
    let data = dir.path().join("data");
    let kiln = Kiln::start(
        &data,
        None,
        &[
            // Every agent process echoes the token, as one that came across it would.
            ("KILN_DEMO_SAY", TOKEN),
            ("KILN_DEMO_CHUNK_CHARS", "5"),
            (
                "KILN_LOG",
                "debug,hyper=info,hyper_util=info,h2=info,reqwest=info,sqlx=info,tungstenite=info",
            ),
        ],
    )
    .await;
    let user_token = kiln.user_token("ann");
    let api = Api::new(&kiln.base, &user_token);
    let http = reqwest::Client::new();
    let project = api
        .post(
            "/api/projects",
            json!({"name": "private", "repositoryUrl": repository_url}),
        )
        .await;
    let project_id = project["id"].as_str().unwrap().to_owned();
    call(
        &http,
        &kiln,
        &user_token,
        reqwest::Method::PUT,
        &format!("/api/projects/{project_id}/git-token"),
        Some(json!({"token": TOKEN})),
    )
    .await;

    // A chat on the private repository, answered once (its checkout used the token).
    let chat = api
        .post(
            &format!("/api/projects/{project_id}/sessions"),
            json!({"prompt": "Before the restart"}),
        )
        .await;
    let chat_id = chat["id"].as_str().unwrap().to_owned();
    let messages_path = format!("/api/sessions/{chat_id}/messages?limit=500");
    let messages = api
        .wait_for(&messages_path, LIMIT, |page| {
            answer_to(page, "Before the restart").is_some()
        })
        .await;
    let before = answer_to(&messages, "Before the restart").unwrap();
    assert!(
        before["content"]
            .as_str()
            .unwrap()
            .contains("By the way: [redacted]"),
        "{before}"
    );
    let chat = api
        .wait_for(&format!("/api/sessions/{chat_id}"), LIMIT, |s| {
            s["status"] == "active"
        })
        .await;
    let workspace = api
        .get(&format!(
            "/api/workspaces/{}",
            chat["workspaceId"].as_str().unwrap()
        ))
        .await;
    let node_dir: PathBuf = data
        .join("nodes")
        .join(workspace["nodeId"].as_str().unwrap());

    let _restarted = crash_and_restart_node(&node_dir);
    // The next prompt starts a new agent process in the resumed workspace: the node has
    // asked the server for the token again, and redacts the new agent's echo of it.
    api.post(
        &format!("/api/sessions/{chat_id}/prompt"),
        json!({"text": "After the restart"}),
    )
    .await;
    let messages = api
        .wait_for(&messages_path, LIMIT, |page| {
            answer_to(page, "After the restart").is_some()
        })
        .await;
    let after = answer_to(&messages, "After the restart").unwrap();
    assert!(
        after["content"]
            .as_str()
            .unwrap()
            .contains("By the way: [redacted]"),
        "the echo after the restart is redacted: {after}"
    );
    // Read through the API's own check (no response carries the token).
    call(
        &http,
        &kiln,
        &user_token,
        reqwest::Method::GET,
        &messages_path,
        None,
    )
    .await;
    let node_log = std::fs::read_to_string(node_dir.join("node.log")).unwrap();
    assert!(
        node_log.contains("git token fetched again from the control plane"),
        "the restarted node asked the server"
    );
    assert!(
        kiln.log_text()
            .contains("git token handed to a restarted node"),
        "the server answered it"
    );
    // Still in no file: not the workspace record, the node's log, the outbox, the database
    // or the server's log.
    assert_eq!(files_containing(&data, TOKEN), Vec::<String>::new());
    let record = std::fs::read_to_string(
        node_dir
            .join("data/workspaces")
            .join(workspace["id"].as_str().unwrap())
            .join("workspace.json"),
    )
    .unwrap();
    assert!(record.contains("\"gitTokenGiven\": true"), "{record}");
    assert!(server.authorized() >= 1, "{:?}", server.log());
}
