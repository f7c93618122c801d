//! One task per workspace: checkout, agent, turns, completion, destroy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kiln_core::protocol::{Prompt, WorkspaceEvent};
use kiln_core::secret::Secret;
use kiln_core::{ChatMessage, MessageId, Role};
use tokio::sync::{mpsc, oneshot};

use super::record::{PendingCompletion, RecordStatus, TurnPrompt, WorkspaceRecord};
use super::resume::{
    LATE_PROMPT_NOTICE, TurnRecorder, continuation_prompt, restart_failure, restart_notice,
};
use super::{NodeShared, git};
use crate::acp::{AgentHost, AgentLaunch, AgentReport, SessionCapture, StopKind};
use crate::credentials::{GitCredential, http_origin};
use crate::error::{NodeError, Result};
use crate::recorder::MessageRecorder;
use crate::redact::Redactor;
use crate::routes::RouteSpec;

/// How many times a restarted workspace asks the control plane for its git token while the
/// control plane is unreachable (0.5 s, then 1 s apart) before the git command fails.
const GIT_TOKEN_ATTEMPTS: u32 = 3;

/// What the node asks of a workspace.
#[derive(Debug)]
pub(crate) enum WorkspaceCommand {
    Prompt(Prompt),
    Cancel,
    Destroy(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct WorkspaceActor {
    pub shared: Arc<NodeShared>,
    pub dir: PathBuf,
    pub record: WorkspaceRecord,
    /// The project's git token, for clone and push (memory only; after a restart, asked
    /// again of the control plane when first needed).
    pub git_credential: Option<GitCredential>,
    /// The secret values redacted from what the agent says.
    pub redactor: Redactor,
    pub agent_running: Arc<AtomicBool>,
    pub commands: mpsc::UnboundedReceiver<WorkspaceCommand>,
    pub recorder: Option<Arc<dyn MessageRecorder>>,
    pub host: Option<AgentHost>,
    pub reports_tx: mpsc::UnboundedSender<AgentReport>,
    pub reports: mpsc::UnboundedReceiver<AgentReport>,
    /// The ids of the user messages the agent's session recorded (its prompts as sent).
    pub recorded_tx: mpsc::UnboundedSender<MessageId>,
    pub recorded: mpsc::UnboundedReceiver<MessageId>,
    /// A terminal event was already sent for the current turn (so a crash after it is
    /// not reported twice).
    pub turn_reported: bool,
    /// `agent_started` was reported (once per workspace: when its first ACP session opened).
    pub started_reported: bool,
}

impl WorkspaceActor {
    fn checkout(&self) -> PathBuf {
        self.dir.join("checkout")
    }

    fn id(&self) -> kiln_core::WorkspaceId {
        self.record.workspace_id
    }

    fn report(&self, event: WorkspaceEvent) {
        self.shared.events.report(event);
    }

    fn save(&self) {
        if let Err(e) = self.record.save(&self.dir) {
            tracing::error!(error = %e, workspace = %self.id(), "workspace record not saved");
        }
    }

    fn set_status(&mut self, status: RecordStatus) {
        self.record.status = status;
        self.save();
    }

    async fn open_route(&mut self) -> Result<()> {
        if self.recorder.is_none() && self.record.project_id.is_some() {
            let recorder = self
                .shared
                .routes
                .open_route(&RouteSpec {
                    workspace_id: self.id(),
                    project_id: self.record.project_id,
                    session_id: self.record.session_id,
                    callback_token: self.record.callback_token.clone(),
                })
                .await?;
            self.recorder = Some(recorder);
        }
        Ok(())
    }

    /// The git credential for a clone or push: the one in memory, else (a workspace a
    /// restarted node found on disk) its token asked again of the control plane, kept in
    /// memory only and added to the redactor. `Ok(None)`: the workspace has no token. The
    /// error says why the token could not be had (it never holds the token).
    async fn ensure_git_credential(
        &mut self,
    ) -> std::result::Result<Option<GitCredential>, String> {
        if self.git_credential.is_some() {
            return Ok(self.git_credential.clone());
        }
        let wanted = match self.record.git_token_given {
            Some(given) => given,
            // Written by an earlier kiln-node, which did not say: only http(s) can use one.
            None => http_origin(&self.record.repository_url).is_some(),
        };
        if !wanted {
            return Ok(None);
        }
        match self.fetch_git_token().await {
            Ok(token) => {
                let config = &self.shared.config;
                self.redactor = super::redactor(config, &self.record, Some(&token));
                self.git_credential = super::git_credential(config, &self.record, Some(token));
                if self.record.git_token_given.is_none() {
                    self.record.git_token_given = Some(true);
                    self.save();
                }
                tracing::info!(workspace = %self.id(), "git token fetched again from the control plane");
                Ok(self.git_credential.clone())
            }
            Err(NodeError::Rejected { status: 404, .. })
                if self.record.git_token_given.is_none() =>
            {
                self.record.git_token_given = Some(false);
                self.save();
                Ok(None)
            }
            Err(e) if self.record.git_token_given.is_none() => {
                tracing::warn!(workspace = %self.id(), error = %e, "going without a git token (the control plane was not reached)");
                Ok(None)
            }
            Err(e) => Err(format!(
                "the project's git token could not be fetched again from the control plane after kiln-node restarted: {e}"
            )),
        }
    }

    /// Before the agent of a workspace a restarted node found starts: its git token back
    /// first, so the agent's words are redacted of it from the start. Without it the agent
    /// still starts (the push asks again).
    async fn token_before_agent_starts(&mut self) {
        if let Err(e) = self.ensure_git_credential().await {
            tracing::warn!(workspace = %self.id(), error = %e, "the agent starts without the git token (the push asks again)");
        }
    }

    /// Asks the control plane for the workspace's git token, again while it is unreachable.
    async fn fetch_git_token(&self) -> Result<Secret> {
        let control = &self.shared.control;
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match control.git_token(self.id()).await {
                Err(e) if e.is_retryable() && attempt < GIT_TOKEN_ATTEMPTS => {
                    tracing::debug!(workspace = %self.id(), error = %e, "git token not fetched yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Checks out the repository on the task branch (a fresh workspace).
    async fn prepare(&mut self) -> Result<()> {
        self.open_route().await?;
        let credential = self
            .ensure_git_credential()
            .await
            .map_err(|message| NodeError::Git {
                command: "clone".into(),
                message,
            })?;
        let checkout = self.checkout();
        if checkout.exists() {
            // A previous attempt died half-way: start the checkout over.
            std::fs::remove_dir_all(&checkout)
                .map_err(|e| crate::NodeError::io("removing a partial checkout", e))?;
        }
        git::clone_or_init(&self.record.repository_url, &checkout, credential.as_ref()).await?;
        if let Some(base) = self.record.requested_branch.clone() {
            let branch = git::create_task_branch(&checkout, &base).await?;
            if branch != base {
                tracing::info!(%base, %branch, "task branch existed; using a suffix");
            }
            self.record.branch = Some(branch);
        }
        self.set_status(RecordStatus::Running);
        Ok(())
    }

    /// Starts the agent process; the user message of the prompt `unrecorded` (a turn's
    /// continuation after a restart) is kept out of the chat.
    fn start_agent(&mut self, unrecorded: Option<MessageId>) -> Result<()> {
        let recorder: Arc<dyn MessageRecorder> = Arc::new(TurnRecorder {
            inner: self
                .recorder
                .clone()
                .unwrap_or_else(|| Arc::new(crate::recorder::MemoryRecorder::new())),
            skipped: unrecorded,
            recorded: self.recorded_tx.clone(),
        });
        let capture = SessionCapture::new(
            self.id(),
            self.record.project_id.and(self.record.session_id),
            recorder,
            self.shared.clock.clone(),
        )
        .with_redactor(self.redactor.clone())
        .with_root(
            self.checkout()
                .canonicalize()
                .unwrap_or_else(|_| self.checkout()),
        );
        let capture = match &self.shared.deltas {
            Some(deltas) => capture.with_deltas(deltas.clone()),
            None => capture,
        };
        let mut env: BTreeMap<String, String> = self.shared.config.agent_env.clone();
        if let Some(project) = self.record.project_id {
            env.insert("PROJECT_ID".into(), project.to_string());
        }
        if let Some(session) = self.record.session_id {
            env.insert("CHAT_SESSION_ID".into(), session.to_string());
        }
        env.insert("KILN_WORKSPACE_ID".into(), self.id().to_string());
        let launch = AgentLaunch {
            command: self
                .shared
                .config
                .agent_command_for(self.record.agent_hint.as_deref())
                .to_owned(),
            cwd: self.checkout(),
            env,
            chat_session_id: self.record.session_id,
            cancel_grace: self.shared.config.cancel_grace,
        };
        let host = AgentHost::start(launch, capture, self.reports_tx.clone())?;
        self.host = Some(host);
        self.agent_running.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn fail(&mut self, error: String) {
        // Agent errors and their stderr can carry what the agent came across.
        let error = self.redactor.redact(&error);
        tracing::warn!(workspace = %self.id(), %error, "workspace failed");
        let event = WorkspaceEvent::Failed {
            workspace_id: self.id(),
            error,
        };
        self.finish(RecordStatus::Failed, event);
    }

    /// Ends the turn with a terminal event: remembered (to be sent again after a restart)
    /// before it is reported.
    fn finish(&mut self, status: RecordStatus, event: WorkspaceEvent) {
        self.turn_reported = true;
        self.record.turn_active = false;
        self.record.turn_prompts.clear();
        self.record.turn_resumes = 0;
        self.record.cancel_requested = false;
        self.record.completion_pending = None;
        self.record.last_event = Some(event.clone());
        self.set_status(status);
        self.report(event);
    }

    /// Runs a freshly created workspace: checkout, agent, first prompt, then the loop.
    pub async fn run_new(mut self, prompt: Option<Prompt>) {
        if let Some(p) = &prompt {
            self.record.topic = Some(kiln_core::model::topic_from_message(&p.text));
        }
        if let Err(e) = self.prepare().await {
            self.fail(format!("workspace setup failed: {e}"));
        } else if let Err(e) = self.start_agent(None) {
            self.fail(format!("the agent could not start: {e}"));
        } else if let Some(p) = prompt {
            // Queued by the host until the agent's session is open.
            self.send_prompt(p).await;
        }
        self.run().await;
    }

    /// Runs a workspace found on disk after a restart: its route reopens (undelivered
    /// messages go out), a task whose completion the restart interrupted completes, a turn
    /// the restart interrupted is continued (or, past the limit, failed), and the agent
    /// starts again with the next prompt.
    pub async fn run_resumed(mut self) {
        if let Err(e) = self.open_route().await {
            tracing::error!(error = %e, workspace = %self.id(), "route not reopened");
        }
        let mut early = Vec::new();
        if let Some(completion) = self.record.completion_pending.clone() {
            // The task's last turn had ended; the node stopped before its completion was
            // reported (committing, pushing). Done again: a commit with nothing new is
            // skipped, and pushing what the remote has already succeeds.
            tracing::info!(workspace = %self.id(), "completing the task whose completion the restart interrupted");
            self.complete(completion).await;
        } else if self.record.turn_active {
            early = self.continue_interrupted_turn().await;
        } else if let Some(event) = self.record.last_event.clone() {
            self.report(event);
        }
        for command in early {
            if !self.on_command(command).await {
                return;
            }
        }
        self.run().await;
    }

    /// Continues the turn the node's restart interrupted: a system message in the chat, the
    /// agent started again (its git token asked again first, as for any prompt after a
    /// restart), the continuation prompt, then the prompts that were queued behind it.
    /// A cancel asked for before the restart, or a cancel or destroy that arrived since,
    /// wins: the turn is not continued. Returns the commands that arrived meanwhile, to be
    /// executed next.
    async fn continue_interrupted_turn(&mut self) -> Vec<WorkspaceCommand> {
        let limit = self.shared.config.resume_interrupted_turns;
        let restarts = self.record.turn_resumes + 1;
        self.record_unsent_prompt().await;
        if self.record.cancel_requested {
            let event = WorkspaceEvent::Cancelled {
                workspace_id: self.id(),
            };
            self.finish(RecordStatus::Cancelled, event);
            return Vec::new();
        }
        let Some(interrupted) = self.record.turn_prompts.first().cloned() else {
            // Written by a kiln-node that did not keep the prompt: nothing to continue.
            self.fail(restart_failure(restarts));
            return Vec::new();
        };
        if self.record.turn_resumes >= limit {
            self.fail(restart_failure(restarts));
            return Vec::new();
        }
        self.token_before_agent_starts().await;
        let early = self.arrived_commands();
        if early.iter().any(|c| {
            matches!(
                c,
                WorkspaceCommand::Cancel
                    | WorkspaceCommand::Destroy(_)
                    | WorkspaceCommand::Shutdown(_)
            )
        }) {
            tracing::info!(workspace = %self.id(), "the interrupted turn is not continued: a cancel, destroy or shutdown came first");
            return early;
        }
        // Counted before the agent starts: a turn that crashes the host every time ends.
        self.record.turn_resumes = restarts;
        self.save();
        tracing::info!(workspace = %self.id(), attempt = restarts, limit, "continuing the turn the restart interrupted");
        self.record_notice(restart_notice(restarts, limit)).await;
        // Reported again when the new session opens: the report of the first one may have
        // died with the node (the control plane ignores a repeated one).
        self.started_reported = false;
        let continuation = MessageId::new();
        if let Err(e) = self.start_agent(Some(continuation)) {
            self.fail(format!("the agent could not start: {e}"));
            return early;
        }
        self.turn_reported = false;
        if let Some(host) = &self.host {
            host.prompt(continuation, continuation_prompt(&interrupted.text));
            for queued in &self.record.turn_prompts[1..] {
                host.prompt(queued.message_id, queued.text.clone());
            }
        }
        early
    }

    /// Records the user message of the interrupted turn's prompt when the agent never got it
    /// (the node stopped before the agent's session opened): the agent host records a
    /// prompt's message only when it sends it, and the continuation is not the user's.
    async fn record_unsent_prompt(&mut self) {
        let Some(prompt) = self.record.turn_prompts.first().filter(|p| !p.recorded) else {
            return;
        };
        let (Some(recorder), Some(session_id)) = (
            &self.recorder,
            self.record.project_id.and(self.record.session_id),
        ) else {
            return;
        };
        let message = ChatMessage {
            id: prompt.message_id,
            session_id,
            role: Role::User,
            content: self.redactor.redact(&prompt.text),
            tool: None,
            seq: None,
            created_at: self.shared.clock.now(),
        };
        match recorder.record(message).await {
            Ok(()) => self.prompt_recorded(prompt.message_id),
            Err(e) => {
                tracing::error!(error = %e, workspace = %self.id(), "the prompt's user message could not be recorded");
            }
        }
    }

    /// Notes that the user message of prompt `id` is in the chat.
    fn prompt_recorded(&mut self, id: MessageId) {
        if let Some(prompt) = self
            .record
            .turn_prompts
            .iter_mut()
            .find(|p| p.message_id == id && !p.recorded)
        {
            prompt.recorded = true;
            self.save();
        }
    }

    /// The commands already waiting, taken off the queue.
    fn arrived_commands(&mut self) -> Vec<WorkspaceCommand> {
        let mut arrived = Vec::new();
        while let Ok(command) = self.commands.try_recv() {
            arrived.push(command);
        }
        arrived
    }

    /// Records a system message in the workspace's chat, through the outbox like the
    /// agent's own (nothing when the workspace has no chat session).
    async fn record_notice(&self, text: String) {
        let (Some(recorder), Some(session_id)) = (
            &self.recorder,
            self.record.project_id.and(self.record.session_id),
        ) else {
            return;
        };
        let message = ChatMessage {
            id: MessageId::new(),
            session_id,
            role: Role::System,
            content: text,
            tool: None,
            seq: None,
            created_at: self.shared.clock.now(),
        };
        if let Err(e) = recorder.record(message).await {
            tracing::error!(error = %e, workspace = %self.id(), "a notice could not be recorded");
        }
    }

    /// Takes a prompt: kept in the record with its id and text (saved with the id taken,
    /// before anything else can wait), then queued at the agent host, which starts first if
    /// need be.
    async fn send_prompt(&mut self, prompt: Prompt) {
        if !self.record.take_prompt(prompt.message_id) {
            tracing::debug!(workspace = %self.id(), message = %prompt.message_id, "prompt taken already; dropped");
            return;
        }
        if self.record.task_id.is_some() && self.record.status == RecordStatus::Completed {
            // Too late to run: the work is committed and pushed, the workspace is about to
            // go. The id is kept, so a repeat of the prompt is not told twice.
            self.save();
            tracing::info!(workspace = %self.id(), message = %prompt.message_id, "prompt after the task completed; not run");
            self.record_notice(LATE_PROMPT_NOTICE.into()).await;
            return;
        }
        if self.record.topic.is_none() {
            self.record.topic = Some(kiln_core::model::topic_from_message(&prompt.text));
        }
        self.turn_reported = false;
        self.record.turn_active = true;
        self.record.turn_prompts.push(TurnPrompt {
            message_id: prompt.message_id,
            text: prompt.text.clone(),
            recorded: false,
        });
        self.set_status(RecordStatus::Running);
        if self.host.is_none() {
            self.token_before_agent_starts().await;
            if let Err(e) = self.start_agent(None) {
                self.fail(format!("the agent could not start: {e}"));
                return;
            }
        }
        if let Some(host) = &self.host {
            host.prompt(prompt.message_id, prompt.text);
        }
    }

    async fn run(mut self) {
        loop {
            tokio::select! {
                // A command that arrived is taken before the report of a turn's end: a
                // follow-up the node took while the turn ran runs before the task completes.
                biased;
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        self.stop_agent().await;
                        return;
                    };
                    if !self.on_command(command).await {
                        return;
                    }
                }
                Some(report) = self.reports.recv() => self.on_report(report).await,
                Some(id) = self.recorded.recv() => self.prompt_recorded(id),
            }
        }
    }

    /// Executes one command; `false` when the workspace's task ends (destroyed, stopped).
    async fn on_command(&mut self, command: WorkspaceCommand) -> bool {
        match command {
            WorkspaceCommand::Prompt(p) => {
                let id = p.message_id;
                self.send_prompt(p).await;
                // The record holds it now (or dropped it as a repeat).
                super::inbox::remove(&self.dir, id);
            }
            WorkspaceCommand::Cancel => match &self.host {
                Some(host) => {
                    // Remembered, so a restart before the agent ends the turn does not
                    // continue it.
                    host.cancel();
                    if self.record.turn_active {
                        self.record.cancel_requested = true;
                        self.save();
                    }
                }
                None => {
                    let event = WorkspaceEvent::Cancelled {
                        workspace_id: self.id(),
                    };
                    self.finish(RecordStatus::Cancelled, event);
                }
            },
            WorkspaceCommand::Destroy(done) => {
                self.destroy().await;
                let _ = done.send(());
                return false;
            }
            WorkspaceCommand::Shutdown(done) => {
                self.stop_agent().await;
                // What the stopped session recorded is noted before the node goes, so a
                // restart does not record it again.
                while let Ok(id) = self.recorded.try_recv() {
                    self.prompt_recorded(id);
                }
                let _ = done.send(());
                return false;
            }
        }
        true
    }

    async fn stop_agent(&mut self) {
        if let Some(host) = self.host.take() {
            host.stop().await;
        }
        self.agent_running.store(false, Ordering::Relaxed);
    }

    async fn on_report(&mut self, report: AgentReport) {
        match report {
            AgentReport::Started { acp_session_id } => {
                self.record.acp_session_id = Some(acp_session_id);
                self.save();
                if !self.started_reported {
                    self.started_reported = true;
                    self.report(WorkspaceEvent::AgentStarted {
                        workspace_id: self.id(),
                        branch: self.record.branch.clone(),
                    });
                }
            }
            AgentReport::TurnEnded { stop, summary } => match stop {
                StopKind::EndTurn => {
                    let completion = PendingCompletion {
                        summary: summary.summary,
                        pr_url: summary.pr_url,
                    };
                    if let Some(completion) = self.end_turn(completion) {
                        self.complete(completion).await;
                    }
                }
                StopKind::Cancelled => {
                    let event = WorkspaceEvent::Cancelled {
                        workspace_id: self.id(),
                    };
                    self.finish(RecordStatus::Cancelled, event);
                }
                StopKind::Refusal => self.fail("the agent refused the task".into()),
                StopKind::Other(reason) => self.fail(format!("the agent stopped: {reason}")),
            },
            AgentReport::TurnFailed { error } => self.fail(format!("the agent failed: {error}")),
            AgentReport::Exited { error } => {
                self.host = None;
                self.agent_running.store(false, Ordering::Relaxed);
                if self.turn_reported || self.record.status != RecordStatus::Running {
                    tracing::info!(workspace = %self.id(), %error, "agent process ended");
                } else {
                    self.fail(error);
                }
            }
        }
    }

    /// A turn ended normally: the next queued prompt's turn, if any, is under way now (the
    /// agent host sent it). After a cancel the host dropped its queue, so nothing follows.
    ///
    /// A task finishes when the agent has no more prompts (the follow-ups the user sent
    /// during its turns run first; a cancel drops them): then the completion, returned, is
    /// saved in the same write as the turn's end, so a node stopped before the completion is
    /// reported completes the task after its restart instead of waiting for a prompt.
    fn end_turn(&mut self, completion: PendingCompletion) -> Option<PendingCompletion> {
        tracing::debug!(workspace = %self.id(), "turn ended");
        if self.record.cancel_requested {
            self.record.turn_prompts.clear();
            self.record.cancel_requested = false;
        } else if !self.record.turn_prompts.is_empty() {
            self.record.turn_prompts.remove(0);
        }
        self.record.turn_resumes = 0;
        self.record.turn_active = !self.record.turn_prompts.is_empty();
        let completes = self.record.task_id.is_some() && !self.record.turn_active;
        self.record.completion_pending = completes.then_some(completion);
        self.save();
        self.record.completion_pending.clone()
    }

    /// Commits everything on the task branch, pushes it and reports the task completed.
    /// Safe to run again for the same work (after a restart): with nothing new to commit no
    /// commit is made, and pushing a branch the remote already has succeeds.
    async fn complete(&mut self, completion: PendingCompletion) {
        self.turn_reported = true;
        let checkout = self.checkout();
        let topic = self
            .record
            .topic
            .clone()
            .unwrap_or_else(|| "agent changes".into());
        let mut message = format!("kiln: {topic}");
        if let Some(task) = self.record.task_id {
            message.push_str(&format!("\n\nTask: {task}"));
        }
        let mut warning = None;
        match git::commit_all(&checkout, &message).await {
            Ok(committed) => {
                tracing::info!(workspace = %self.id(), committed, "work committed");
                match (git::has_origin(&checkout).await, self.record.branch.clone()) {
                    (Ok(true), Some(branch)) => {
                        let credential = match self.ensure_git_credential().await {
                            Ok(credential) => credential,
                            Err(e) => {
                                // Without its token the push would be refused: the task failed.
                                self.stop_agent().await;
                                self.fail(format!("git push not attempted: {e}"));
                                return;
                            }
                        };
                        let pushed = git::push(
                            &checkout,
                            &self.record.repository_url,
                            &branch,
                            credential.as_ref(),
                        )
                        .await;
                        match pushed {
                            Ok(()) => {}
                            Err(e @ NodeError::GitAuth { .. }) => {
                                // The work cannot reach the repository: the task failed.
                                self.stop_agent().await;
                                self.fail(e.to_string());
                                return;
                            }
                            Err(e) => warning = Some(format!("push failed: {e}")),
                        }
                    }
                    (Ok(true), None) => warning = Some("no task branch to push".into()),
                    (Ok(false), _) => {
                        warning = Some("the repository has no remote to push to".into())
                    }
                    (Err(e), _) => warning = Some(format!("push skipped: {e}")),
                }
            }
            Err(e) => warning = Some(format!("commit failed: {e}")),
        }
        if let Some(w) = &warning {
            tracing::warn!(workspace = %self.id(), warning = %w, "completed with a warning");
        }
        self.stop_agent().await;
        let event = WorkspaceEvent::Completed {
            workspace_id: self.id(),
            branch: self.record.branch.clone(),
            pr_url: completion.pr_url,
            summary: completion.summary,
            warning,
        };
        self.finish(RecordStatus::Completed, event);
    }

    async fn destroy(&mut self) {
        self.stop_agent().await;
        let drain = self.shared.config.destroy_drain;
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            let pending = self.shared.routes.pending(self.id()).await;
            if pending == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(workspace = %self.id(), pending, "destroying with undelivered messages");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.shared.routes.close_route(self.id()).await;
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(error = %e, dir = %self.dir.display(), "workspace directory not removed");
        }
        self.report(WorkspaceEvent::Destroyed {
            workspace_id: self.id(),
        });
    }
}
