//! `kiln-demo-agent`: an offline ACP agent for the embedded default, demos and tests.
//!
//! On every prompt it streams a short plan, a thought, a tool call that really writes a
//! file in the workspace through the client's `fs/write_text_file`, the tool call's
//! completion, and an answer in chunks, then ends the turn. It needs no network and no key.
//!
//! ## Settings (environment)
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `KILN_DEMO_MESSAGES` | answer messages per turn (each its own assistant message) | `1` |
//! | `KILN_DEMO_CHUNK_CHARS` | characters per streamed chunk | `12` |
//! | `KILN_DEMO_PACE_MS` | pause between updates | `0` |
//! | `KILN_DEMO_FILE` | the file it writes, relative to the workspace | `KILN_DEMO.md` |
//! | `KILN_DEMO_FAIL` | `crash` (exit mid-answer), `error` (the prompt fails), `refuse` (stop reason `refusal`) | unset |
//! | `KILN_DEMO_HANG` | `1`: after the plan, wait until cancelled | unset |
//! | `KILN_DEMO_SAY` | text it also says, in a thought and in its answer (tests use it to play an agent that echoes a secret it came across) | unset |
//!
//! ## Directives in the prompt
//!
//! Lines of the form `kiln-demo: <directive>` override the environment for one turn:
//! `fail crash|error|refuse`, `hang`, `messages <n>`, `write <path>` (write that path
//! instead; a path outside the workspace shows the host's refusal as a failed tool call),
//! `read <path>` (read a file first, as a `read` tool call), `ask` (request permission
//! before writing, offering `allow_always`, `allow_once` and `reject_once`; the chosen
//! option is shown in the tool's output), `pr <url>` (mention a pull request in the
//! answer, as real agents do after opening one) and `say <text>` (as `KILN_DEMO_SAY`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::v1::schema::{
    AgentCapabilities, CancelNotification, ContentBlock, ContentChunk, Implementation,
    InitializeRequest, InitializeResponse, MessageId, NewSessionRequest, NewSessionResponse,
    PermissionOption, PermissionOptionKind, Plan, PlanEntry, PlanEntryPriority, PlanEntryStatus,
    PromptRequest, PromptResponse, ReadTextFileRequest, RequestPermissionOutcome,
    RequestPermissionRequest, SessionId, SessionNotification, SessionUpdate, StopReason,
    TextContent, ToolCall, ToolCallContent, ToolCallLocation, ToolCallStatus, ToolCallUpdate,
    ToolCallUpdateFields, ToolKind, WriteTextFileRequest,
};
use agent_client_protocol::{Agent, Client};
use tokio::sync::watch;

use crate::acp::transport::lines_transport;

/// How the demo agent behaves (from the environment, then the prompt's directives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSettings {
    /// Answer messages per turn.
    pub messages: usize,
    /// Characters per chunk.
    pub chunk_chars: usize,
    /// Pause between updates.
    pub pace: Duration,
    /// The file to write (relative to the workspace, or absolute).
    pub file: String,
    /// A file to read first.
    pub read: Option<String>,
    /// How to fail, if at all.
    pub fail: Option<DemoFailure>,
    /// Wait for a cancel after the plan.
    pub hang: bool,
    /// A pull-request URL to mention.
    pub pr_url: Option<String>,
    /// Ask the client for permission before writing.
    pub ask_permission: bool,
    /// Text to say as well, in a thought and in the answer.
    pub say: Option<String>,
}

/// A failure the demo agent can simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoFailure {
    /// The process exits with status 3 in the middle of the answer.
    Crash,
    /// The prompt request fails with a JSON-RPC error.
    Error,
    /// The turn ends with stop reason `refusal`.
    Refuse,
}

impl Default for DemoSettings {
    fn default() -> Self {
        Self {
            messages: 1,
            chunk_chars: 12,
            pace: Duration::ZERO,
            file: "KILN_DEMO.md".into(),
            read: None,
            fail: None,
            hang: false,
            pr_url: None,
            ask_permission: false,
            say: None,
        }
    }
}

fn parse_failure(value: &str) -> Option<DemoFailure> {
    match value.trim() {
        "crash" => Some(DemoFailure::Crash),
        "error" => Some(DemoFailure::Error),
        "refuse" | "refusal" => Some(DemoFailure::Refuse),
        _ => None,
    }
}

impl DemoSettings {
    /// The settings from `KILN_DEMO_*` variables.
    #[must_use]
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut s = Self::default();
        for (name, value) in vars {
            match name.as_str() {
                "KILN_DEMO_MESSAGES" => s.messages = value.trim().parse().unwrap_or(s.messages),
                "KILN_DEMO_CHUNK_CHARS" => {
                    s.chunk_chars = value.trim().parse().unwrap_or(s.chunk_chars).max(1);
                }
                "KILN_DEMO_PACE_MS" => {
                    s.pace = Duration::from_millis(value.trim().parse().unwrap_or(0));
                }
                "KILN_DEMO_FILE" if !value.trim().is_empty() => s.file = value.trim().into(),
                "KILN_DEMO_FAIL" => s.fail = parse_failure(&value),
                "KILN_DEMO_HANG" => s.hang = matches!(value.trim(), "1" | "true" | "yes"),
                "KILN_DEMO_SAY" if !value.is_empty() => s.say = Some(value),
                _ => {}
            }
        }
        s
    }

    /// These settings with the prompt's `kiln-demo:` directives applied.
    ///
    /// ```
    /// use kiln_node::demo::{DemoFailure, DemoSettings};
    /// let s = DemoSettings::default().with_directives("Fix it\nkiln-demo: fail crash\nkiln-demo: messages 3");
    /// assert_eq!((s.fail, s.messages), (Some(DemoFailure::Crash), 3));
    /// ```
    #[must_use]
    pub fn with_directives(mut self, prompt: &str) -> Self {
        for line in prompt.lines() {
            let Some(directive) = line.trim().strip_prefix("kiln-demo:") else {
                continue;
            };
            let directive = directive.trim();
            let (word, rest) = directive.split_once(' ').unwrap_or((directive, ""));
            let rest = rest.trim();
            match word {
                "fail" => self.fail = parse_failure(rest),
                "hang" => self.hang = true,
                "messages" => self.messages = rest.parse().unwrap_or(self.messages),
                "write" if !rest.is_empty() => self.file = rest.into(),
                "read" if !rest.is_empty() => self.read = Some(rest.into()),
                "pr" if !rest.is_empty() => self.pr_url = Some(rest.into()),
                "ask" => self.ask_permission = true,
                "say" if !rest.is_empty() => self.say = Some(rest.into()),
                _ => {}
            }
        }
        self
    }
}

#[derive(Debug, Default)]
struct DemoState {
    sessions: HashMap<String, (PathBuf, watch::Sender<bool>)>,
}

/// Serves the demo agent on this process's stdin/stdout until the client disconnects.
///
/// # Errors
/// The connection failed.
pub async fn run_stdio() -> Result<(), agent_client_protocol::Error> {
    let transport = lines_transport(tokio::io::stdin(), tokio::io::stdout());
    serve(transport).await
}

/// Serves the demo agent over `transport`.
///
/// # Errors
/// The connection failed.
pub async fn serve(
    transport: impl agent_client_protocol::ConnectTo<Agent> + 'static,
) -> Result<(), agent_client_protocol::Error> {
    let state = Arc::new(Mutex::new(DemoState::default()));
    let for_session = state.clone();
    let for_prompt = state.clone();
    let for_cancel = state;
    Agent
        .v1()
        .name("kiln-demo-agent")
        .on_receive_request(
            async move |request: InitializeRequest, responder, _cx| {
                responder.respond(
                    InitializeResponse::new(request.protocol_version)
                        .agent_capabilities(AgentCapabilities::new())
                        .agent_info(Implementation::new(
                            "kiln-demo-agent",
                            env!("CARGO_PKG_VERSION"),
                        )),
                )
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: NewSessionRequest, responder, _cx| {
                let id = format!("demo-{}", uuid::Uuid::now_v7());
                let (cancel, _) = watch::channel(false);
                lock(&for_session)
                    .sessions
                    .insert(id.clone(), (request.cwd, cancel));
                responder.respond(NewSessionResponse::new(id))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_notification(
            async move |notification: CancelNotification, _cx| {
                if let Some((_, cancel)) =
                    lock(&for_cancel).sessions.get(&*notification.session_id.0)
                {
                    cancel.send_replace(true);
                }
                Ok(())
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .on_receive_request(
            async move |request: PromptRequest, responder, cx: ConnectionTo<Client>| {
                let session = lock(&for_prompt)
                    .sessions
                    .get(&*request.session_id.0)
                    .map(|(cwd, cancel)| (cwd.clone(), cancel.clone()));
                let Some((cwd, cancel)) = session else {
                    return responder.respond_with_error(
                        agent_client_protocol::Error::invalid_params()
                            .data(serde_json::json!("unknown session")),
                    );
                };
                cancel.send_replace(false);
                let text: String = request
                    .prompt
                    .iter()
                    .filter_map(|b| match b {
                        ContentBlock::Text(t) => Some(t.text.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                let settings = DemoSettings::from_vars(std::env::vars()).with_directives(&text);
                // The turn talks back to the client: run it off the dispatch loop.
                cx.clone().spawn(async move {
                    let turn = Turn {
                        cx,
                        session: request.session_id,
                        cwd,
                        settings,
                        cancel: cancel.subscribe(),
                    };
                    match turn.run(&text).await {
                        Ok(stop) => responder.respond(PromptResponse::new(stop)),
                        Err(e) => responder.respond_with_error(e),
                    }
                })
            },
            agent_client_protocol::on_receive_request!(),
        )
        .connect_to(transport)
        .await
}

fn lock(state: &Mutex<DemoState>) -> std::sync::MutexGuard<'_, DemoState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Turn {
    cx: ConnectionTo<Client>,
    session: SessionId,
    cwd: PathBuf,
    settings: DemoSettings,
    cancel: watch::Receiver<bool>,
}

type TurnResult<T> = Result<T, agent_client_protocol::Error>;

impl Turn {
    fn send(&self, update: SessionUpdate) -> TurnResult<()> {
        self.cx
            .send_notification(SessionNotification::new(self.session.clone(), update))
    }

    /// Paces the stream; `true` when the turn was cancelled meanwhile.
    async fn pause(&self) -> bool {
        if !self.settings.pace.is_zero() {
            tokio::time::sleep(self.settings.pace).await;
        }
        *self.cancel.borrow()
    }

    async fn stream(
        &self,
        text: &str,
        message_id: Option<&str>,
        thought: bool,
    ) -> TurnResult<bool> {
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(self.settings.chunk_chars) {
            let chunk = ContentChunk::new(ContentBlock::Text(TextContent::new(
                piece.iter().collect::<String>(),
            )))
            .message_id(message_id.map(|m| MessageId::new(m.to_owned())));
            self.send(if thought {
                SessionUpdate::AgentThoughtChunk(chunk)
            } else {
                SessionUpdate::AgentMessageChunk(chunk)
            })?;
            if self.pause().await {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn path(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.cwd.join(p)
        }
    }

    async fn run(mut self, prompt: &str) -> TurnResult<StopReason> {
        let topic = prompt
            .lines()
            .find(|l| !l.trim().is_empty() && !l.trim().starts_with("kiln-demo:"))
            .unwrap_or("the task")
            .trim()
            .to_owned();
        let file = self.path(&self.settings.file.clone());
        self.send(SessionUpdate::Plan(Plan::new(vec![
            PlanEntry::new(
                format!("Understand: {topic}"),
                PlanEntryPriority::High,
                PlanEntryStatus::Completed,
            ),
            PlanEntry::new(
                format!("Write {}", self.settings.file),
                PlanEntryPriority::High,
                PlanEntryStatus::InProgress,
            ),
            PlanEntry::new(
                "Summarize the change",
                PlanEntryPriority::Medium,
                PlanEntryStatus::Pending,
            ),
        ])))?;
        if self.pause().await {
            return Ok(StopReason::Cancelled);
        }
        if self
            .stream(
                &format!("The task asks for: {topic}. A small file will do."),
                None,
                true,
            )
            .await?
        {
            return Ok(StopReason::Cancelled);
        }
        if let Some(say) = &self.settings.say {
            // As an agent that logs what it found.
            eprintln!("kiln-demo: came across {say}");
        }
        if let Some(say) = self.settings.say.clone()
            && self
                .stream(&format!("I came across this: {say}"), None, true)
                .await?
        {
            return Ok(StopReason::Cancelled);
        }
        if self.settings.hang {
            let _ = self.cancel.wait_for(|c| *c).await;
            return Ok(StopReason::Cancelled);
        }
        if self.settings.fail == Some(DemoFailure::Refuse) {
            self.stream("I can't help with that.", Some("refusal"), false)
                .await?;
            return Ok(StopReason::Refusal);
        }
        if let Some(read) = self.settings.read.clone() {
            self.read_tool(&read).await?;
        }
        let written = self.write_tool(&file, &topic).await?;
        if self.pause().await {
            return Ok(StopReason::Cancelled);
        }
        if self.settings.fail == Some(DemoFailure::Error) {
            return Err(agent_client_protocol::Error::internal_error()
                .data(serde_json::json!("kiln-demo: simulated agent error")));
        }
        for n in 1..=self.settings.messages.max(1) {
            let mut answer = if written {
                format!(
                    "Done: I wrote `{}` with a note about \"{topic}\".",
                    self.settings.file
                )
            } else {
                format!(
                    "I could not write `{}`; the workspace refused it.",
                    self.settings.file
                )
            };
            if self.settings.messages > 1 {
                answer = format!("({n}/{}) {answer}", self.settings.messages);
            }
            if let Some(say) = &self.settings.say {
                answer.push_str(&format!(" By the way: {say}."));
            }
            if n == self.settings.messages.max(1)
                && let Some(url) = &self.settings.pr_url
            {
                answer.push_str(&format!(" Pull request: {url}"));
            }
            if self.settings.fail == Some(DemoFailure::Crash) {
                let half: String = answer.chars().take(answer.chars().count() / 2).collect();
                self.stream(&half, Some(&format!("answer-{n}")), false)
                    .await?;
                // Let the last chunk leave before dying mid-turn.
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::process::exit(3);
            }
            if self
                .stream(&answer, Some(&format!("answer-{n}")), false)
                .await?
            {
                return Ok(StopReason::Cancelled);
            }
        }
        Ok(StopReason::EndTurn)
    }

    async fn read_tool(&self, name: &str) -> TurnResult<()> {
        let path = self.path(name);
        let id = "demo-read";
        self.send(SessionUpdate::ToolCall(
            ToolCall::new(id, format!("Read {name}"))
                .kind(ToolKind::Read)
                .status(ToolCallStatus::InProgress)
                .locations(vec![ToolCallLocation::new(path.clone())]),
        ))?;
        let result = self
            .cx
            .send_request(ReadTextFileRequest::new(self.session.clone(), path))
            .block_task()
            .await;
        let (status, text) = match result {
            Ok(r) => (
                ToolCallStatus::Completed,
                format!("{} bytes read", r.content.len()),
            ),
            Err(e) => (ToolCallStatus::Failed, refusal_text(&e)),
        };
        self.send(SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
            id,
            ToolCallUpdateFields::new()
                .status(status)
                .content(vec![ToolCallContent::from(text)]),
        )))
    }

    async fn write_tool(&self, path: &Path, topic: &str) -> TurnResult<bool> {
        let id = "demo-write";
        self.send(SessionUpdate::ToolCall(
            ToolCall::new(id, format!("Write {}", self.settings.file))
                .kind(ToolKind::Edit)
                .status(ToolCallStatus::Pending)
                .locations(vec![ToolCallLocation::new(path.to_path_buf())]),
        ))?;
        let mut granted = String::new();
        if self.settings.ask_permission {
            let request = RequestPermissionRequest::new(
                self.session.clone(),
                ToolCallUpdate::new(
                    id,
                    ToolCallUpdateFields::new().title(format!("Write {}", self.settings.file)),
                ),
                vec![
                    PermissionOption::new(
                        "always",
                        "Always allow",
                        PermissionOptionKind::AllowAlways,
                    ),
                    PermissionOption::new("once", "Allow once", PermissionOptionKind::AllowOnce),
                    PermissionOption::new("no", "Reject", PermissionOptionKind::RejectOnce),
                ],
            );
            let answer = self.cx.send_request(request).block_task().await?;
            match answer.outcome {
                RequestPermissionOutcome::Selected(selected)
                    if selected.option_id.0.as_ref() != "no" =>
                {
                    granted = format!(" (permission: {})", selected.option_id.0);
                }
                other => {
                    self.send(SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
                        id,
                        ToolCallUpdateFields::new()
                            .status(ToolCallStatus::Failed)
                            .content(vec![ToolCallContent::from(format!(
                                "permission denied: {other:?}"
                            ))]),
                    )))?;
                    return Ok(false);
                }
            }
        }
        let content = format!("# Kiln demo\n\nTask: {topic}\n");
        let result = self
            .cx
            .send_request(WriteTextFileRequest::new(
                self.session.clone(),
                path.to_path_buf(),
                content,
            ))
            .block_task()
            .await;
        let (status, text, ok) = match result {
            Ok(_) => (ToolCallStatus::Completed, format!("written{granted}"), true),
            Err(e) => (ToolCallStatus::Failed, refusal_text(&e), false),
        };
        self.send(SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
            id,
            ToolCallUpdateFields::new()
                .status(status)
                .content(vec![ToolCallContent::from(text)]),
        )))?;
        Ok(ok)
    }
}

fn refusal_text(e: &agent_client_protocol::Error) -> String {
    match &e.data {
        Some(serde_json::Value::String(s)) => format!("refused: {s}"),
        Some(other) => format!("refused: {} ({other})", e.message),
        None => format!("refused: {}", e.message),
    }
}
