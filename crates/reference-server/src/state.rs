//! The shared state of every handler, and the boundary to the task runner.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_core::protocol::WorkspaceEvent;
use kiln_core::{
    Change, ChatSession, LifecycleClock, NodeId, ProjectId, SessionId, Store, StoreEvent, Task,
    TaskId, UserId,
};

use crate::commands::CommandQueues;
use crate::error::ApiError;
use crate::live::LiveHub;
use crate::tokens::TokenSigner;

/// What the API asks of the task runner, which owns every transition of a task's run:
/// acquiring nodes, starting and stopping workspaces, and applying what nodes report.
/// [`crate::runner::PoolDriver`] is the real one.
#[async_trait]
pub trait TaskDriver: Send + Sync + fmt::Debug + 'static {
    /// Runs a draft or ready task (queued at once; the run goes on in the background).
    async fn run(&self, task: TaskId) -> Result<Task, ApiError>;
    /// Runs a failed or cancelled task again.
    async fn rerun(&self, task: TaskId) -> Result<Task, ApiError>;
    /// Cancels a task; its agent is stopped and its workspace kept.
    async fn cancel(&self, task: TaskId) -> Result<Task, ApiError>;
    /// Discards the workspace a failed or cancelled task kept: destroyed on its node, which
    /// is released once empty (see [`kiln_pool::TaskRunner::discard_workspace`]).
    async fn discard_workspace(
        &self,
        workspace: kiln_core::WorkspaceId,
    ) -> Result<kiln_core::Workspace, ApiError>;
    /// Discards every workspace `task` kept (before it or its project is deleted).
    async fn discard_kept_workspaces(&self, task: TaskId) -> Result<(), ApiError>;
    /// Opens a chat without a task (the session is returned at once; its node and workspace
    /// come in the background).
    async fn open_chat(&self, chat: kiln_pool::NewChat) -> Result<ChatSession, ApiError>;
    /// Closes a chat without a task: its workspace is destroyed and its node released.
    async fn close_chat(&self, session: SessionId) -> Result<ChatSession, ApiError>;
    /// Starts a task its creator stored already `queued` (Run Now in one write).
    async fn run_queued(&self, task: TaskId) -> Result<Task, ApiError>;
    /// A node's agent host said hello (it is ready).
    async fn node_ready(&self, node: NodeId) -> Result<(), ApiError>;
    /// A node listed the workspaces it has (in its hello): settle the store against them.
    async fn node_workspaces(
        &self,
        node: NodeId,
        workspaces: &[kiln_core::WorkspaceId],
    ) -> Result<(), ApiError>;
    /// A node listed the workspaces it has in a heartbeat: settle the store against them,
    /// only for workspaces certainly gone (see [`kiln_pool::TaskRunner::reconcile_heartbeat`]).
    async fn node_heartbeat_workspaces(
        &self,
        node: NodeId,
        workspaces: &[kiln_core::WorkspaceId],
    ) -> Result<(), ApiError>;
    /// A node reported what happened to one of its workspaces.
    async fn workspace_event(&self, node: NodeId, event: &WorkspaceEvent) -> Result<(), ApiError>;
}

/// Settings the handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The URL browsers and nodes reach this server at.
    pub public_url: String,
    /// Lifetime of a browser session cookie.
    pub session_ttl: Duration,
    /// Lifetime of callback tokens.
    pub callback_token_ttl: Duration,
    /// Whether session cookies carry `Secure` (the public URL is https).
    pub secure_cookies: bool,
    /// The node providers projects may choose, the default (new projects') first.
    pub providers: Vec<String>,
    /// The `kiln-node` file served to nodes (none: the one next to the running executable).
    pub node_binary: Option<std::path::PathBuf>,
}

impl Settings {
    /// The provider of a project created without one.
    #[must_use]
    pub fn default_provider(&self) -> &str {
        self.providers.first().map_or("local", String::as_str)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            callback_token_ttl: Duration::from_secs(24 * 3600),
            secure_cookies: false,
            providers: vec!["local".into()],
            node_binary: None,
        }
    }
}

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    /// Persistence and the change feed.
    pub store: Arc<dyn Store>,
    /// Time.
    pub clock: Arc<dyn LifecycleClock>,
    /// Callback token signer.
    pub signer: TokenSigner,
    /// Node command queues.
    pub commands: Arc<CommandQueues>,
    /// Live deltas.
    pub live: Arc<LiveHub>,
    /// The task runner.
    pub driver: Arc<dyn TaskDriver>,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Sealing, opening and checking of stored credentials.
    pub credentials: Arc<crate::credentials::Credentials>,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Announces a change on the feed; a failure is logged (viewers catch up on reload).
    pub async fn announce(&self, owner: UserId, project_id: Option<ProjectId>, change: Change) {
        let event = StoreEvent {
            owner,
            project_id,
            change,
        };
        if let Err(err) = self.store.publish(&event).await {
            tracing::warn!(%err, ?event, "could not publish a change");
        }
    }

    /// Announces a task change.
    pub async fn announce_task(&self, task: &Task) {
        self.announce(
            task.owner,
            Some(task.project_id),
            Change::Task { task_id: task.id },
        )
        .await;
    }

    /// The callback token lifetime as a chrono duration.
    #[must_use]
    pub fn token_expiry(&self) -> kiln_core::Timestamp {
        kiln_core::clock::add_duration(self.clock.now(), self.settings.callback_token_ttl)
    }

    /// Reads a task of `owner`, or 404.
    pub async fn owned_task(&self, owner: UserId, id: TaskId) -> Result<Task, ApiError> {
        match self.store.get_task(id).await? {
            Some(t) if t.owner == owner => Ok(t),
            _ => Err(ApiError::not_found("task")),
        }
    }

    /// Reads a project of `owner`, or 404.
    pub async fn owned_project(
        &self,
        owner: UserId,
        id: ProjectId,
    ) -> Result<kiln_core::Project, ApiError> {
        match self.store.get_project(id).await? {
            Some(p) if p.owner == owner => Ok(p),
            _ => Err(ApiError::not_found("project")),
        }
    }
}
