//! The server's side of the task runner: [`PoolDriver`] (the [`TaskDriver`] over
//! [`kiln_pool::TaskRunner`]), [`NodeController`] (the pool's [`WorkspaceController`] over the
//! node protocol's command queues) and [`TokenBootstrap`] (each new node's URL and token).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::http::StatusCode;
use kiln_core::protocol::{NodeCommand, Prompt, WorkspaceEvent};
use kiln_core::{
    ChatSession, LifecycleClock, Node, NodeBootstrap, NodeId, SessionId, Store, Task, TaskId,
    WorkspaceId,
};
use kiln_pool::{
    ControllerError, DestroyProgress, NodeBootstrapper, TaskRunner, WorkspaceController,
    WorkspaceRequest,
};

use crate::commands::CommandQueues;
use crate::error::ApiError;
use crate::state::TaskDriver;
use crate::tokens::TokenSigner;

impl From<kiln_pool::Error> for ApiError {
    fn from(err: kiln_pool::Error) -> Self {
        use kiln_pool::Error as E;
        match err {
            E::Store(e) => e.into(),
            E::InvalidTransition { source, .. } => source.into(),
            E::NotFound { entity, .. } => Self::not_found(entity),
            E::Contended { .. } => Self::conflict("the task keeps changing; retry"),
            e @ (E::NotAChat { .. } | E::WorkspaceInUse { .. }) => Self::conflict(e.to_string()),
            other => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                other.to_string(),
            ),
        }
    }
}

/// The [`TaskDriver`] of a real server: the pool's [`TaskRunner`].
#[derive(Debug, Clone)]
pub struct PoolDriver {
    runner: TaskRunner,
}

impl PoolDriver {
    /// A driver over `runner`.
    #[must_use]
    pub fn new(runner: TaskRunner) -> Self {
        Self { runner }
    }
}

#[async_trait]
impl TaskDriver for PoolDriver {
    async fn run(&self, task: TaskId) -> Result<Task, ApiError> {
        Ok(self.runner.run(task).await?)
    }

    async fn rerun(&self, task: TaskId) -> Result<Task, ApiError> {
        Ok(self.runner.rerun(task).await?)
    }

    async fn cancel(&self, task: TaskId) -> Result<Task, ApiError> {
        Ok(self.runner.cancel(task).await?)
    }

    async fn discard_workspace(
        &self,
        workspace: WorkspaceId,
    ) -> Result<kiln_core::Workspace, ApiError> {
        Ok(self.runner.discard_workspace(workspace).await?)
    }

    async fn discard_kept_workspaces(&self, task: TaskId) -> Result<(), ApiError> {
        self.runner.discard_kept_workspaces(task).await?;
        Ok(())
    }

    async fn open_chat(&self, chat: kiln_pool::NewChat) -> Result<ChatSession, ApiError> {
        Ok(self.runner.open_chat(chat).await?)
    }

    async fn close_chat(&self, session: SessionId) -> Result<ChatSession, ApiError> {
        Ok(self.runner.close_chat(session).await?)
    }

    async fn run_queued(&self, task: TaskId) -> Result<Task, ApiError> {
        Ok(self.runner.run_queued(task).await?)
    }

    async fn node_ready(&self, node: NodeId) -> Result<(), ApiError> {
        self.runner.pool().node_ready(node).await?;
        Ok(())
    }

    async fn node_workspaces(
        &self,
        node: NodeId,
        workspaces: &[WorkspaceId],
    ) -> Result<(), ApiError> {
        self.runner.reconcile_node(node, workspaces).await?;
        Ok(())
    }

    async fn node_heartbeat_workspaces(
        &self,
        node: NodeId,
        workspaces: &[WorkspaceId],
    ) -> Result<(), ApiError> {
        self.runner.reconcile_heartbeat(node, workspaces).await?;
        Ok(())
    }

    async fn workspace_event(&self, _node: NodeId, event: &WorkspaceEvent) -> Result<(), ApiError> {
        let r = &self.runner;
        match event.clone() {
            WorkspaceEvent::AgentStarted {
                workspace_id,
                branch,
            } => r.agent_started(workspace_id, branch).await?,
            WorkspaceEvent::Completed {
                workspace_id,
                branch,
                pr_url,
                summary,
                warning,
            } => {
                if let Some(warning) = warning {
                    tracing::warn!(workspace = %workspace_id, %warning, "workspace completed with a warning");
                }
                r.completed(workspace_id, branch, pr_url, summary).await?;
            }
            WorkspaceEvent::Failed {
                workspace_id,
                error,
            } => r.failed(workspace_id, &error).await?,
            WorkspaceEvent::Cancelled { workspace_id } => r.cancelled(workspace_id).await?,
            WorkspaceEvent::Destroyed { workspace_id } => {
                r.workspace_destroyed(workspace_id).await?;
            }
        }
        Ok(())
    }
}

/// Starts, stops and removes workspaces by sending [`NodeCommand`]s to the node's long poll
/// (through [`crate::commands::dispatch`], so any replica can issue them).
#[derive(Debug, Clone)]
pub struct NodeController {
    store: Arc<dyn Store>,
    commands: Arc<CommandQueues>,
    signer: TokenSigner,
    clock: Arc<dyn LifecycleClock>,
    token_ttl: std::time::Duration,
}

impl NodeController {
    /// A controller sending through `store`'s feed to `commands`, signing workspace tokens
    /// valid for `token_ttl`.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        commands: Arc<CommandQueues>,
        signer: TokenSigner,
        clock: Arc<dyn LifecycleClock>,
        token_ttl: std::time::Duration,
    ) -> Self {
        Self {
            store,
            commands,
            signer,
            clock,
            token_ttl,
        }
    }

    fn already_queued(&self, node: NodeId, matches: impl Fn(&NodeCommand) -> bool) -> bool {
        self.commands
            .pending(node)
            .iter()
            .any(|c| matches(&c.command))
    }

    async fn send(&self, node: NodeId, command: NodeCommand) -> Result<(), ControllerError> {
        crate::commands::dispatch(&self.store, &self.commands, node, command)
            .await
            .map_err(|e| {
                if e.is_retryable() {
                    ControllerError::Unreachable {
                        message: e.to_string(),
                    }
                } else {
                    ControllerError::Rejected {
                        message: e.to_string(),
                    }
                }
            })
    }
}

#[async_trait]
impl WorkspaceController for NodeController {
    async fn create_workspace(&self, request: &WorkspaceRequest) -> Result<(), ControllerError> {
        let id = request.workspace_id;
        if self.already_queued(request.node_id, |c| {
            matches!(c, NodeCommand::CreateWorkspace { workspace_id, .. } if *workspace_id == id)
        }) {
            return Ok(());
        }
        let now = self.clock.now();
        let token = self.signer.workspace_token(
            request.node_id,
            id,
            now,
            kiln_core::clock::add_duration(now, self.token_ttl),
        );
        self.send(
            request.node_id,
            NodeCommand::CreateWorkspace {
                workspace_id: id,
                project_id: Some(request.project_id),
                session_id: Some(request.session_id),
                task_id: request.task_id,
                repository_url: request.repository_url.clone(),
                branch: request.branch.clone(),
                prompt: request.prompt.clone(),
                callback_token: token,
                agent_hint: request.agent_hint.clone(),
                git_token: None,
            },
        )
        .await
    }

    async fn send_prompt(
        &self,
        node: NodeId,
        workspace: WorkspaceId,
        prompt: &Prompt,
    ) -> Result<(), ControllerError> {
        let id = prompt.message_id;
        if self.already_queued(node, |c| {
            matches!(c, NodeCommand::Prompt { workspace_id, prompt } if *workspace_id == workspace && prompt.message_id == id)
        }) {
            return Ok(());
        }
        self.send(
            node,
            NodeCommand::Prompt {
                workspace_id: workspace,
                prompt: prompt.clone(),
            },
        )
        .await
    }

    async fn stop_agent(
        &self,
        node: NodeId,
        workspace: WorkspaceId,
    ) -> Result<(), ControllerError> {
        if !self.already_queued(
            node,
            |c| matches!(c, NodeCommand::Cancel { workspace_id } if *workspace_id == workspace),
        ) {
            self.send(
                node,
                NodeCommand::Cancel {
                    workspace_id: workspace,
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn destroy_workspace(
        &self,
        node: NodeId,
        workspace: WorkspaceId,
    ) -> Result<DestroyProgress, ControllerError> {
        if !self.already_queued(node, |c| {
            matches!(c, NodeCommand::DestroyWorkspace { workspace_id } if *workspace_id == workspace)
        }) {
            self.send(
                node,
                NodeCommand::DestroyWorkspace {
                    workspace_id: workspace,
                },
            )
            .await?;
        }
        Ok(DestroyProgress::Requested)
    }
}

/// Gives each new node this server's URL, a node token scoped to it, and the agent command.
#[derive(Debug, Clone)]
pub struct TokenBootstrap {
    /// The URL nodes reach the server at.
    pub control_plane_url: String,
    /// Signs node tokens.
    pub signer: TokenSigner,
    /// Time.
    pub clock: Arc<dyn LifecycleClock>,
    /// Node token lifetime.
    pub token_ttl: std::time::Duration,
    /// Environment for the agent host (for example `KILN_AGENT_COMMAND`).
    pub env: BTreeMap<String, String>,
}

impl NodeBootstrapper for TokenBootstrap {
    fn bootstrap(&self, node: &Node) -> NodeBootstrap {
        let now = self.clock.now();
        NodeBootstrap {
            control_plane_url: self.control_plane_url.clone(),
            callback_token: self.signer.node_token(
                node.id,
                now,
                kiln_core::clock::add_duration(now, self.token_ttl),
            ),
            env: self.env.clone(),
        }
    }
}
