//! The ACP host: runs one agent process over stdio and drives its session.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::v1::schema::{
    CancelNotification, ClientCapabilities, ContentBlock, CreateTerminalRequest,
    CreateTerminalResponse, FileSystemCapabilities, Implementation, InitializeRequest,
    KillTerminalRequest, KillTerminalResponse, NewSessionRequest, PromptRequest, PromptResponse,
    ReadTextFileRequest, ReadTextFileResponse, ReleaseTerminalRequest, ReleaseTerminalResponse,
    RequestPermissionRequest, SessionId as AcpSessionId, StopReason, TerminalOutputRequest,
    TerminalOutputResponse, TextContent, WaitForTerminalExitRequest, WaitForTerminalExitResponse,
    WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::{Agent, Client, UntypedMessage};
use futures::StreamExt;
use futures::future::BoxFuture;
use kiln_core::{MessageId, SessionId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use super::capture::{SessionCapture, TurnSummary};
use super::client::{approve, read_text, refusal, write_text};
use super::process::stop_group;
use super::terminal::Terminals;
use super::transport::lines_transport;
use crate::config::split_command;
use crate::error::{NodeError, Result, shorten};
use crate::workspace::paths::WorkspaceRoot;

/// How to start an agent.
#[derive(Debug, Clone)]
pub struct AgentLaunch {
    /// The command line (split like a shell would, without expansion).
    pub command: String,
    /// The workspace checkout: the agent's working directory and the ACP session's `cwd`.
    pub cwd: PathBuf,
    /// Extra environment (for example `PROJECT_ID`, `CHAT_SESSION_ID`).
    pub env: BTreeMap<String, String>,
    /// The chat session the ACP session is linked to (sent in the session's `_meta`).
    pub chat_session_id: Option<SessionId>,
    /// How long a cancelled turn may take to end before the agent is killed.
    pub cancel_grace: Duration,
}

/// How a turn ended, as the agent said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopKind {
    /// The agent finished its turn.
    EndTurn,
    /// The turn was cancelled.
    Cancelled,
    /// The agent refused.
    Refusal,
    /// Another stop reason (`max_tokens`, `max_turn_requests`, …).
    Other(String),
}

/// What the host reports about its agent, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReport {
    /// The agent initialized and opened its session.
    Started {
        /// The ACP session id (linked to the chat session).
        acp_session_id: String,
    },
    /// A prompt turn ended.
    TurnEnded {
        /// Why.
        stop: StopKind,
        /// The summary and PR URL so far.
        summary: TurnSummary,
    },
    /// A prompt turn failed with an error from the agent (the agent still runs).
    TurnFailed {
        /// The agent's error.
        error: String,
    },
    /// The agent process ended without being asked to (crash), or could not start.
    Exited {
        /// What happened, with the tail of its stderr.
        error: String,
    },
}

enum HostCommand {
    Prompt { id: MessageId, text: String },
    Cancel,
    Stop,
}

/// A running agent process and its ACP session.
#[derive(Debug)]
pub struct AgentHost {
    commands: mpsc::UnboundedSender<HostCommand>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for HostCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Prompt { id, .. } => write!(f, "Prompt({id})"),
            Self::Cancel => f.write_str("Cancel"),
            Self::Stop => f.write_str("Stop"),
        }
    }
}

impl AgentHost {
    /// Starts the agent, initializes it and opens a session in `launch.cwd`. Reports arrive
    /// on `reports` in order: `Started`, then one `TurnEnded`/`TurnFailed` per prompt, and
    /// `Exited` if the process ends unasked.
    ///
    /// # Errors
    /// [`NodeError::Agent`] when the command cannot be parsed or started.
    pub fn start(
        launch: AgentLaunch,
        capture: SessionCapture,
        reports: mpsc::UnboundedSender<AgentReport>,
    ) -> Result<Self> {
        let words = split_command(&launch.command)?;
        let root = WorkspaceRoot::new(&launch.cwd)
            .map_err(|e| NodeError::io(format!("workspace {}", launch.cwd.display()), e))?;
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..])
            .current_dir(root.path())
            // The node's own token is not the agent's business.
            .env_remove("CALLBACK_TOKEN")
            .envs(&launch.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| NodeError::Agent(format!("cannot start {:?}: {e}", words[0])))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(NodeError::Agent("agent stdio unavailable".into()));
        };
        let stderr_tail = Arc::new(StdMutex::new(VecDeque::new()));
        tokio::spawn(collect_stderr(
            stderr,
            stderr_tail.clone(),
            capture.redactor().clone(),
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Session {
            capture: Arc::new(Mutex::new(capture)),
            terminals: Arc::new(Terminals::new(root.clone())),
            root,
            launch,
            reports,
        };
        let transport = lines_transport(stdout, stdin);
        let task = tokio::spawn(session.run(transport, child, rx, stderr_tail));
        Ok(Self { commands: tx, task })
    }

    /// Queues a prompt; it is sent when the previous turn has ended. Its user message is
    /// recorded under `id` when it is sent.
    pub fn prompt(&self, id: MessageId, text: String) {
        let _ = self.commands.send(HostCommand::Prompt { id, text });
    }

    /// Cancels the running turn (ACP `session/cancel`) and drops queued prompts.
    pub fn cancel(&self) {
        let _ = self.commands.send(HostCommand::Cancel);
    }

    /// Whether the agent process still runs.
    #[must_use]
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops the agent (TERM, then KILL) and waits for it.
    pub async fn stop(self) {
        let _ = self.commands.send(HostCommand::Stop);
        if tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .is_err()
        {
            tracing::warn!("agent host did not stop in time");
        }
    }
}

struct Session {
    capture: Arc<Mutex<SessionCapture>>,
    terminals: Arc<Terminals>,
    root: WorkspaceRoot,
    launch: AgentLaunch,
    reports: mpsc::UnboundedSender<AgentReport>,
}

/// Why the session loop ended.
enum Ending {
    Stopped,
    Crashed(String),
    CancelIgnored,
}

impl Session {
    async fn run(
        self,
        transport: impl agent_client_protocol::ConnectTo<Client> + 'static,
        mut child: Child,
        commands: mpsc::UnboundedReceiver<HostCommand>,
        stderr_tail: Arc<StdMutex<VecDeque<String>>>,
    ) {
        let pgid = child.id();
        let reports = self.reports.clone();
        let capture = self.capture.clone();
        let terminals = self.terminals.clone();
        let result = self.connect(transport, commands).await;
        let ending = match result {
            Ok(ending) => ending,
            Err(e) => Ending::Crashed(e.to_string()),
        };
        terminals.kill_all().await;
        match ending {
            Ending::Stopped | Ending::CancelIgnored => {
                if let Some(pgid) = pgid {
                    stop_group(pgid, Duration::from_secs(3), async {
                        let _ = child.wait().await;
                    })
                    .await;
                }
                let _ = child.wait().await;
                if matches!(ending, Ending::CancelIgnored) {
                    let summary = capture.lock().await.finish_turn().await;
                    let _ = reports.send(AgentReport::TurnEnded {
                        stop: StopKind::Cancelled,
                        summary,
                    });
                    let _ = reports.send(AgentReport::Exited {
                        error: "the agent ignored the cancel request and was stopped".into(),
                    });
                }
            }
            Ending::Crashed(reason) => {
                // Whatever the agent streamed before it died is kept.
                capture.lock().await.finish_turn().await;
                let status = match tokio::time::timeout(Duration::from_secs(3), child.wait()).await
                {
                    Ok(Ok(status)) => status.to_string(),
                    Ok(Err(e)) => format!("unknown exit ({e})"),
                    Err(_) => {
                        let _ = child.kill().await;
                        "hung after closing its output; killed".into()
                    }
                };
                // Give the stderr reader a moment to catch the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let tail: Vec<String> = stderr_tail
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .cloned()
                    .collect();
                let mut error = format!("agent process ended ({status}): {reason}");
                if !tail.is_empty() {
                    error.push_str("; stderr: ");
                    error.push_str(&shorten(&tail.join("\n"), 1500));
                }
                let _ = reports.send(AgentReport::Exited { error });
            }
        }
    }

    async fn connect(
        self,
        transport: impl agent_client_protocol::ConnectTo<Client> + 'static,
        commands: mpsc::UnboundedReceiver<HostCommand>,
    ) -> std::result::Result<Ending, agent_client_protocol::Error> {
        let capture = self.capture.clone();
        let read_root = self.root.clone();
        let write_root = self.root.clone();
        let t_create = self.terminals.clone();
        let t_output = self.terminals.clone();
        let t_wait = self.terminals.clone();
        let t_kill = self.terminals.clone();
        let t_release = self.terminals.clone();
        Client
            .v1()
            .name("kiln-node")
            .on_receive_notification(
                async move |message: UntypedMessage, _cx| {
                    if message.method == "session/update" {
                        capture.lock().await.apply_raw(&message.params).await;
                    } else {
                        tracing::debug!(method = %message.method, "agent notification ignored");
                    }
                    Ok(())
                },
                agent_client_protocol::on_receive_notification!(),
            )
            .on_receive_request(
                async move |request: ReadTextFileRequest, responder, _cx| {
                    match read_text(&read_root, &request) {
                        Ok(content) => responder.respond(ReadTextFileResponse::new(content)),
                        Err(message) => {
                            tracing::warn!(path = %request.path.display(), %message, "file read refused");
                            responder.respond_with_error(refusal(message))
                        }
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                async move |request: WriteTextFileRequest, responder, _cx| {
                    match write_text(&write_root, &request) {
                        Ok(()) => responder.respond(WriteTextFileResponse::new()),
                        Err(message) => {
                            tracing::warn!(path = %request.path.display(), %message, "file write refused");
                            responder.respond_with_error(refusal(message))
                        }
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                async move |request: RequestPermissionRequest, responder, _cx| {
                    responder.respond(approve(&request))
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                async move |request: CreateTerminalRequest, responder, _cx| {
                    match t_create.create(&request) {
                        Ok(id) => responder.respond(CreateTerminalResponse::new(id)),
                        Err(message) => responder.respond_with_error(refusal(message)),
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                async move |request: TerminalOutputRequest, responder, _cx| {
                    match t_output.output(&request.terminal_id.0) {
                        Ok((output, truncated, exit)) => responder.respond(
                            TerminalOutputResponse::new(output, truncated).exit_status(exit),
                        ),
                        Err(message) => responder.respond_with_error(refusal(message)),
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                async move |request: WaitForTerminalExitRequest, responder, cx: ConnectionTo<Agent>| {
                    // Waiting may take long: never hold the dispatch loop for it.
                    let terminals = t_wait.clone();
                    cx.spawn(async move {
                        match terminals.wait(&request.terminal_id.0).await {
                            Ok(exit) => responder.respond(WaitForTerminalExitResponse::new(exit)),
                            Err(message) => responder.respond_with_error(refusal(message)),
                        }
                    })
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                async move |request: KillTerminalRequest, responder, _cx| {
                    match t_kill.kill(&request.terminal_id.0).await {
                        Ok(()) => responder.respond(KillTerminalResponse::new()),
                        Err(message) => responder.respond_with_error(refusal(message)),
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                async move |request: ReleaseTerminalRequest, responder, _cx| {
                    match t_release.release(&request.terminal_id.0).await {
                        Ok(()) => responder.respond(ReleaseTerminalResponse::new()),
                        Err(message) => responder.respond_with_error(refusal(message)),
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .connect_with(transport, async move |cx: ConnectionTo<Agent>| {
                self.drive(cx, commands).await
            })
            .await
    }

    /// Initializes the agent and opens its session; `None` when the agent closed its output
    /// before answering `initialize`.
    async fn open_session(
        &self,
        cx: &ConnectionTo<Agent>,
    ) -> std::result::Result<Option<AcpSessionId>, agent_client_protocol::Error> {
        let capabilities = ClientCapabilities::new()
            .fs(FileSystemCapabilities::new()
                .read_text_file(true)
                .write_text_file(true))
            .terminal(true);
        let init = InitializeRequest::new(ProtocolVersion::V1)
            .client_capabilities(capabilities)
            .client_info(Implementation::new("kiln-node", env!("CARGO_PKG_VERSION")));
        let initialized = tokio::select! {
            r = cx.send_request(init).block_task() => r?,
            _ = cx.incoming_closed() => return Ok(None),
        };
        tracing::debug!(agent = ?initialized.agent_info, "agent initialized");
        let mut new_session = NewSessionRequest::new(self.root.path().to_path_buf());
        if let Some(chat) = self.launch.chat_session_id {
            let mut meta = serde_json::Map::new();
            meta.insert(
                "kiln".into(),
                serde_json::json!({ "chatSessionId": chat.to_string() }),
            );
            new_session = new_session.meta(meta);
        }
        let session = cx.send_request(new_session).block_task().await?;
        Ok(Some(session.session_id))
    }

    /// The session's foreground: initialize, open the session, then run prompts one turn
    /// at a time while listening for cancel and stop. Prompts and cancels sent while the
    /// agent starts wait for its session; a stop does not (an agent slow to start is
    /// stopped at once, with its process group).
    async fn drive(
        self,
        cx: ConnectionTo<Agent>,
        mut commands: mpsc::UnboundedReceiver<HostCommand>,
    ) -> std::result::Result<Ending, agent_client_protocol::Error> {
        let mut early = VecDeque::new();
        let opened = {
            let opening = self.open_session(&cx);
            tokio::pin!(opening);
            loop {
                tokio::select! {
                    opened = &mut opening => break opened?,
                    command = commands.recv() => match command {
                        Some(HostCommand::Stop) | None => return Ok(Ending::Stopped),
                        Some(command) => early.push_back(command),
                    },
                }
            }
        };
        let Some(acp_session) = opened else {
            return Ok(Ending::Crashed("closed before initialize".into()));
        };
        tracing::info!(acp_session = %acp_session.0, chat_session = ?self.launch.chat_session_id, "agent session opened");
        let _ = self.reports.send(AgentReport::Started {
            acp_session_id: acp_session.0.to_string(),
        });
        let mut commands = futures::stream::iter(early)
            .chain(futures::stream::poll_fn(move |cx| commands.poll_recv(cx)));

        let mut queue: VecDeque<(MessageId, String)> = VecDeque::new();
        let mut inflight: Option<
            BoxFuture<'static, std::result::Result<PromptResponse, agent_client_protocol::Error>>,
        > = None;
        let mut cancel_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            if inflight.is_none()
                && let Some((id, text)) = queue.pop_front()
            {
                self.capture.lock().await.user_prompt(id, &text).await;
                let request = PromptRequest::new(
                    acp_session.clone(),
                    vec![ContentBlock::Text(TextContent::new(text))],
                );
                inflight = Some(Box::pin(cx.send_request(request).block_task()));
            }
            tokio::select! {
                command = commands.next() => match command {
                    Some(HostCommand::Prompt { id, text }) => queue.push_back((id, text)),
                    Some(HostCommand::Cancel) => {
                        queue.clear();
                        if inflight.is_some() {
                            cx.send_notification(CancelNotification::new(acp_session.clone()))?;
                            cancel_deadline = Some(Box::pin(tokio::time::sleep(self.launch.cancel_grace)));
                        } else {
                            let summary = self.capture.lock().await.finish_turn().await;
                            let _ = self.reports.send(AgentReport::TurnEnded { stop: StopKind::Cancelled, summary });
                        }
                    }
                    Some(HostCommand::Stop) | None => return Ok(Ending::Stopped),
                },
                result = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    let was_cancelled = cancel_deadline.take().is_some();
                    let summary = self.capture.lock().await.finish_turn().await;
                    match result {
                        Ok(response) => {
                            let stop = match response.stop_reason {
                                StopReason::EndTurn => StopKind::EndTurn,
                                StopReason::Cancelled => StopKind::Cancelled,
                                StopReason::Refusal => StopKind::Refusal,
                                other => StopKind::Other(
                                    serde_json::to_value(other).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| format!("{other:?}")),
                                ),
                            };
                            let _ = self.reports.send(AgentReport::TurnEnded { stop, summary });
                        }
                        Err(e) if agent_client_protocol::is_incoming_transport_closed(&e)
                            || agent_client_protocol::is_connection_terminated(&e) || cx.is_incoming_closed() => {
                            return Ok(Ending::Crashed(format!("the prompt was interrupted: {}", e.message)));
                        }
                        Err(e) if was_cancelled => {
                            tracing::debug!(error = %e.message, "cancelled prompt ended with an error");
                            let _ = self.reports.send(AgentReport::TurnEnded { stop: StopKind::Cancelled, summary });
                        }
                        Err(e) => {
                            let mut error = e.message.clone();
                            if let Some(data) = &e.data {
                                error.push_str(&format!(" ({data})"));
                            }
                            let _ = self.reports.send(AgentReport::TurnFailed { error });
                        }
                    }
                }
                () = async { cancel_deadline.as_mut().expect("guarded").await }, if cancel_deadline.is_some() => {
                    tracing::warn!("the agent did not end its turn after session/cancel; stopping it");
                    return Ok(Ending::CancelIgnored);
                }
                () = cx.incoming_closed(), if inflight.is_none() => {
                    return Ok(Ending::Crashed("the agent closed its output".into()));
                }
            }
        }
    }
}

/// Logs the agent's stderr (known secrets redacted) and keeps its last lines for the error
/// of a crash.
async fn collect_stderr(
    stderr: tokio::process::ChildStderr,
    tail: Arc<StdMutex<VecDeque<String>>>,
    redactor: crate::redact::Redactor,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = redactor.redact(&line);
        tracing::debug!(target: "kiln_node::agent_stderr", "{line}");
        let mut tail = tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}
