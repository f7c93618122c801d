//! A loopback smart-HTTP git server that wants a token: `git http-backend` run as CGI behind
//! an axum handler that checks HTTP basic auth (any username, the token as password).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::io::AsyncWriteExt;

/// Who may do what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads and pushes need the token (a private repository).
    Private,
    /// Anyone may read; pushes need the token.
    PublicRead,
}

#[derive(Debug)]
struct Server {
    root: PathBuf,
    token: String,
    access: Access,
    /// Requests refused with 401, and every Authorization header seen (to check what went
    /// over the wire).
    refused: AtomicU64,
    authorized: AtomicU64,
    log: Mutex<Vec<String>>,
}

/// A running server; its repositories are the directories under `root` (`{url}/{name}`).
#[derive(Debug, Clone)]
pub struct GitHttp {
    server: Arc<Server>,
    /// `http://127.0.0.1:{port}`.
    pub url: String,
}

impl GitHttp {
    /// Serves the repositories under `root`, wanting `token`.
    pub async fn start(root: PathBuf, token: &str, access: Access) -> Self {
        let server = Arc::new(Server {
            root,
            token: token.to_owned(),
            access,
            refused: AtomicU64::new(0),
            authorized: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Self { server, url }
    }

    /// Requests answered 401.
    pub fn refused(&self) -> u64 {
        self.server.refused.load(Ordering::Relaxed)
    }

    /// Requests that carried the right token.
    pub fn authorized(&self) -> u64 {
        self.server.authorized.load(Ordering::Relaxed)
    }

    /// One line per request: method, path and query.
    pub fn log(&self) -> Vec<String> {
        self.server.log.lock().unwrap().clone()
    }
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
        return false;
    };
    let decoded = String::from_utf8_lossy(&decoded);
    decoded
        .split_once(':')
        .is_some_and(|(user, password)| !user.is_empty() && password == token)
}

async fn handle(State(server): State<Arc<Server>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    server
        .log
        .lock()
        .unwrap()
        .push(format!("{} {path}?{query}", parts.method));
    let push = query.contains("service=git-receive-pack") || path.ends_with("/git-receive-pack");
    let needs_auth = push || server.access == Access::Private;
    let authorized = has_token(&parts.headers, &server.token);
    if needs_auth && !authorized {
        server.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"kiln-test\""),
            )],
            "authentication required",
        )
            .into_response();
    }
    if authorized {
        server.authorized.fetch_add(1, Ordering::Relaxed);
    }
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &server.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", &query)
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if authorized {
        cmd.env("REMOTE_USER", "kiln-test");
    }
    for (name, var) in [
        (header::CONTENT_TYPE, "CONTENT_TYPE"),
        (header::CONTENT_ENCODING, "HTTP_CONTENT_ENCODING"),
    ] {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            cmd.env(var, v);
        }
    }
    if let Some(v) = parts
        .headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
    {
        cmd.env("HTTP_GIT_PROTOCOL", v);
    }
    let mut child = cmd.spawn().expect("git http-backend runs");
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
        let _ = stdin.shutdown().await;
    });
    let output = child.wait_with_output().await.expect("http-backend output");
    let _ = writer.await;
    cgi_response(&output.stdout)
        .unwrap_or_else(|| (StatusCode::BAD_GATEWAY, output.stderr).into_response())
}

/// Turns CGI output (headers, a blank line, the body) into a response.
fn cgi_response(out: &[u8]) -> Option<Response> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        })?;
    let head = String::from_utf8_lossy(&out[..split.0]);
    let mut response = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.split(' ').next()?.parse().ok()?;
            response = response.status(code);
        } else {
            response = response.header(name.trim(), value);
        }
    }
    response
        .body(axum::body::Body::from(out[split.1..].to_vec()))
        .ok()
}
