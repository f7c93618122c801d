//! Reconciling the store with what a node says it has.
//!
//! A node's agent host lists its workspaces in every hello (after a start, a restart or a
//! reconnect) and in every heartbeat. The store may believe otherwise: the node lost a
//! workspace (its disk was replaced, the host restarted while the checkout was still being
//! made, the workspace's actor died or its directory was removed) or the report of a removal
//! was lost. [`TaskRunner::reconcile_node`] (hello) and [`TaskRunner::reconcile_heartbeat`]
//! settle both, so no task waits forever on a workspace that is gone, no chat stays attached
//! to one as if it ran, and no node stays claimed by one.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use kiln_core::clock::add_duration;
use kiln_core::task::TaskEvent;
use kiln_core::{
    NodeId, SessionId, TaskStatus, Timestamp, Workspace, WorkspaceId, WorkspaceQuery,
    WorkspaceStatus,
};

use super::TaskRunner;
use crate::error::Error;

/// What [`TaskRunner::reconcile_node`] or [`TaskRunner::reconcile_heartbeat`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Tasks failed because their running workspace is no longer on the node.
    pub failed_tasks: Vec<kiln_core::TaskId>,
    /// Workspaces being destroyed that the node no longer has: now destroyed.
    pub destroyed: Vec<WorkspaceId>,
    /// Chats without a task whose running workspace is no longer on the node: stopped with
    /// a notice, the workspace destroyed and the node released once empty.
    pub stopped_chats: Vec<SessionId>,
}

/// The stored state of a workspace a heartbeat left out: its status and when it last
/// changed. A later heartbeat counts as a second miss only if the row is still the same.
type RowVersion = (WorkspaceStatus, Timestamp);

/// Per node, the running or destroying workspaces the last heartbeat this process handled
/// left out, with the row as it was then. Kept in memory: a restarted server loses it, and
/// its nodes say hello first (which reconciles everything), so nothing is missed.
#[derive(Debug, Default)]
pub(super) struct HeartbeatMisses(Mutex<HashMap<NodeId, HashMap<WorkspaceId, RowVersion>>>);

impl HeartbeatMisses {
    /// Records the workspaces `node`'s heartbeat left out (`missing`, read after the
    /// heartbeat arrived at `now`) and returns the ones whose miss is at least the second in
    /// a row with the row unchanged, and whose row changed more than `margin` before `now`.
    /// Only they may be acted on. Every other workspace of the node is forgotten (listed
    /// again, or no longer running or destroying), so the misses must be consecutive.
    fn confirmed_misses(
        &self,
        node: NodeId,
        missing: Vec<Workspace>,
        now: Timestamp,
        margin: Duration,
    ) -> Vec<Workspace> {
        let mut nodes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = nodes.remove(&node).unwrap_or_default();
        let mut again = HashMap::new();
        let mut confirmed = Vec::new();
        for workspace in missing {
            let version = (workspace.status, workspace.updated_at);
            // Kept while missing, even once confirmed: a workspace left as it is (one of a
            // task that ended) is then not announced again every other heartbeat.
            again.insert(workspace.id, version);
            if before.get(&workspace.id) != Some(&version) {
                // Routine for a workspace being destroyed (the node drops it before its
                // `destroyed` report arrives); unusual for a running one.
                if workspace.status == WorkspaceStatus::Running {
                    tracing::info!(%node, workspace = %workspace.id, "a heartbeat does not list a running workspace; settled if the next ones do not either");
                } else {
                    tracing::debug!(%node, workspace = %workspace.id, status = %workspace.status, "a heartbeat does not list a workspace");
                }
            } else if add_duration(workspace.updated_at, margin) < now {
                confirmed.push(workspace);
            }
        }
        if !again.is_empty() {
            nodes.insert(node, again);
        }
        confirmed
    }

    /// Forgets `node`'s misses (its hello settles everything at once).
    fn forget(&self, node: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&node);
    }
}

impl TaskRunner {
    /// Settles the workspaces the store places on `node` against the ones the node reports
    /// (`reported`, from its hello): a task whose workspace was running there and is gone
    /// fails with a reason; a chat without a task whose workspace was running there and is
    /// gone is stopped with a notice saying so, and the workspace counts as destroyed; a
    /// workspace being destroyed that is gone counts as destroyed. A node left empty is
    /// released. Workspaces still being created are left alone: their command may not have
    /// reached the node yet.
    ///
    /// A hello is built by an agent host that has just loaded every workspace it has from
    /// its disk, so one is enough: what it leaves out is gone.
    pub async fn reconcile_node(
        &self,
        node: NodeId,
        reported: &[WorkspaceId],
    ) -> Result<Reconciled, Error> {
        self.inner.heartbeat_misses.forget(node);
        let mut done = Reconciled::default();
        for workspace in self.missing_on(node, reported).await? {
            self.settle_missing(
                workspace,
                "its agent host started again without it",
                &mut done,
            )
            .await?;
        }
        Ok(done)
    }

    /// Settles the workspaces the store places on `node` against a heartbeat's list
    /// (`reported`), as [`reconcile_node`](Self::reconcile_node) does for a hello, but only
    /// for a workspace that is certainly gone:
    ///
    /// - it is left out of **two consecutive heartbeats** this process handles, and its row
    ///   (status and `updated_at`) is the same at both. The agent host sends one heartbeat
    ///   at a time, each after the previous one's answer, so the second was built after the
    ///   server had read that row while handling the first: after the workspace became
    ///   running (which the node itself reports, once it has the workspace) or destroying.
    ///   A heartbeat built before the workspace existed on the node, arriving late, is at
    ///   most the first miss, and the next heartbeat lists the workspace and clears it.
    /// - the second miss arrives more than [`heartbeat_timeout`](crate::Settings::heartbeat_timeout)
    ///   after the row last changed. This covers what the first rule cannot: a heartbeat the
    ///   node gave up on (its request times out after 30 s) and sent again freshly, while the
    ///   old request still reaches the server after the new one. A request in flight longer
    ///   than the time after which a silent node counts as lost is not believed to exist.
    ///
    /// A stuck task is therefore failed (or a chat stopped) about a heartbeat timeout after
    /// its last change, never because of a race. Workspaces still being created are never
    /// touched.
    pub async fn reconcile_heartbeat(
        &self,
        node: NodeId,
        reported: &[WorkspaceId],
    ) -> Result<Reconciled, Error> {
        let missing = self.missing_on(node, reported).await?;
        let confirmed = self.inner.heartbeat_misses.confirmed_misses(
            node,
            missing,
            self.now(),
            self.pool().settings().heartbeat_timeout,
        );
        let mut done = Reconciled::default();
        for workspace in confirmed {
            self.settle_missing(
                workspace,
                "its heartbeats stopped listing it without a report",
                &mut done,
            )
            .await?;
        }
        Ok(done)
    }

    /// The running and destroying workspaces the store places on `node` that `reported`
    /// leaves out.
    async fn missing_on(
        &self,
        node: NodeId,
        reported: &[WorkspaceId],
    ) -> Result<Vec<Workspace>, Error> {
        let reported: HashSet<WorkspaceId> = reported.iter().copied().collect();
        let workspaces = self
            .store()
            .list_workspaces(&WorkspaceQuery {
                node_id: Some(node),
                statuses: vec![WorkspaceStatus::Running, WorkspaceStatus::Destroying],
                ..WorkspaceQuery::default()
            })
            .await?;
        Ok(workspaces
            .into_iter()
            .filter(|w| !reported.contains(&w.id))
            .collect())
    }

    /// Settles one workspace its node no longer has: destroyed if it was being destroyed;
    /// its task failed (saying `why`) if the task still runs there; its chat (one without a
    /// task) stopped with a notice saying `why`, and the workspace destroyed.
    async fn settle_missing(
        &self,
        workspace: Workspace,
        why: &str,
        done: &mut Reconciled,
    ) -> Result<(), Error> {
        let node = workspace.node_id;
        match workspace.status {
            WorkspaceStatus::Destroying => {
                tracing::info!(%node, workspace = %workspace.id, why, "the node no longer has a workspace being destroyed; it is gone");
                self.workspace_destroyed(workspace.id).await?;
                done.destroyed.push(workspace.id);
            }
            WorkspaceStatus::Running => {
                let Some(task_id) = workspace.task_id else {
                    let lost = format!("the node {node} no longer has it ({why})");
                    if let Some(session) = self.chat_workspace_lost(&workspace, &lost).await? {
                        done.stopped_chats.push(session);
                    }
                    return Ok(());
                };
                let Some(task) = self.store().get_task(task_id).await? else {
                    return Ok(());
                };
                let runs_here = task.workspace_id == Some(workspace.id)
                    && matches!(task.status, TaskStatus::Delegated | TaskStatus::InProgress);
                if !runs_here {
                    return Ok(());
                }
                let reason = format!(
                    "the node {node} no longer has workspace {} ({why})",
                    workspace.id
                );
                tracing::warn!(%node, workspace = %workspace.id, task = %task_id, why, "workspace missing on its node; failing the task");
                if self.finish(task_id, &TaskEvent::Failed { reason }).await? {
                    done.failed_tasks.push(task_id);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
