//! The operator CLI's client side: `kiln task run`, `kiln task list`, `kiln node list`, talking
//! to a server's API with a token (`--token` / `KILN_TOKEN`).

use std::collections::HashSet;
use std::io::Write;

use futures::StreamExt;
use kiln_core::{Node, Project, StoredMessage, Task, TaskStatus};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

/// Where the server is and who is asking.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's URL.
    #[arg(long, env = "KILN_SERVER_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// An API token (create one with `kiln user add` or `POST /api/tokens`).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// A client of the API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// A failed call, with the server's error code and message when it sent one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

type Result<T> = std::result::Result<T, ClientError>;

impl Client {
    /// A client for `args`.
    #[must_use]
    pub fn new(args: &ClientArgs) -> Self {
        Self {
            base: args.server.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
            http: reqwest::Client::new(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    Some(format!(
                        "{}: {}",
                        v["error"].as_str()?,
                        v["message"].as_str()?
                    ))
                })
                .unwrap_or(text);
            return Err(ClientError(format!("{status}: {detail}")));
        }
        serde_json::from_str(&text).map_err(|e| ClientError(format!("unexpected answer: {e}")))
    }

    /// Finds a project by id or by unique name.
    pub async fn project(&self, id_or_name: &str) -> Result<Project> {
        let projects: Vec<Project> = self
            .call(reqwest::Method::GET, "/api/projects", None)
            .await?;
        let matches: Vec<Project> = projects
            .into_iter()
            .filter(|p| p.id.to_string() == id_or_name || p.name == id_or_name)
            .collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one")),
            0 => Err(ClientError(format!("no project {id_or_name:?}"))),
            _ => Err(ClientError(format!(
                "several projects are named {id_or_name:?}; use its id"
            ))),
        }
    }

    /// Every task of every project (or of one), optionally with these statuses.
    pub async fn tasks(&self, project: Option<&str>, status: Option<&str>) -> Result<Vec<Task>> {
        let projects = match project {
            Some(p) => vec![self.project(p).await?],
            None => {
                self.call(reqwest::Method::GET, "/api/projects", None)
                    .await?
            }
        };
        let mut all = Vec::new();
        for p in projects {
            let q = status.map(|s| format!("?status={s}")).unwrap_or_default();
            let tasks: Vec<Task> = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/projects/{}/tasks{q}", p.id),
                    None,
                )
                .await?;
            all.extend(tasks);
        }
        Ok(all)
    }

    /// The user's nodes.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.call(reqwest::Method::GET, "/api/nodes", None).await
    }

    /// Creates a task in `project` and runs it now, printing its status changes and messages
    /// to `out` until it ends; returns its final state.
    pub async fn run_task(
        &self,
        project: &str,
        description: &str,
        out: &mut (dyn Write + Send),
    ) -> Result<Task> {
        let project = self.project(project).await?;
        // Watch before creating, so no update is missed.
        let url = format!(
            "{}/api/projects/{}/ws",
            self.base.replacen("http", "ws", 1),
            project.id
        );
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(url)
            .map_err(|e| ClientError(e.to_string()))?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .map_err(|_| ClientError("the token is not a valid header value".into()))?,
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| ClientError(format!("cannot watch the project: {e}")))?;
        let task: Task = self
            .call(
                reqwest::Method::POST,
                &format!("/api/projects/{}/tasks", project.id),
                Some(json!({"description": description, "runNow": true})),
            )
            .await?;
        let session = task.session_id;
        let _ = writeln!(out, "task {} {}", task.id, task.status);
        let mut last_status = task.status;
        let mut printed: HashSet<i64> = HashSet::new();
        let mut last_cursor = 0;
        let print = |m: &StoredMessage, out: &mut (dyn Write + Send)| {
            let _ = writeln!(
                out,
                "  [{}] {}",
                m.message.role,
                m.message.content.trim_end()
            );
        };
        // The prompt was stored before the socket could report it.
        if let Some(session) = session {
            let page: Value = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/sessions/{session}/messages"),
                    None,
                )
                .await?;
            for m in serde_json::from_value::<Vec<StoredMessage>>(page["messages"].clone())
                .unwrap_or_default()
            {
                if printed.insert(m.cursor) {
                    last_cursor = last_cursor.max(m.cursor);
                    print(&m, out);
                }
            }
        }
        while !last_status.is_terminal() {
            let Some(frame) = socket.next().await else {
                return Err(ClientError("the server closed the live connection".into()));
            };
            let frame = frame.map_err(|e| ClientError(e.to_string()))?;
            let tungstenite::Message::Text(text) = frame else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            match event["type"].as_str() {
                Some("task.updated") => {
                    let Ok(t) = serde_json::from_value::<Task>(event["data"].clone()) else {
                        continue;
                    };
                    if t.id == task.id && t.status != last_status {
                        last_status = t.status;
                        let extra = match t.status {
                            TaskStatus::Delegated => t.node_id.map(|n| format!(" (node {n})")),
                            TaskStatus::Completed => {
                                t.output_branch.map(|b| format!(" (branch {b})"))
                            }
                            TaskStatus::Failed => t.error_message.map(|e| format!(": {e}")),
                            _ => None,
                        };
                        let _ = writeln!(
                            out,
                            "task {} {}{}",
                            t.id,
                            t.status,
                            extra.unwrap_or_default()
                        );
                    }
                }
                Some("message.new") => {
                    let Ok(m) = serde_json::from_value::<StoredMessage>(event["data"].clone())
                    else {
                        continue;
                    };
                    if Some(m.message.session_id) == session && printed.insert(m.cursor) {
                        last_cursor = last_cursor.max(m.cursor);
                        print(&m, out);
                    }
                }
                _ => {}
            }
        }
        // Messages may still be arriving after the end: print what is stored.
        if let Some(session) = session {
            let page: Value = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/sessions/{session}/messages?after={last_cursor}&limit=500"),
                    None,
                )
                .await?;
            for m in serde_json::from_value::<Vec<StoredMessage>>(page["messages"].clone())
                .unwrap_or_default()
            {
                if printed.insert(m.cursor) {
                    print(&m, out);
                }
            }
        }
        let _ = socket.close(None).await;
        self.call(
            reqwest::Method::GET,
            &format!("/api/tasks/{}", task.id),
            None,
        )
        .await
    }
}

/// Prints tasks as a table.
pub fn print_tasks(tasks: &[Task], out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "{:<36}  {:<11}  {:<7}  TITLE",
        "ID", "STATUS", "ATTEMPT"
    );
    for t in tasks {
        let _ = writeln!(
            out,
            "{:<36}  {:<11}  {:<7}  {}",
            t.id.to_string(),
            t.status.as_str(),
            t.attempt,
            t.title
        );
    }
}

/// Prints nodes as a table.
pub fn print_nodes(nodes: &[Node], out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "{:<36}  {:<12}  {:<6}  {:<8}  WARM UNTIL",
        "ID", "STATE", "SIZE", "PROVIDER"
    );
    for n in nodes {
        let warm = n
            .warm_until
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<36}  {:<12}  {:<6}  {:<8}  {warm}",
            n.id.to_string(),
            n.state.as_str(),
            n.size.as_str(),
            n.provider
        );
    }
}
