//! What nodes report about workspaces, and the user's cancel.

use kiln_core::task::{TaskEvent, TransitionError};
use kiln_core::{Task, TaskId, TaskStatus, Workspace, WorkspaceId, WorkspaceStatus};

use super::TaskRunner;
use crate::error::Error;
use crate::pool::{ReleaseOutcome, live_workspace_statuses};

impl TaskRunner {
    /// The task the workspace runs, if the workspace is the task's current one (a late
    /// report from an earlier attempt's workspace must not move the new run).
    async fn current_task_of(&self, workspace: &Workspace) -> Result<Option<TaskId>, Error> {
        let Some(task_id) = workspace.task_id else {
            return Ok(None);
        };
        let task = self.task(task_id).await?;
        if task.workspace_id == Some(workspace.id) {
            Ok(Some(task_id))
        } else {
            tracing::info!(task = %task_id, workspace = %workspace.id, "report from a workspace of an earlier attempt");
            Ok(None)
        }
    }

    async fn workspace(&self, id: WorkspaceId) -> Result<Workspace, Error> {
        self.store()
            .get_workspace(id)
            .await?
            .ok_or_else(|| Error::not_found("workspace", id))
    }

    /// The workspace's agent started (on `branch`, which may carry a `-2` suffix):
    /// delegated → in progress. Repeated reports change nothing.
    pub async fn agent_started(
        &self,
        workspace: WorkspaceId,
        branch: Option<String>,
    ) -> Result<(), Error> {
        let ws = self.workspace(workspace).await?;
        if ws.status == WorkspaceStatus::Creating {
            self.set_workspace(workspace, WorkspaceStatus::Running, branch.as_deref())
                .await?;
        }
        if let Some(task) = self.current_task_of(&ws).await? {
            self.finish(task, &TaskEvent::AgentStarted { workspace, branch })
                .await?;
        } else if ws.task_id.is_none() {
            self.chat_started(&ws).await?;
        }
        Ok(())
    }

    /// The agent ended cleanly and the work is committed: the task is completed with its
    /// branch, pull request and summary, the workspace destroyed, the node released warm
    /// once empty, and the session completed.
    pub async fn completed(
        &self,
        workspace: WorkspaceId,
        branch: Option<String>,
        pr_url: Option<String>,
        summary: Option<String>,
    ) -> Result<(), Error> {
        let ws = self.workspace(workspace).await?;
        if let Some(branch) = branch.as_deref() {
            self.set_workspace(workspace, ws.status, Some(branch))
                .await?;
        }
        if let Some(task) = self.current_task_of(&ws).await? {
            let event = TaskEvent::Completed {
                branch,
                pr_url,
                summary,
            };
            self.finish(task, &event).await?;
        }
        Ok(())
    }

    /// The agent failed or crashed: the task fails with `error`; the workspace is kept
    /// (stopped) and the node stays with it.
    pub async fn failed(&self, workspace: WorkspaceId, error: &str) -> Result<(), Error> {
        let ws = self.workspace(workspace).await?;
        if let Some(task) = self.current_task_of(&ws).await? {
            let reason = error.to_owned();
            self.finish(task, &TaskEvent::Failed { reason }).await?;
        } else if ws.task_id.is_none() {
            tracing::warn!(%workspace, %error, "chat agent failed");
            self.chat_failed(&ws).await?;
        }
        Ok(())
    }

    /// The node reports the agent's turn cancelled: the task is cancelled (if it was not
    /// already) and the workspace kept.
    pub async fn cancelled(&self, workspace: WorkspaceId) -> Result<(), Error> {
        let ws = self.workspace(workspace).await?;
        if let Some(task) = self.current_task_of(&ws).await? {
            self.finish(task, &TaskEvent::Cancel).await?;
        }
        self.set_workspace(workspace, WorkspaceStatus::Stopped, None)
            .await?;
        Ok(())
    }

    /// The user cancels a task: cancelled, its agent stopped, its workspace kept. A queued
    /// task's node, once it comes, goes back to the pool. Cancelling a cancelled task is a
    /// no-op; a completed or failed one is refused.
    pub async fn cancel(&self, id: TaskId) -> Result<Task, Error> {
        if !self.finish(id, &TaskEvent::Cancel).await? {
            let task = self.task(id).await?;
            if task.status != TaskStatus::Cancelled {
                return Err(Error::InvalidTransition {
                    task: id,
                    source: TransitionError {
                        from: task.status,
                        event: TaskEvent::Cancel.name(),
                    },
                });
            }
            return Ok(task);
        }
        self.task(id).await
    }

    /// Whether `node`'s claim belongs to a task whose current run uses it. A task between a
    /// re-run and its new node (no node yet) holds only a node claimed since the re-run: an
    /// older claim is the earlier attempt's, whose kept workspace was discarded.
    async fn held_for_current_run(&self, node: &kiln_core::Node) -> Result<bool, Error> {
        let Some(task_id) = node.claimed_by else {
            return Ok(false);
        };
        let Some(task) = self.store().get_task(task_id).await? else {
            return Ok(false);
        };
        if !task.status.is_running() {
            return Ok(false);
        }
        Ok(match task.node_id {
            Some(held) => held == node.id,
            None => node.updated_at >= task.status_changed_at,
        })
    }

    /// The workspace was removed from its node: recorded, and the node released warm once
    /// no workspace is left on it and no running task holds it. Idempotent.
    pub async fn workspace_destroyed(&self, workspace: WorkspaceId) -> Result<(), Error> {
        let Some(ws) = self
            .set_workspace(workspace, WorkspaceStatus::Destroyed, None)
            .await?
        else {
            return Err(Error::not_found("workspace", workspace));
        };
        let pool = &self.inner.pool;
        let Some(node) = self.store().get_node(ws.node_id).await? else {
            return Ok(());
        };
        if self.held_for_current_run(&node).await? {
            return Ok(());
        }
        let left = self
            .store()
            .list_workspaces(&kiln_core::WorkspaceQuery {
                node_id: Some(node.id),
                statuses: live_workspace_statuses(),
                ..Default::default()
            })
            .await?;
        if left.is_empty() {
            match pool.release(node.id).await? {
                ReleaseOutcome::Warm { until } => {
                    tracing::info!(node = %node.id, %until, "node empty; released warm");
                }
                other => tracing::debug!(node = %node.id, ?other, "node not released"),
            }
        }
        Ok(())
    }
}
