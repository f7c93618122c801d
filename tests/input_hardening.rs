//! Input hardening against a real `kiln serve` (SQLite, or PostgreSQL too with
//! `KILN_TEST_POSTGRES_URL`): oversized bodies, deep JSON, invalid UTF-8, huge message
//! content, control characters, path traversal (API paths, UI assets, and the node's ACP
//! file handlers reached through a real agent), and shell/git metacharacters in task titles
//! and descriptions. Each is a clean 4xx JSON error, or stored verbatim and made harmless.
#![allow(clippy::disallowed_methods)] // Tests wait on wall-clock time.

mod e2e_support;

use std::time::Duration;

use e2e_support::{Api, Kiln, git, git_repo};
use kiln_core::{NodeId, WorkspaceId};
use kiln_server::tokens::{CallbackClaims, TokenScope, TokenSigner};
use serde_json::{Value, json};

const KEY: &str = "input-hardening-secret-key-0123456789ab";
const LIMIT: Duration = Duration::from_secs(120);

/// A raw answer: status, content type, body text.
struct Answer {
    status: u16,
    ctype: String,
    text: String,
}

impl Answer {
    /// Asserts a 4xx with a JSON `{"error", "message"}` body, and that the status is `want`.
    fn json_error(&self, want: u16, what: &str) -> Value {
        assert_eq!(self.status, want, "{what}: {} {}", self.status, self.text);
        assert!(
            self.ctype.starts_with("application/json"),
            "{what}: content type {:?}, body {}",
            self.ctype,
            self.text
        );
        let v: Value = serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", self.text));
        assert!(
            v["error"].is_string() && v["message"].is_string(),
            "{what}: {v}"
        );
        v
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Answer {
        status,
        ctype,
        text: r.text().await.unwrap(),
    }
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no Content-Length) over a raw socket;
/// returns the status and the whole answer as text.
async fn chunked_post(base: &str, path: &str, token: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(64 * 1024) {
        // The server may answer 413 and close before the whole body is sent.
        if sock
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
            || sock.write_all(chunk).await.is_err()
            || sock.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Nested arrays `depth` deep.
fn deep(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

async fn start(dir: &std::path::Path, database_url: Option<&str>) -> (Kiln, Api, String) {
    let kiln = Kiln::start(&dir.join("data"), database_url, &[("KILN_SECRET_KEY", KEY)]).await;
    let token = kiln.user_token("hardy");
    let api = Api::new(&kiln.base, &token);
    (kiln, api, token)
}

/// The request-shape cases that need no running agent.
async fn body_and_path_cases(kiln: &Kiln, api: &Api, token: &str, repo: &std::path::Path) {
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", kiln.base);
    let post = |p: &str| {
        http.post(url(p))
            .bearer_auth(token)
            .header("content-type", "application/json")
    };

    // Oversized: 2 MiB, with and without a Content-Length (chunked).
    let big = format!(
        r#"{{"name":"x","repositoryUrl":"{}"}}"#,
        "a".repeat(2 << 20)
    );
    send(post("/api/projects").body(big.clone()))
        .await
        .json_error(413, "2 MiB project body");
    let (status, head_and_body) =
        chunked_post(&kiln.base, "/api/projects", token, big.as_bytes()).await;
    assert_eq!(status, 413, "2 MiB chunked project body: {head_and_body}");
    assert!(
        head_and_body.contains("application/json") && head_and_body.contains("payload_too_large"),
        "2 MiB chunked body: a JSON 413: {head_and_body}"
    );

    // Deep JSON: beyond serde_json's recursion limit, and a moderately deep valid document.
    // serde stops at the first mismatch (422) or at its recursion limit (400): either way
    // a clean error, no stack overflow.
    let a = send(post("/api/projects").body(format!(r#"{{"name":{}}}"#, deep(100_000)))).await;
    a.json_error(if a.status == 422 { 422 } else { 400 }, "100,000-deep JSON");
    let a = send(post("/api/projects").body(format!(
        r#"{{"name":"n","repositoryUrl":"r","defaultVmSize":{}}}"#,
        deep(100)
    )))
    .await;
    a.json_error(
        if a.status == 422 { 422 } else { 400 },
        "100-deep JSON in a typed field",
    );

    // Invalid UTF-8: in the body, in a path segment, in a query value, in the token header.
    let mut bad = br#"{"name":""#.to_vec();
    bad.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bad.extend_from_slice(br#"","repositoryUrl":"r"}"#);
    send(post("/api/projects").body(bad))
        .await
        .json_error(400, "invalid UTF-8 in the body");
    send(http.get(url("/api/tasks/%FF%FE")).bearer_auth(token))
        .await
        .json_error(
            400,
            "invalid UTF-8 in a path segment (regression: was text/plain)",
        );
    send(http.get(url("/api/nodes?state=%FF")).bearer_auth(token))
        .await
        .json_error(400, "invalid UTF-8 in a query value");
    send(http.get(url("/api/me")).header(
        "authorization",
        reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
    ))
    .await
    .json_error(401, "invalid UTF-8 in the Authorization header");

    // Wrong or missing media type.
    send(
        http.post(url("/api/projects"))
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body(r#"{"name":"n","repositoryUrl":"r"}"#),
    )
    .await
    .json_error(415, "text/plain body");

    // Path traversal in API paths and UI assets: a 404 JSON, never a file.
    for path in [
        "/api/workspaces/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/tasks/..%2F..%2Fsecret.key",
        "/api/projects/%2e%2e",
        "/assets/..%2F..%2FCargo.toml",
        "/assets/%2e%2e/%2e%2e/secret.key",
        "/assets/..%5c..%5csecret.key",
    ] {
        let a = send(http.get(url(path)).bearer_auth(token)).await;
        a.json_error(404, path);
        assert!(
            !a.text.contains("[package]") && !a.text.contains("root:"),
            "{path}"
        );
    }

    // Control characters and huge content: refused cleanly, or stored verbatim and
    // returned JSON-escaped.
    let control = "a\u{0}b\u{1b}[31mred\u{7}\r\n\u{202e}txt.exe\u{feff}";
    let a = send(
        post("/api/projects")
            .json(&json!({"name": control, "repositoryUrl": repo.display().to_string()})),
    )
    .await;
    match a.status {
        201 => {
            let p: Value = serde_json::from_str(&a.text).unwrap();
            let got = api
                .get(&format!("/api/projects/{}", p["id"].as_str().unwrap()))
                .await;
            assert_eq!(got["name"], control.trim(), "stored verbatim");
        }
        _ => {
            a.json_error(422, "control characters in a project name");
        }
    }
    let project = api.project(repo).await;
    let pid = project["id"].as_str().unwrap();
    let huge = "z".repeat(200 * 1024 + 1);
    send(post(&format!("/api/projects/{pid}/tasks")).json(&json!({"description": huge})))
        .await
        .json_error(422, "a description over 200 KiB");
    let just = format!("{}!", "y".repeat(200 * 1024 - 1));
    let t = api
        .post(
            &format!("/api/projects/{pid}/tasks"),
            json!({"description": just}),
        )
        .await;
    let msgs = api.messages(t["sessionId"].as_str().unwrap()).await;
    assert_eq!(
        msgs[0]["content"].as_str().unwrap().len(),
        200 * 1024,
        "200 KiB stored whole"
    );
    // On PostgreSQL a NUL cannot be stored in text: a 422, never a 500 (regression).
    let a = send(
        post(&format!("/api/projects/{pid}/tasks"))
            .json(&json!({"title": control, "description": control})),
    )
    .await;
    if a.status == 201 {
        let task: Value = serde_json::from_str(&a.text).unwrap();
        assert_eq!(task["title"], control, "the title is stored verbatim");
    } else {
        a.json_error(422, "control characters in a task");
    }
    // Unknown fields are refused, not ignored.
    send(post(&format!("/api/projects/{pid}/tasks")).json(&json!({"description": "d", "evil": 1})))
        .await
        .json_error(422, "unknown field");
    // Out-of-range numbers.
    send(
        post(&format!("/api/projects/{pid}/tasks"))
            .json(&json!({"description": "d", "priority": 1e300})),
    )
    .await
    .json_error(422, "a priority beyond i32");
    send(
        http.get(url(&format!(
            "/api/sessions/{}/messages?limit=99999999999999999999",
            t["sessionId"].as_str().unwrap()
        )))
        .bearer_auth(token),
    )
    .await
    .json_error(400, "a limit beyond u32");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_requests_get_clean_json_errors_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());
    let (kiln, api, token) = start(dir.path(), None).await;
    body_and_path_cases(&kiln, &api, &token, &repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_requests_get_clean_json_errors_postgres() {
    let Some((db_url, name)) = e2e_support::pg_database("input hardening postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());
    let (kiln, api, token) = start(dir.path(), Some(&db_url)).await;
    body_and_path_cases(&kiln, &api, &token, &repo).await;
    drop(kiln);
    e2e_support::drop_pg_database(&name).await;
}

/// Cases that need a real node, workspace and agent: the messages endpoint's limits,
/// path traversal through the agent's file requests, and metacharacters reaching git.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_file_requests_stay_in_the_workspace_and_titles_never_reach_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());
    let (kiln, api, _token) = start(dir.path(), None).await;
    let project = api.project(&repo).await;
    let http = reqwest::Client::new();

    // 1. Shell and git metacharacters in the title and description of a task that runs to
    //    completion: the branch is derived from the task id, nothing is executed.
    let marker = dir.path().join("pwned");
    let m = marker.display();
    let title = format!(
        "$(touch {m}) `touch {m}`; touch {m} && echo | tee {m} ../../HEAD~1 @{{-1}} refs/heads/main:x --upload-pack=touch -rf 'q\"\\"
    );
    let task = api
        .post(
            &format!("/api/projects/{}/tasks", project["id"].as_str().unwrap()),
            json!({"title": title, "description": format!("{title}\n--exec=touch {m}\nkiln-demo: messages 2"), "runNow": true}),
        )
        .await;
    let done = api.wait_terminal(&task, LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["title"],
        title.as_str(),
        "the title is stored verbatim"
    );
    let id = task["id"].as_str().unwrap();
    let branch = done["outputBranch"].as_str().unwrap();
    assert!(
        branch == format!("task/{id}") || branch.starts_with(&format!("task/{id}-")),
        "branch {branch:?} comes from the id only"
    );
    assert!(
        git(&repo, &["rev-parse", "--verify", branch]).is_some(),
        "pushed"
    );
    let branches = git(&repo, &["branch", "--format=%(refname)"]).unwrap();
    assert_eq!(
        branches.lines().count(),
        2,
        "main and the task branch only: {branches}"
    );
    assert!(
        !marker.exists(),
        "a metacharacter in the title ran a command"
    );

    // 2. Path traversal through the ACP fs handlers: writes and reads outside the
    //    workspace are refused by the host; the agent sees a failed tool call.
    let escape = dir.path().join("escaped.txt");
    let secret = dir.path().join("data").join("secret.key");
    let task = api
        .run_now(
            &project,
            &format!(
                "Escape\nkiln-demo: write ../../../../../../..{}\nkiln-demo: read {}",
                escape.display(),
                secret.display()
            ),
        )
        .await;
    let done = api.wait_terminal(&task, LIMIT).await;
    assert!(!escape.exists(), "the agent wrote outside its workspace");
    let stored = api.messages(task["sessionId"].as_str().unwrap()).await;
    let text = serde_json::to_string(&stored).unwrap();
    assert!(
        !text.contains(KEY),
        "the agent read the server's secret key: {done}"
    );
    assert!(
        text.contains("outside the workspace"),
        "the refusal is shown to the user: {text}"
    );

    // 3. The messages endpoint of a real workspace: huge content, deep JSON, control
    //    characters, invalid UTF-8 — with a valid workspace token.
    let hang = api.run_now(&project, "Hold\nkiln-demo: hang").await;
    let hang = api.wait_task(&hang, LIMIT, |s| s == "in_progress").await;
    let node: NodeId = hang["nodeId"].as_str().unwrap().parse().unwrap();
    let ws: WorkspaceId = hang["workspaceId"].as_str().unwrap().parse().unwrap();
    let session = hang["sessionId"].as_str().unwrap();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let tok = TokenSigner::new(KEY.as_bytes()).sign(&CallbackClaims {
        scope: TokenScope::Workspace,
        node,
        workspace: Some(ws),
        iat: now,
        exp: now + 600,
    });
    let endpoint = format!("{}/api/workspaces/{ws}/messages", kiln.base);
    let deliver = |body: Vec<u8>| {
        http.post(&endpoint)
            .bearer_auth(&tok)
            .header("content-type", "application/json")
            .body(body)
    };
    let msg = |content: &str| {
        json!({"id": uuid::Uuid::now_v7(), "sessionId": session, "role": "assistant",
               "content": content, "createdAt": "2026-11-25T08:00:00Z"})
    };
    let over = serde_json::to_vec(&json!({"messages": [msg(&"h".repeat(300 * 1024))]})).unwrap();
    send(deliver(over))
        .await
        .json_error(413, "a 300 KiB message");
    send(deliver(
        format!(r#"{{"messages":{}}}"#, deep(50_000)).into_bytes(),
    ))
    .await
    .json_error(400, "deep JSON at the messages endpoint");
    let mut bad = br#"{"messages":[{"content":""#.to_vec();
    bad.extend_from_slice(&[0xc0, 0xaf]);
    bad.extend_from_slice(b"\"}]}");
    send(deliver(bad))
        .await
        .json_error(400, "invalid UTF-8 at the messages endpoint");
    let weird = "ctl\u{0}\u{1}\u{1b}[2J\u{7f}\u{2028}end";
    let accepted = send(deliver(
        serde_json::to_vec(&json!({"messages": [msg(weird)]})).unwrap(),
    ))
    .await;
    if accepted.status == 200 {
        let stored = api.messages(session).await;
        assert!(
            stored.iter().any(|m| m["content"] == weird),
            "stored verbatim"
        );
    } else {
        accepted.json_error(422, "control characters in message content");
    }
    let near = serde_json::to_vec(&json!({"messages": [msg(&"n".repeat(250 * 1024))]})).unwrap();
    assert_eq!(
        send(deliver(near)).await.status,
        200,
        "a 250 KiB message fits"
    );
}
