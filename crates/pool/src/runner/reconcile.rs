//! Reconciling the store with what a node says it has.
//!
//! A node's agent host lists its workspaces in every hello (after a start, a restart or a
//! reconnect). The store may believe otherwise: the node lost a workspace (its disk was
//! replaced, the host restarted while the checkout was still being made) or the report of a
//! removal was lost. [`TaskRunner::reconcile_node`] settles both, so no task waits forever
//! on a workspace that is gone and no node stays claimed by one.

use std::collections::HashSet;

use kiln_core::task::TaskEvent;
use kiln_core::{NodeId, TaskStatus, WorkspaceId, WorkspaceQuery, WorkspaceStatus};

use super::TaskRunner;
use crate::error::Error;

/// What [`TaskRunner::reconcile_node`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Tasks failed because their running workspace is no longer on the node.
    pub failed_tasks: Vec<kiln_core::TaskId>,
    /// Workspaces being destroyed that the node no longer has: now destroyed.
    pub destroyed: Vec<WorkspaceId>,
}

impl TaskRunner {
    /// Settles the workspaces the store places on `node` against the ones the node reports
    /// (`reported`, from its hello): a task whose workspace was running there and is gone
    /// fails with a reason; a workspace being destroyed that is gone counts as destroyed
    /// (its node is released once empty). Workspaces still being created are left alone:
    /// their command may not have reached the node yet.
    pub async fn reconcile_node(
        &self,
        node: NodeId,
        reported: &[WorkspaceId],
    ) -> Result<Reconciled, Error> {
        let reported: HashSet<WorkspaceId> = reported.iter().copied().collect();
        let mut done = Reconciled::default();
        let workspaces = self
            .store()
            .list_workspaces(&WorkspaceQuery {
                node_id: Some(node),
                statuses: vec![WorkspaceStatus::Running, WorkspaceStatus::Destroying],
                ..WorkspaceQuery::default()
            })
            .await?;
        for workspace in workspaces.into_iter().filter(|w| !reported.contains(&w.id)) {
            match workspace.status {
                WorkspaceStatus::Destroying => {
                    tracing::info!(%node, workspace = %workspace.id, "the node no longer has a workspace being destroyed; it is gone");
                    self.workspace_destroyed(workspace.id).await?;
                    done.destroyed.push(workspace.id);
                }
                WorkspaceStatus::Running => {
                    let Some(task_id) = workspace.task_id else {
                        continue;
                    };
                    let Some(task) = self.store().get_task(task_id).await? else {
                        continue;
                    };
                    let runs_here = task.workspace_id == Some(workspace.id)
                        && matches!(task.status, TaskStatus::Delegated | TaskStatus::InProgress);
                    if !runs_here {
                        continue;
                    }
                    let reason = format!(
                        "the node {node} no longer has workspace {} (its agent host started again without it)",
                        workspace.id
                    );
                    tracing::warn!(%node, workspace = %workspace.id, task = %task_id, "workspace missing on its node; failing the task");
                    if self.finish(task_id, &TaskEvent::Failed { reason }).await? {
                        done.failed_tasks.push(task_id);
                    }
                }
                _ => {}
            }
        }
        Ok(done)
    }
}
