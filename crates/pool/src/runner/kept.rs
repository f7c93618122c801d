//! Kept workspaces: the workspace of a failed or cancelled task stays on its node (stopped)
//! for inspection, and its node stays claimed with it. Nothing else frees that node, so
//! a kept workspace is discarded — destroyed on its node, which is then released warm once
//! empty, as after a completed task — when the user asks
//! ([`TaskRunner::discard_workspace`]), when the task is re-run, deleted or its project
//! deleted ([`TaskRunner::discard_kept_workspaces`]), and once it is older than
//! [`kept_workspace_ttl`](crate::Settings::kept_workspace_ttl)
//! ([`TaskRunner::discard_expired_workspaces`], from the runner's tick).

use std::time::Duration;

use kiln_core::clock::add_duration;
use kiln_core::{
    Change, NodeState, SessionId, TaskId, Workspace, WorkspaceId, WorkspaceQuery, WorkspaceStatus,
};

use super::TaskRunner;
use crate::error::Error;

impl TaskRunner {
    /// Discards a kept workspace: marked `destroying`, its destroy command sent to its node,
    /// and the node released warm once the node reports it gone and nothing else is on it.
    /// A workspace whose node is no longer live counts as destroyed at once. Discarding a
    /// workspace already destroyed or being destroyed returns it unchanged.
    ///
    /// Refused with [`Error::WorkspaceInUse`] for the workspace a task still runs in (cancel
    /// the task first) and for a chat's workspace (close the chat instead); an unknown
    /// workspace is [`Error::NotFound`].
    pub async fn discard_workspace(&self, id: WorkspaceId) -> Result<Workspace, Error> {
        let workspace = self.kept_workspace(id).await?;
        if matches!(
            workspace.status,
            WorkspaceStatus::Destroyed | WorkspaceStatus::Destroying
        ) {
            return Ok(workspace);
        }
        let whose = workspace
            .task_id
            .map_or_else(|| "no task".to_owned(), |t| format!("task {t}"));
        tracing::info!(workspace = %id, node = %workspace.node_id, whose, "discarding a kept workspace");
        let node_live = self
            .store()
            .get_node(workspace.node_id)
            .await?
            .is_some_and(|n| matches!(n.state, NodeState::Active | NodeState::Warm));
        if node_live {
            self.set_workspace(id, WorkspaceStatus::Destroying, None)
                .await?;
            self.send_destroy(workspace.node_id, id, &whose).await?;
        } else {
            self.workspace_destroyed(id).await?;
        }
        self.store()
            .get_workspace(id)
            .await?
            .ok_or_else(|| Error::not_found("workspace", id))
    }

    /// The workspace, if it is one that may be discarded.
    async fn kept_workspace(&self, id: WorkspaceId) -> Result<Workspace, Error> {
        let workspace = self
            .store()
            .get_workspace(id)
            .await?
            .ok_or_else(|| Error::not_found("workspace", id))?;
        let in_use = |reason: &str| Error::WorkspaceInUse {
            workspace: id,
            reason: reason.to_owned(),
        };
        let Some(task_id) = workspace.task_id else {
            return Err(in_use(
                "it is a chat's workspace; close the chat to discard it",
            ));
        };
        if let Some(task) = self.store().get_task(task_id).await?
            && task.status.is_running()
            && task.workspace_id == Some(id)
        {
            return Err(in_use(&format!(
                "its task is {}; cancel the task first",
                task.status
            )));
        }
        Ok(workspace)
    }

    /// Discards every kept workspace of `task` (of earlier attempts too), leaving the one
    /// its current run uses if it runs. Called before a re-run (so the re-run may take the
    /// released node) and when the task or its project is deleted. Returns the workspaces
    /// discarded.
    pub async fn discard_kept_workspaces(&self, task: TaskId) -> Result<Vec<WorkspaceId>, Error> {
        let kept = self
            .store()
            .list_workspaces(&WorkspaceQuery {
                task_id: Some(task),
                statuses: vec![
                    WorkspaceStatus::Creating,
                    WorkspaceStatus::Running,
                    WorkspaceStatus::Stopped,
                ],
                ..WorkspaceQuery::default()
            })
            .await?;
        let mut discarded = Vec::new();
        for workspace in kept {
            match self.discard_workspace(workspace.id).await {
                Ok(_) => discarded.push(workspace.id),
                // The task's current run: left to it.
                Err(Error::WorkspaceInUse { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(discarded)
    }

    /// Discards the kept workspaces of tasks (stopped, of a failed, cancelled or deleted
    /// task, or of an earlier attempt) that have been kept longer than
    /// [`kept_workspace_ttl`](crate::Settings::kept_workspace_ttl), counted from when the
    /// workspace was stopped (its `updated_at`). The task's chat session says so. Nothing
    /// when the setting keeps them forever. Returns the workspaces discarded.
    pub async fn discard_expired_workspaces(&self) -> Result<Vec<WorkspaceId>, Error> {
        let Some(ttl) = self.inner.pool.settings().kept_workspace_ttl else {
            return Ok(Vec::new());
        };
        let now = self.now();
        let stopped = self
            .store()
            .list_workspaces(&WorkspaceQuery {
                statuses: vec![WorkspaceStatus::Stopped],
                ..WorkspaceQuery::default()
            })
            .await?;
        let mut discarded = Vec::new();
        for workspace in stopped {
            let Some(task_id) = workspace.task_id else {
                continue;
            };
            if add_duration(workspace.updated_at, ttl) > now {
                continue;
            }
            match self.discard_workspace(workspace.id).await {
                Ok(_) => {}
                Err(Error::WorkspaceInUse { .. }) => continue,
                Err(e) => {
                    tracing::warn!(workspace = %workspace.id, error = %e, "could not discard an expired kept workspace");
                    continue;
                }
            }
            tracing::info!(workspace = %workspace.id, task = %task_id, "kept workspace discarded after the retention period");
            let session = match self.store().get_task(task_id).await? {
                Some(task) => task.session_id,
                None => workspace.session_id,
            };
            if let Some(session) = session {
                self.retention_notice(&workspace, session, ttl).await;
            }
            discarded.push(workspace.id);
        }
        Ok(discarded)
    }

    async fn retention_notice(&self, workspace: &Workspace, session: SessionId, ttl: Duration) {
        let text = format!(
            "The workspace was discarded after the retention period ({}): its files are gone and its node was released. Re-run the task to start again.",
            human(ttl)
        );
        if self.system_notice(session, text).await {
            self.publish(
                workspace.owner,
                workspace.project_id,
                Change::Session {
                    session_id: session,
                },
            )
            .await;
        }
    }
}

/// `24 h`, `90 min`, `45 s`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{} s", secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_periods_read_in_their_largest_whole_unit() {
        assert_eq!(human(Duration::from_secs(24 * 3600)), "24 h");
        assert_eq!(human(Duration::from_secs(90 * 60)), "90 min");
        assert_eq!(human(Duration::from_secs(45)), "45 s");
        assert_eq!(human(Duration::from_millis(200)), "1 s");
    }
}
