//! Private repositories end to end, every process real: `kiln serve` (SQLite, local
//! provider), `kiln-node`, `kiln-demo-agent` (told to echo the token, as an agent that came
//! across it would), and a loopback smart-HTTP git server (`git http-backend` behind HTTP
//! basic auth) that wants the project's git token for reads and pushes.
//!
//! Without the token the task fails with a clear error; with it (set through
//! `PUT /api/projects/{id}/git-token`) the task branch is pushed; and the token appears in no
//! file of the server's data directory (its database, its log, each node's log, outbox and
//! checkouts with their `.git/config`), in no API response and in no WebSocket frame.

mod e2e_support;
#[path = "../crates/node-agent/tests/common/git_http.rs"]
mod git_http;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e_support::{Api, Kiln, drain};
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
