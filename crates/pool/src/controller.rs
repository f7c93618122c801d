//! What the runner needs from nodes: the [`WorkspaceController`] trait. The reference server
//! implements it over the node protocol ([`kiln_core::protocol`]); [`crate::memory`] has an
//! in-memory fake.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::protocol::Prompt;
use kiln_core::{NodeId, ProjectId, SessionId, TaskId, WorkspaceId};

/// A request to start a workspace with an agent on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRequest {
    /// The node to start it on.
    pub node_id: NodeId,
    /// The workspace's id (already stored, status `creating`).
    pub workspace_id: WorkspaceId,
    /// The project whose repository it checks out.
    pub project_id: ProjectId,
    /// The task it runs (none for a chat without a task).
    pub task_id: Option<TaskId>,
    /// The chat session its messages go to.
    pub session_id: SessionId,
    /// The repository to check out.
    pub repository_url: String,
    /// The branch to create: `task/<id>` (the node adds `-2`, `-3`… when it exists). None
    /// for a chat without a task: it works on the repository's default branch and nothing
    /// is committed or pushed.
    pub branch: Option<String>,
    /// The first prompt: a task's description under the id derived from the task
    /// ([`MessageId::for_task_prompt`](kiln_core::MessageId::for_task_prompt)), or a chat's
    /// first message if it was opened with one.
    pub prompt: Option<Prompt>,
    /// Which agent to run, if the task asked for one.
    pub agent_hint: Option<String>,
}

/// What became of a workspace destroy request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyProgress {
    /// The workspace is gone already.
    Destroyed,
    /// The node was asked; it reports the removal later
    /// (through [`TaskRunner::workspace_destroyed`](crate::TaskRunner::workspace_destroyed)).
    Requested,
}

/// A failure talking to a node about a workspace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    /// The node cannot be reached right now.
    #[error("node unreachable: {message}")]
    Unreachable {
        /// What happened.
        message: String,
    },
    /// The node refused the request.
    #[error("node refused the request: {message}")]
    Rejected {
        /// What the node said.
        message: String,
    },
}

impl ControllerError {
    /// Whether trying again may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// Starts, stops and removes workspaces on nodes. Every method is idempotent: asking twice
/// for the same workspace id does the work once.
#[async_trait]
pub trait WorkspaceController: Send + Sync + fmt::Debug + 'static {
    /// Checks out the repository on the task branch and starts the agent with the first
    /// prompt. Returns once the node accepted the request; the node reports the agent's start
    /// later (through [`TaskRunner::agent_started`](crate::TaskRunner::agent_started)).
    async fn create_workspace(&self, request: &WorkspaceRequest) -> Result<(), ControllerError>;

    /// Sends a prompt to the workspace's agent, queued behind its checkout and start (and
    /// any turn under way). The node takes a prompt once per message id: sending one it took
    /// already does nothing.
    async fn send_prompt(
        &self,
        node: NodeId,
        workspace: WorkspaceId,
        prompt: &Prompt,
    ) -> Result<(), ControllerError>;

    /// Stops the workspace's agent if it still runs; the workspace is kept for inspection.
    async fn stop_agent(&self, node: NodeId, workspace: WorkspaceId)
    -> Result<(), ControllerError>;

    /// Stops the agent and removes the workspace from its node.
    async fn destroy_workspace(
        &self,
        node: NodeId,
        workspace: WorkspaceId,
    ) -> Result<DestroyProgress, ControllerError>;
}

#[async_trait]
impl<T: WorkspaceController + ?Sized> WorkspaceController for Arc<T> {
    async fn create_workspace(&self, request: &WorkspaceRequest) -> Result<(), ControllerError> {
        (**self).create_workspace(request).await
    }
    async fn send_prompt(
        &self,
        node: NodeId,
        workspace: WorkspaceId,
        prompt: &Prompt,
    ) -> Result<(), ControllerError> {
        (**self).send_prompt(node, workspace, prompt).await
    }
    async fn stop_agent(
        &self,
        node: NodeId,
        workspace: WorkspaceId,
    ) -> Result<(), ControllerError> {
        (**self).stop_agent(node, workspace).await
    }
    async fn destroy_workspace(
        &self,
        node: NodeId,
        workspace: WorkspaceId,
    ) -> Result<DestroyProgress, ControllerError> {
        (**self).destroy_workspace(node, workspace).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_controller_is_object_safe() {
        fn takes(_: Option<Arc<dyn WorkspaceController>>) {}
        takes(None);
    }
}
