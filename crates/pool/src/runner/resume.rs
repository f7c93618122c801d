//! Picking up runs a stopped process left half-done.
//!
//! The steps of a run that wait on something outside the store — acquiring a node for a
//! `queued` task, sending the create-workspace command of a `delegated` one — live in the
//! process that started them. When that process stops (a restart, a crash), the store still
//! says `queued` or `delegated` but nobody works on it. [`TaskRunner::resume`] runs once when
//! a runner starts ([`run_until`](TaskRunner::run_until) calls it first) and carries on:
//!
//! - a `queued` task acquires its node again: the node already claimed for it, if the stopped
//!   process claimed (or began provisioning) one but stopped before storing it as the task's
//!   node, else a warm claim, else a new node — so the first node is not left `active`,
//!   claimed by the task, with nothing on it. Should another replica still be acquiring for
//!   it, the compare-and-set on `queued → delegated` lets exactly one of them delegate; the
//!   other gives its node back to the warm pool, unless it is the very node the winner
//!   delegated to (both took the node claimed for the task).
//! - a `delegated` task whose workspace is still `creating` gets its create-workspace command
//!   again (commands wait in server memory and are lost with it). The agent host applies a
//!   workspace's create command once, so a copy that did arrive before the stop is harmless.
//!   One whose workspace row was never written (the process stopped between delegating the
//!   task and writing the row, so no command was sent) gets it written and its command sent
//!   now, on the node the task holds, if that node is still live and claimed by it.
//! - a chat without a task left `pending` carries on the same way: with no workspace yet,
//!   it acquires its node again — the node already claimed for it
//!   ([`chat_claim`](super::chat_claim)) if there is one, so no second node is provisioned
//!   — and starts its workspace; with a workspace still `creating`, it gets its
//!   create-workspace command again. Either way with the agent hint and machine size stored
//!   in its session, so it runs the agent the user chose (a new node is of the size asked
//!   for). A chat whose workspace was still `creating` also gets its later user messages
//!   sent again, in order, after the create command: a follow-up accepted while the
//!   workspace was being created waited in the stopped server's command queue, and nothing
//!   stored says whether the node took it before the stop. The node takes a prompt once per
//!   message id (it remembers the ids it took, across its own restarts too), so one it took
//!   already is dropped rather than run twice. (A chat with no workspace yet has no
//!   follow-ups: they are refused until its workspace exists.)
//! - a workspace left `destroying` gets its destroy command again, so its node is released
//!   once the node reports it gone (instead of waiting for the node's maximum lifetime).
//! - a task whose end was stored but whose workspace is still `creating` or `running` (the
//!   process stopped between writing the task and acting on it) gets what its end asks for:
//!   a completed task's workspace is destroyed (its node released once empty), a failed or
//!   cancelled task's agent is stopped and its workspace kept `stopped`; its session is
//!   closed as well. The node's repeated report of the end cannot do it: the task no longer
//!   takes that event.
//!
//! Whatever cannot be resumed is left to the transient-state limits of
//! [`tick`](TaskRunner::tick), which fail the task with a reason.

use kiln_core::task::TaskEffect;
use kiln_core::{
    NodeState, SessionStatus, StoreError, TaskStatus, WorkspaceQuery, WorkspaceStatus,
};

use super::TaskRunner;
use crate::error::Error;

/// What [`TaskRunner::resume`] picked up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resumed {
    /// `queued` tasks whose node acquisition started again (in the background).
    pub queued: usize,
    /// `delegated` tasks whose create-workspace command was sent again.
    pub delegated: usize,
    /// Workspaces left `destroying` whose destroy command was sent again.
    pub destroying: usize,
    /// `pending` chats without a task whose start went on again: node acquisition started
    /// (in the background) or the create-workspace command sent again.
    pub chats: usize,
    /// Tasks that had ended with their workspace still `creating` or `running`: their
    /// workspace destroyed (completed) or stopped (failed, cancelled) now.
    pub ended: usize,
}

impl TaskRunner {
    /// Resumes the `queued` and `delegated` tasks a previous process left (see the module
    /// docs). Node acquisitions go on in the background; this returns once they are started
    /// and the workspace commands are sent.
    pub async fn resume(&self) -> Result<Resumed, Error> {
        let mut resumed = Resumed::default();
        let tasks = self
            .store()
            .list_tasks_by_status(&[TaskStatus::Queued, TaskStatus::Delegated])
            .await?;
        for task in tasks {
            match task.status {
                TaskStatus::Queued => {
                    tracing::info!(task = %task.id, "resuming a queued task: acquiring its node again");
                    // Stopped between writing the task and its session: open it now.
                    let session_missing = match task.session_id {
                        Some(s) => self.store().get_session(s).await?.is_none(),
                        None => false,
                    };
                    if session_missing && let Err(e) = self.open_session(&task, true).await {
                        tracing::warn!(task = %task.id, error = %e, "could not open a resumed task's session");
                    }
                    resumed.queued += 1;
                    self.spawn_acquire(task.id);
                }
                TaskStatus::Delegated => match self.resend_workspace(&task).await {
                    Ok(true) => resumed.delegated += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(task = %task.id, error = %e, "could not resume a delegated task; its delegated-state limit will fail it");
                    }
                },
                _ => {}
            }
        }
        for session in self
            .store()
            .list_chats_by_status(&[SessionStatus::Pending])
            .await?
        {
            let id = session.id;
            match self.resume_chat(session).await {
                Ok(true) => resumed.chats += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "could not resume a pending chat; closing it gives its node back");
                }
            }
        }
        resumed.ended = self.settle_ended_tasks().await?;
        let destroying = self
            .store()
            .list_workspaces(&WorkspaceQuery {
                statuses: vec![WorkspaceStatus::Destroying],
                ..WorkspaceQuery::default()
            })
            .await?;
        for workspace in destroying {
            // A node that is gone takes its workspaces with it; only live nodes are asked.
            let live = self
                .store()
                .get_node(workspace.node_id)
                .await?
                .is_some_and(|n| matches!(n.state, NodeState::Active | NodeState::Warm));
            if !live {
                continue;
            }
            let whose = match (workspace.task_id, workspace.session_id) {
                (Some(task), _) => format!("task {task}"),
                (None, Some(session)) => format!("chat {session}"),
                (None, None) => "no task or chat".to_owned(),
            };
            if self
                .send_destroy(workspace.node_id, workspace.id, &whose)
                .await?
            {
                resumed.destroying += 1;
            }
        }
        if resumed != Resumed::default() {
            tracing::info!(
                queued = resumed.queued,
                delegated = resumed.delegated,
                destroying = resumed.destroying,
                chats = resumed.chats,
                ended = resumed.ended,
                "resumed the runs a previous process left"
            );
        }
        Ok(resumed)
    }

    /// Carries out the effects of the task ends a stopped process stored without acting on
    /// them: every task that ended before this resume began while its current workspace is
    /// still `creating` or `running`. A task ending from now on is its report's to settle
    /// (nodes report to this process while it resumes). Returns how many.
    async fn settle_ended_tasks(&self) -> Result<usize, Error> {
        let began = self.now();
        let live = self
            .store()
            .list_workspaces(&WorkspaceQuery {
                statuses: vec![WorkspaceStatus::Creating, WorkspaceStatus::Running],
                ..WorkspaceQuery::default()
            })
            .await?;
        let mut settled = 0;
        for workspace in live {
            let Some(task_id) = workspace.task_id else {
                continue;
            };
            let Some(task) = self.store().get_task(task_id).await? else {
                continue;
            };
            if task.workspace_id != Some(workspace.id) || task.status_changed_at >= began {
                continue;
            }
            let (effects, session) = match task.status {
                TaskStatus::Completed => (
                    vec![TaskEffect::DestroyWorkspace, TaskEffect::ReleaseNode],
                    SessionStatus::Completed,
                ),
                TaskStatus::Failed | TaskStatus::Cancelled => {
                    (vec![TaskEffect::StopAgent], SessionStatus::Stopped)
                }
                _ => continue,
            };
            tracing::info!(task = %task.id, status = %task.status, workspace = %workspace.id, "resuming an ended task whose workspace was left as it ran");
            self.run_effects(&task, effects).await?;
            self.set_session(&task, Some(session), None).await;
            settled += 1;
        }
        Ok(settled)
    }

    /// Sends a delegated task's create-workspace command again while its workspace is still
    /// `creating`; `Ok(false)` when there is nothing to resend.
    async fn resend_workspace(&self, task: &kiln_core::Task) -> Result<bool, Error> {
        let (Some(node), Some(workspace_id)) = (task.node_id, task.workspace_id) else {
            return Ok(false);
        };
        let project = self
            .store()
            .get_project(task.project_id)
            .await?
            .ok_or_else(|| Error::not_found("project", task.project_id))?;
        let Some(workspace) = self.store().get_workspace(workspace_id).await? else {
            return self
                .start_unwritten_workspace(task, &project.repository_url, node, workspace_id)
                .await;
        };
        if workspace.status != WorkspaceStatus::Creating {
            return Ok(false);
        }
        let request = self.workspace_request(task, &project.repository_url, node, workspace_id);
        tracing::info!(task = %task.id, %node, workspace = %workspace_id, "resuming a delegated task: sending its workspace command again");
        self.inner.workspaces.create_workspace(&request).await?;
        Ok(true)
    }

    /// A task the stopped process delegated but whose workspace row it never wrote (it
    /// stopped between the two writes): no command was sent, so the node knows nothing of
    /// it. The workspace is started now on the node the task holds, under the id the task
    /// already names, as the stopped process would have. `Ok(false)` when the node is no
    /// longer the task's live node (the delegated-state limit fails the task then), or when
    /// another replica wrote the row first (that replica sends the command).
    async fn start_unwritten_workspace(
        &self,
        task: &kiln_core::Task,
        repository_url: &str,
        node: kiln_core::NodeId,
        workspace_id: kiln_core::WorkspaceId,
    ) -> Result<bool, Error> {
        let usable = self
            .store()
            .get_node(node)
            .await?
            .is_some_and(|n| n.state == NodeState::Active && n.claimed_by == Some(task.id));
        if !usable {
            tracing::warn!(task = %task.id, %node, "a delegated task without a workspace whose node is no longer its own; its delegated-state limit will fail it");
            return Ok(false);
        }
        tracing::info!(task = %task.id, %node, workspace = %workspace_id, "resuming a delegated task whose workspace was never written: starting it");
        match self
            .create_workspace(task, repository_url, node, workspace_id)
            .await
        {
            Ok(()) => Ok(true),
            Err(Error::Store(StoreError::Conflict { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
