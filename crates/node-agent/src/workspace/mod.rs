//! Workspaces: a directory per workspace under the node's data directory, holding the
//! repository checkout (`checkout/`, on the task branch) and the record that lets a
//! restarted host find it (`workspace.json`). Each workspace is driven by its own task, so
//! a slow clone never holds up the node's command loop.
//!
//! A project's git token arrives with the create command and stays in the workspace's
//! memory only (the record says only that there was one): clone and push get it through the
//! credential helper ([`crate::credentials`]), and the capture redacts it, and the node's and
//! the workspace's callback tokens, from everything the agent says ([`crate::redact`]). A
//! workspace a restarted node finds on disk asks the control plane for its token again
//! before its agent starts or its branch is pushed.
//!
//! A task's workspace completes (commits, pushes, reports `completed`) when a turn ends and
//! no prompt waits behind it: the follow-ups the user sent while the task ran are run first,
//! each in its own turn; a cancel drops them. A follow-up that reaches the workspace after
//! the task completed is not run, and the chat says so. That decision is saved with the
//! turn's end (the record's `completionPending`), so a node stopped while it commits and
//! pushes completes the task after its restart: commit and push are done again (with
//! nothing new no second commit is made; pushing a branch the remote has succeeds).
//!
//! A prompt the node acknowledged to the control plane but its workspace has not taken yet
//! waits on disk (in the workspace's `inbox/`), so a node killed in between runs it after
//! its restart.
//!
//! A workspace whose agent was in a turn when the node stopped (crash, SIGKILL, upgrade)
//! is continued: the restarted node says so in the chat, starts the agent again in the
//! same checkout (a new ACP session; the files keep the work so far) and sends it the
//! interrupted request with a word about the restart, up to
//! [`NodeConfig::resume_interrupted_turns`] times per turn, then fails it as before. The
//! prompts taken but not yet sent to the agent (queued behind the turn) are kept in the
//! record from the moment they are taken and run after the continued turn, in order, once;
//! the user message of an interrupted prompt the agent never got (the node stopped before
//! the agent's session opened) is recorded by the restarted node.

mod actor;
pub mod git;
mod inbox;
pub mod paths;
pub mod record;
mod resume;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_core::protocol::{NodeCommand, WorkspaceEvent, WorkspaceReport};
use kiln_core::secret::Secret;
use kiln_core::{LifecycleClock, WorkspaceId};
use tokio::sync::{Mutex, mpsc, oneshot};

use actor::{WorkspaceActor, WorkspaceCommand};
use record::{RecordStatus, WorkspaceRecord};

use crate::config::NodeConfig;
use crate::control::ControlPlaneClient;
use crate::credentials::GitCredential;
use crate::events::EventReporter;
use crate::recorder::DeltaSender;
use crate::redact::Redactor;
use crate::routes::MessageRoutes;

/// What every workspace of a node shares.
#[derive(Debug)]
pub struct NodeShared {
    /// The node's settings.
    pub config: NodeConfig,
    /// Where workspace events go.
    pub events: EventReporter,
    /// Where live deltas go, if anywhere.
    pub deltas: Option<DeltaSender>,
    /// The clock for message timestamps.
    pub clock: Arc<dyn LifecycleClock>,
    /// The message routes (the outbox).
    pub routes: Arc<dyn MessageRoutes>,
    /// The node's client of the control plane (a restarted workspace asks it for its git
    /// token).
    pub control: ControlPlaneClient,
}

#[derive(Debug)]
struct Handle {
    tx: mpsc::UnboundedSender<WorkspaceCommand>,
    agent_running: Arc<AtomicBool>,
}

/// What a workspace redacts from its agent's words: the node's and the workspace's callback
/// tokens and the git token, if it has one.
fn redactor(config: &NodeConfig, record: &WorkspaceRecord, git_token: Option<&Secret>) -> Redactor {
    Redactor::new(
        [
            Some(config.callback_token.as_str()),
            Some(record.callback_token.as_str()),
            git_token.map(Secret::expose),
        ]
        .into_iter()
        .flatten(),
    )
}

/// The credential clone and push hand to git, when there is a token.
fn git_credential(
    config: &NodeConfig,
    record: &WorkspaceRecord,
    git_token: Option<Secret>,
) -> Option<GitCredential> {
    git_token
        .filter(|t| !t.is_empty())
        .map(|token| GitCredential {
            repository_url: record.repository_url.clone(),
            token,
            helper: config.git_credential_helper.clone(),
            runtime_dir: config.runtime_dir(),
        })
}

/// The workspaces of one node.
#[derive(Debug)]
pub struct Workspaces {
    shared: Arc<NodeShared>,
    handles: Mutex<HashMap<WorkspaceId, Handle>>,
}

impl Workspaces {
    /// No workspaces yet.
    #[must_use]
    pub fn new(shared: Arc<NodeShared>) -> Self {
        Self {
            shared,
            handles: Mutex::new(HashMap::new()),
        }
    }

    fn dir(&self, id: WorkspaceId) -> PathBuf {
        self.shared.config.workspaces_dir().join(id.to_string())
    }

    fn actor(
        &self,
        dir: PathBuf,
        record: WorkspaceRecord,
        git_token: Option<Secret>,
    ) -> (WorkspaceActor, Handle) {
        let config = &self.shared.config;
        let redactor = redactor(config, &record, git_token.as_ref());
        let git_credential = git_credential(config, &record, git_token);
        // A workspace found on disk had its agent start reported by the previous run.
        let started_reported = record.status != RecordStatus::Creating;
        let (tx, rx) = mpsc::unbounded_channel();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (recorded_tx, recorded) = mpsc::unbounded_channel();
        let agent_running = Arc::new(AtomicBool::new(false));
        let actor = WorkspaceActor {
            shared: self.shared.clone(),
            dir,
            record,
            git_credential,
            redactor,
            agent_running: agent_running.clone(),
            commands: rx,
            recorder: None,
            host: None,
            reports_tx,
            reports,
            recorded_tx,
            recorded,
            turn_reported: false,
            started_reported,
        };
        (actor, Handle { tx, agent_running })
    }

    /// Finds the workspaces a previous run left on disk and reopens their routes, so
    /// undelivered messages go out. Returns how many were found.
    pub async fn resume(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.shared.config.workspaces_dir()) else {
            return 0;
        };
        let mut found = 0;
        for entry in entries.flatten() {
            let dir = entry.path();
            match WorkspaceRecord::load(&dir) {
                Ok(record) if record.status == RecordStatus::Creating => {
                    // Died during the checkout: it never started; the create will come again
                    // or the control plane gives up on it.
                    tracing::info!(dir = %dir.display(), "removing a workspace whose checkout never finished");
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Ok(record) => {
                    let id = record.workspace_id;
                    // The git token is not kept on disk: the workspace asks for it again
                    // when it needs it.
                    // The prompts the previous run acknowledged that the workspace had not
                    // taken come first, in order, before any new command.
                    let waiting = inbox::waiting(&dir);
                    let (actor, handle) = self.actor(dir, record, None);
                    for prompt in waiting {
                        let _ = handle.tx.send(WorkspaceCommand::Prompt(prompt));
                    }
                    self.handles.lock().await.insert(id, handle);
                    tokio::spawn(actor.run_resumed());
                    found += 1;
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "not a workspace; skipped")
                }
            }
        }
        found
    }

    /// What heartbeats and hellos report.
    pub async fn reports(&self) -> Vec<WorkspaceReport> {
        let mut reports: Vec<WorkspaceReport> = self
            .handles
            .lock()
            .await
            .iter()
            .map(|(id, h)| WorkspaceReport {
                workspace_id: *id,
                agent_running: h.agent_running.load(Ordering::Relaxed),
            })
            .collect();
        reports.sort_by_key(|r| r.workspace_id);
        reports
    }

    /// Executes one workspace command (everything but `Shutdown`, which the node handles);
    /// `seq` is its number from the control plane. On return the command may be
    /// acknowledged: a prompt is kept on disk until its workspace takes it (the module
    /// `inbox`), so a node killed before that still runs it after its restart.
    pub async fn execute(&self, seq: u64, command: NodeCommand) {
        match command {
            NodeCommand::CreateWorkspace {
                workspace_id,
                project_id,
                session_id,
                task_id,
                repository_url,
                branch,
                prompt,
                callback_token,
                agent_hint,
                git_token,
            } => {
                let mut handles = self.handles.lock().await;
                if handles.contains_key(&workspace_id) {
                    tracing::info!(workspace = %workspace_id, "workspace exists; create ignored");
                    return;
                }
                let dir = self.dir(workspace_id);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    self.shared.events.report(WorkspaceEvent::Failed {
                        workspace_id,
                        error: format!("cannot create the workspace directory: {e}"),
                    });
                    return;
                }
                let git_token = git_token.filter(|t| !t.is_empty());
                let record = WorkspaceRecord {
                    workspace_id,
                    project_id,
                    session_id,
                    task_id,
                    repository_url,
                    requested_branch: branch,
                    branch: None,
                    callback_token,
                    git_token_given: Some(git_token.is_some()),
                    agent_hint,
                    topic: None,
                    acp_session_id: None,
                    status: RecordStatus::Creating,
                    turn_active: false,
                    turn_prompts: Vec::new(),
                    turn_resumes: 0,
                    cancel_requested: false,
                    last_event: None,
                    taken_prompts: Vec::new(),
                    completion_pending: None,
                };
                if let Err(e) = record.save(&dir) {
                    self.shared.events.report(WorkspaceEvent::Failed {
                        workspace_id,
                        error: format!("cannot write the workspace record: {e}"),
                    });
                    return;
                }
                let (actor, handle) = self.actor(dir, record, git_token);
                handles.insert(workspace_id, handle);
                tokio::spawn(actor.run_new(prompt));
            }
            NodeCommand::Prompt {
                workspace_id,
                prompt,
            } => {
                let handles = self.handles.lock().await;
                if handles.contains_key(&workspace_id)
                    && let Err(e) = inbox::put(&self.dir(workspace_id), seq, &prompt)
                {
                    tracing::error!(workspace = %workspace_id, error = %e, "prompt not kept on disk; a restart before the workspace takes it loses it");
                }
                drop(handles);
                self.send(workspace_id, WorkspaceCommand::Prompt(prompt))
                    .await;
            }
            NodeCommand::Cancel { workspace_id } => {
                self.send(workspace_id, WorkspaceCommand::Cancel).await;
            }
            NodeCommand::DestroyWorkspace { workspace_id } => {
                let handle = self.handles.lock().await.remove(&workspace_id);
                match handle {
                    Some(handle) => {
                        let (done, wait) = oneshot::channel();
                        if handle.tx.send(WorkspaceCommand::Destroy(done)).is_ok() {
                            let _ = wait.await;
                        }
                    }
                    None => {
                        // Unknown here (already destroyed): destroying is idempotent.
                        let _ = std::fs::remove_dir_all(self.dir(workspace_id));
                        self.shared
                            .events
                            .report(WorkspaceEvent::Destroyed { workspace_id });
                    }
                }
            }
            NodeCommand::Shutdown { .. } => self.shutdown().await,
        }
    }

    async fn send(&self, id: WorkspaceId, command: WorkspaceCommand) {
        let handles = self.handles.lock().await;
        match handles.get(&id) {
            Some(handle) => {
                let _ = handle.tx.send(command);
            }
            None => {
                tracing::warn!(workspace = %id, ?command, "command for an unknown workspace");
                self.shared.events.report(WorkspaceEvent::Failed {
                    workspace_id: id,
                    error: "the workspace does not exist on this node".into(),
                });
            }
        }
    }

    /// Stops every agent (keeping the workspaces on disk).
    pub async fn shutdown(&self) {
        let handles: Vec<Handle> = self.handles.lock().await.drain().map(|(_, h)| h).collect();
        for handle in handles {
            let (done, wait) = oneshot::channel();
            if handle.tx.send(WorkspaceCommand::Shutdown(done)).is_ok() {
                let _ = wait.await;
            }
        }
    }
}
