//! The [`TaskRunner`]: drives tasks through [`kiln_core::task`]'s state machine and executes
//! the effects it asks for against the store, the [`WarmPool`] and a [`WorkspaceController`].

use std::sync::Arc;

use kiln_core::protocol::Prompt;
use kiln_core::task::{TaskEffect, TaskEvent, TransitionError};
use kiln_core::{
    Change, ChatMessage, ChatSession, MessageId, NodeId, NodeQuery, NodeState, ProjectId, Role,
    SessionId, SessionPatch, SessionStatus, Store, StoreError, StoreEvent, Task, TaskId,
    TaskStatus, UserId, VmSize, Workspace, WorkspaceId, WorkspaceQuery, WorkspaceStatus,
};

use crate::controller::{DestroyProgress, WorkspaceController, WorkspaceRequest};
use crate::error::Error;
use crate::pool::{WarmPool, live_workspace_statuses};

/// The [`status_detail`](Task::status_detail) of a queued task while its new node boots.
pub const PROVISIONING_DETAIL: &str = "provisioning node…";

/// A task to create and run at once (Run Now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// The project.
    pub project_id: ProjectId,
    /// Short title.
    pub title: String,
    /// What the agent is asked to do (the first prompt).
    pub description: String,
    /// Higher runs first.
    pub priority: i32,
    /// Overrides the project's default VM size.
    pub vm_size_override: Option<VmSize>,
    /// Which agent to use.
    pub agent_hint: Option<String>,
}

/// The outcome of one guarded step of a task.
enum Step {
    /// The event moved the task (stored by compare-and-set); run these effects.
    Applied {
        task: Task,
        effects: Vec<TaskEffect>,
    },
    /// The event changed nothing (a tick before the limit).
    Unchanged,
    /// The machine refused the event in the task's current state.
    Refused { task: Task, error: TransitionError },
}

/// Drives tasks through their runs. Cheap to clone; clones share everything.
///
/// Every decision comes from [`Task::apply`]; every task write is a compare-and-set on the
/// status the decision was made from, so of two concurrent writers (replicas, repeated
/// callbacks) exactly one executes the effects — a repeated run or callback never starts a
/// second workspace nor provisions a second node.
#[derive(Debug, Clone)]
pub struct TaskRunner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Arc<WarmPool>,
    workspaces: Arc<dyn WorkspaceController>,
    /// Chats whose resumed start runs in this process (a second resume leaves them be).
    resuming_chats: std::sync::Mutex<std::collections::HashSet<kiln_core::SessionId>>,
    /// Workspaces the last heartbeat of their node left out.
    heartbeat_misses: reconcile::HeartbeatMisses,
}

impl TaskRunner {
    /// A runner over the pool's store and clock.
    pub fn new(pool: Arc<WarmPool>, workspaces: Arc<dyn WorkspaceController>) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                workspaces,
                resuming_chats: std::sync::Mutex::default(),
                heartbeat_misses: reconcile::HeartbeatMisses::default(),
            }),
        }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &Arc<WarmPool> {
        &self.inner.pool
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.inner.pool.store
    }

    fn now(&self) -> kiln_core::Timestamp {
        self.inner.pool.clock.now()
    }

    async fn task(&self, id: TaskId) -> Result<Task, Error> {
        self.store()
            .get_task(id)
            .await?
            .ok_or_else(|| Error::not_found("task", id))
    }

    async fn publish(&self, owner: UserId, project_id: Option<ProjectId>, change: Change) {
        let event = StoreEvent {
            owner,
            project_id,
            change,
        };
        if let Err(e) = self.store().publish(&event).await {
            tracing::warn!(error = %e, ?event, "could not publish a change");
        }
    }

    /// Applies `event` to the stored task with compare-and-set on its status, retrying when
    /// another writer moved it in between. `also` edits the task before it is written.
    async fn step(
        &self,
        id: TaskId,
        event: &TaskEvent,
        also: impl Fn(&mut Task),
    ) -> Result<Step, Error> {
        for _ in 0..16 {
            let task = self.task(id).await?;
            let mut next = task.clone();
            let effects = match next.apply(event, self.now()) {
                Ok(effects) => effects,
                Err(error) => return Ok(Step::Refused { task, error }),
            };
            if next.status == task.status && effects.is_empty() {
                return Ok(Step::Unchanged);
            }
            also(&mut next);
            match self.store().update_task(&next, task.status).await {
                Ok(()) => {
                    tracing::info!(task = %id, from = %task.status, to = %next.status, event = event.name(), "task moved");
                    self.publish(
                        next.owner,
                        Some(next.project_id),
                        Change::Task { task_id: id },
                    )
                    .await;
                    return Ok(Step::Applied {
                        task: next,
                        effects,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contended { task: id })
    }

    /// Creates a task (and its chat session with the prompt) and runs it: Run Now. The
    /// returned task is queued; the run goes on in the background. The task is written
    /// `queued` in one step, so a process stopping half-way leaves a run for
    /// [`resume`](Self::resume), never a draft nobody asked for.
    pub async fn run_now(&self, new: NewTask) -> Result<Task, Error> {
        let project = self
            .store()
            .get_project(new.project_id)
            .await?
            .ok_or_else(|| Error::not_found("project", new.project_id))?;
        let now = self.now();
        let mut task = Task {
            id: TaskId::new(),
            project_id: project.id,
            owner: project.owner,
            title: new.title,
            description: new.description,
            priority: new.priority,
            status: TaskStatus::Draft,
            status_detail: None,
            status_changed_at: now,
            output_branch: None,
            pr_url: None,
            summary: None,
            error_message: None,
            session_id: Some(SessionId::new()),
            workspace_id: None,
            node_id: None,
            vm_size_override: new.vm_size_override,
            agent_hint: new.agent_hint,
            attempt: 0,
            created_at: now,
            updated_at: now,
        };
        task.apply(&TaskEvent::Run, now)
            .map_err(|source| Error::InvalidTransition {
                task: task.id,
                source,
            })?;
        self.store().create_task(&task).await?;
        if let Err(e) = self.open_session(&task, true).await {
            let reason = format!("the chat session could not be opened: {e}");
            self.finish(task.id, &TaskEvent::Failed { reason }).await?;
            return Err(e);
        }
        self.run_queued(task.id).await
    }

    /// Starts the run of a task stored `queued` by its creator (Run Now written in one
    /// step, its session and prompt already stored): announces it and acquires its node in
    /// the background. A task in any other status is returned as it is.
    pub async fn run_queued(&self, id: TaskId) -> Result<Task, Error> {
        let task = self.task(id).await?;
        if task.status != TaskStatus::Queued {
            return Ok(task);
        }
        self.publish(
            task.owner,
            Some(task.project_id),
            Change::Task { task_id: id },
        )
        .await;
        self.spawn_acquire(id);
        Ok(task)
    }

    /// Acquires `id`'s node and starts its workspace in the background.
    fn spawn_acquire(&self, id: TaskId) {
        let runner = self.clone();
        tokio::spawn(async move {
            if let Err(e) = runner.acquire_and_delegate(id).await {
                tracing::warn!(task = %id, error = %e, "task run stopped on an error");
            }
        });
    }

    /// Runs a draft or ready task: queued at once (returned), then a node is acquired and the
    /// workspace started in the background. Idempotent: a task already running is returned
    /// as it is.
    pub async fn run(&self, id: TaskId) -> Result<Task, Error> {
        self.start(id, &TaskEvent::Run, false).await
    }

    /// Like [`run`](Self::run), but returns only once the task is delegated to a workspace
    /// (or failed): for callers that want the whole acquisition in their own task.
    pub async fn run_inline(&self, id: TaskId) -> Result<Task, Error> {
        self.start(id, &TaskEvent::Run, true).await
    }

    /// Runs a failed or cancelled task again (a new attempt, same session, a fresh workspace).
    /// The workspaces the task kept are discarded first, so their node is released and the
    /// new attempt may take it back warm. Idempotent like [`run`](Self::run).
    pub async fn rerun(&self, id: TaskId) -> Result<Task, Error> {
        self.start(id, &TaskEvent::Rerun, false).await
    }

    /// Like [`rerun`](Self::rerun), returning once the task is delegated (or failed).
    pub async fn rerun_inline(&self, id: TaskId) -> Result<Task, Error> {
        self.start(id, &TaskEvent::Rerun, true).await
    }

    async fn start(&self, id: TaskId, event: &TaskEvent, inline: bool) -> Result<Task, Error> {
        if *event == TaskEvent::Rerun {
            self.discard_before_rerun(id).await?;
        }
        let new_session = SessionId::new();
        let (task, effects) = match self
            .step(id, event, |t| {
                if t.session_id.is_none() {
                    t.session_id = Some(new_session);
                }
            })
            .await?
        {
            Step::Applied { task, effects } => (task, effects),
            Step::Refused { task, .. } if task.status.is_running() => return Ok(task),
            Step::Refused { task, error } => {
                return Err(Error::InvalidTransition {
                    task: task.id,
                    source: error,
                });
            }
            Step::Unchanged => return self.task(id).await,
        };
        if let Err(e) = self
            .open_session(&task, task.session_id == Some(new_session))
            .await
        {
            let reason = format!("the chat session could not be opened: {e}");
            self.finish(id, &TaskEvent::Failed { reason }).await?;
            return Err(e);
        }
        if effects.contains(&TaskEffect::AcquireNode) {
            if inline {
                return self.acquire_and_delegate(task.id).await;
            }
            self.spawn_acquire(id);
        }
        Ok(task)
    }

    /// Discards what a failed or cancelled task kept before it runs again. Before the re-run
    /// is stored: once the task runs again it holds its old node's claim, and the node would
    /// not be released. A discard that fails leaves the workspace to the retention limit.
    async fn discard_before_rerun(&self, id: TaskId) -> Result<(), Error> {
        let task = self.task(id).await?;
        if !matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
            return Ok(());
        }
        if let Err(e) = self.discard_kept_workspaces(id).await {
            tracing::warn!(task = %id, error = %e, "could not discard the kept workspace before a re-run");
        }
        Ok(())
    }

    /// Creates the task's session (first run) or reopens it (re-run), with the prompt stored
    /// under its derived id so the node's copy deduplicates to it.
    async fn open_session(&self, task: &Task, create: bool) -> Result<(), Error> {
        let Some(session_id) = task.session_id else {
            return Ok(());
        };
        let now = self.now();
        if create {
            let session = ChatSession {
                id: session_id,
                project_id: task.project_id,
                owner: task.owner,
                task_id: Some(task.id),
                workspace_id: None,
                topic: Some(kiln_core::model::topic_from_message(&task.title)),
                status: SessionStatus::Pending,
                agent_hint: None,
                vm_size: None,
                message_count: 0,
                created_at: now,
                updated_at: now,
            };
            match self.store().create_session(&session).await {
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            let patch = SessionPatch {
                status: Some(SessionStatus::Pending),
                workspace_id: Some(None),
                topic: None,
            };
            match self.store().update_session(session_id, &patch, now).await {
                Ok(_) => {}
                Err(StoreError::NotFound { .. }) => {
                    return Box::pin(self.open_session(task, true)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let prompt = ChatMessage {
            id: MessageId::for_task_prompt(task.id),
            session_id,
            role: Role::User,
            content: task.description.clone(),
            tool: None,
            seq: None,
            created_at: now,
        };
        self.store().insert_messages(&[prompt], now).await?;
        self.publish(
            task.owner,
            Some(task.project_id),
            Change::Session { session_id },
        )
        .await;
        Ok(())
    }

    /// Queued → acquire a node → delegated → workspace started.
    async fn acquire_and_delegate(&self, id: TaskId) -> Result<Task, Error> {
        let task = self.task(id).await?;
        if task.status != TaskStatus::Queued {
            return Ok(task);
        }
        let project = self
            .store()
            .get_project(task.project_id)
            .await?
            .ok_or_else(|| Error::not_found("project", task.project_id))?;
        let acquired = match self.acquire_node(&task, &project).await {
            Ok(acquired) => acquired,
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "no node for the task");
                let reason = e.to_string();
                self.finish(id, &TaskEvent::Failed { reason }).await?;
                return self.task(id).await;
            }
        };
        let node = acquired.node.id;
        let workspace_id = WorkspaceId::new();
        let (task, effects) = match self
            .step(id, &TaskEvent::NodeAcquired { node }, |t| {
                t.workspace_id = Some(workspace_id);
            })
            .await?
        {
            Step::Applied { task, effects } => (task, effects),
            _ => {
                let task = self.task(id).await?;
                // Another acquirer (a replica's resume) delegated the task first, to this
                // same node (the node claimed for the run, see `acquire_node`): the node is
                // the winner's, whose workspace may not be written yet, so it stays.
                if task.node_id == Some(node) {
                    tracing::info!(task = %id, %node, "task already delegated to this node by another acquirer");
                    return Ok(task);
                }
                // Cancelled or timed out while the node was coming, or delegated to another
                // node: give this one back.
                tracing::info!(task = %id, %node, "task left the queue before its node came; releasing the node");
                self.inner.pool.release(node).await?;
                return self.task(id).await;
            }
        };
        for effect in effects {
            if let TaskEffect::CreateWorkspace { node } = effect {
                self.create_workspace(&task, &project.repository_url, node, workspace_id)
                    .await?;
            }
        }
        self.task(id).await
    }

    /// The node already claimed for this run of the task, else a warm node of the project's
    /// provider, else a new one; while a new one boots the queued task says so in its
    /// [`status_detail`](Task::status_detail).
    async fn acquire_node(
        &self,
        task: &Task,
        project: &kiln_core::Project,
    ) -> Result<crate::pool::Acquired, Error> {
        let pool = &self.inner.pool;
        if let Some(acquired) = self.claimed_for_run(task).await? {
            return Ok(acquired);
        }
        let size = task.effective_vm_size(project);
        let location = pool.settings().location;
        let provider = project.provider.as_str();
        if let Some(acquired) = pool
            .claim_warm(provider, task.owner, size, location.as_deref(), task.id)
            .await?
        {
            return Ok(acquired);
        }
        self.set_status_detail(task.id, TaskStatus::Queued, PROVISIONING_DETAIL)
            .await;
        pool.provision_for(provider, task.owner, size, location.as_deref(), task.id)
            .await
    }

    /// The node a stopped process claimed (or began provisioning) for this run of the
    /// queued `task` but never stored as the task's node: the process stopped between the
    /// claim and the `queued → delegated` write. Without this the resumed run would take a
    /// second node and leave the first `active`, claimed by the task, with nothing on it.
    ///
    /// Only a node claimed since the task was queued and with no workspace on it counts: an
    /// older claim is an earlier attempt's, released once its discarded workspace is gone
    /// (the same rule [`workspace_destroyed`](Self::workspace_destroyed) follows, so it never
    /// releases a node taken here). A node still provisioning is waited for, as
    /// [`WarmPool::claimed_for`] waits, when the task holds no active node; should it fail
    /// to come, the run acquires another as usual.
    async fn claimed_for_run(&self, task: &Task) -> Result<Option<crate::pool::Acquired>, Error> {
        let claimed: Vec<_> = self
            .store()
            .list_nodes(&NodeQuery {
                owner: Some(task.owner),
                states: vec![NodeState::Active, NodeState::Provisioning],
                ..NodeQuery::default()
            })
            .await?
            .into_iter()
            .filter(|n| n.claimed_by == Some(task.id))
            .collect();
        for node in &claimed {
            if node.state != NodeState::Active || node.updated_at < task.status_changed_at {
                continue;
            }
            let on_it = self
                .store()
                .list_workspaces(&WorkspaceQuery {
                    node_id: Some(node.id),
                    statuses: live_workspace_statuses(),
                    ..WorkspaceQuery::default()
                })
                .await?;
            if on_it.is_empty() {
                tracing::info!(task = %task.id, node = %node.id, "reusing the node already claimed for the task");
                return Ok(Some(crate::pool::Acquired {
                    node: node.clone(),
                    source: crate::pool::AcquireSource::Warm,
                    waited: std::time::Duration::ZERO,
                }));
            }
        }
        let provisioning = claimed.iter().all(|n| n.state == NodeState::Provisioning);
        if claimed.is_empty() || !provisioning {
            return Ok(None);
        }
        self.set_status_detail(task.id, TaskStatus::Queued, PROVISIONING_DETAIL)
            .await;
        match self.inner.pool.claimed_for(task.owner, task.id).await {
            Ok(acquired) => Ok(acquired),
            // Failed or timed out (and destroyed by the pool): the run acquires another.
            Err(e) => {
                tracing::warn!(task = %task.id, error = %e, "the node provisioning for the task did not come; acquiring another");
                Ok(None)
            }
        }
    }

    /// Notes progress on a task still in `status` (best effort: a task that moved on keeps
    /// its new status's detail).
    async fn set_status_detail(&self, id: TaskId, status: TaskStatus, detail: &str) {
        let result = async {
            let mut task = self.task(id).await?;
            if task.status != status {
                return Ok(());
            }
            task.status_detail = Some(detail.to_owned());
            task.updated_at = self.now();
            self.store().update_task(&task, status).await?;
            self.publish(
                task.owner,
                Some(task.project_id),
                Change::Task { task_id: id },
            )
            .await;
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(task = %id, error = %e, "could not note the task's progress");
        }
    }

    async fn create_workspace(
        &self,
        task: &Task,
        repository_url: &str,
        node: NodeId,
        workspace_id: WorkspaceId,
    ) -> Result<(), Error> {
        let now = self.now();
        let session_id = task.session_id.unwrap_or_default();
        let workspace = Workspace {
            id: workspace_id,
            node_id: node,
            owner: task.owner,
            project_id: Some(task.project_id),
            task_id: Some(task.id),
            session_id: Some(session_id),
            branch: Some(task.branch_name()),
            status: WorkspaceStatus::Creating,
            created_at: now,
            updated_at: now,
        };
        self.store().create_workspace(&workspace).await?;
        self.publish(
            task.owner,
            Some(task.project_id),
            Change::Workspace { workspace_id },
        )
        .await;
        self.set_session(task, None, Some(Some(workspace_id))).await;
        let request = self.workspace_request(task, repository_url, node, workspace_id);
        if let Err(e) = self.inner.workspaces.create_workspace(&request).await {
            tracing::warn!(task = %task.id, workspace = %workspace_id, error = %e, "workspace did not start");
            let reason = format!("the workspace could not be started: {e}");
            self.finish(task.id, &TaskEvent::Failed { reason }).await?;
        }
        Ok(())
    }

    /// The create-workspace request of a task's run on `node`.
    fn workspace_request(
        &self,
        task: &Task,
        repository_url: &str,
        node: NodeId,
        workspace_id: WorkspaceId,
    ) -> WorkspaceRequest {
        WorkspaceRequest {
            node_id: node,
            workspace_id,
            project_id: task.project_id,
            task_id: Some(task.id),
            session_id: task.session_id.unwrap_or_default(),
            repository_url: repository_url.to_owned(),
            branch: Some(task.branch_name()),
            prompt: Some(Prompt {
                message_id: MessageId::for_task_prompt(task.id),
                text: task.description.clone(),
            }),
            agent_hint: task.agent_hint.clone(),
        }
    }

    async fn set_session(
        &self,
        task: &Task,
        status: Option<SessionStatus>,
        workspace_id: Option<Option<WorkspaceId>>,
    ) {
        let Some(session_id) = task.session_id else {
            return;
        };
        let patch = SessionPatch {
            status,
            workspace_id,
            topic: None,
        };
        match self
            .store()
            .update_session(session_id, &patch, self.now())
            .await
        {
            Ok(_) => {
                self.publish(
                    task.owner,
                    Some(task.project_id),
                    Change::Session { session_id },
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(session = %session_id, error = %e, "could not update the session")
            }
        }
    }

    async fn set_workspace(
        &self,
        workspace_id: WorkspaceId,
        status: WorkspaceStatus,
        branch: Option<&str>,
    ) -> Result<Option<Workspace>, Error> {
        let Some(mut workspace) = self.store().get_workspace(workspace_id).await? else {
            return Ok(None);
        };
        // A destroyed workspace stays destroyed, whatever late report arrives.
        if workspace.status == WorkspaceStatus::Destroyed
            || (workspace.status == status && branch.is_none())
        {
            return Ok(Some(workspace));
        }
        workspace.status = status;
        if let Some(branch) = branch {
            workspace.branch = Some(branch.to_owned());
        }
        workspace.updated_at = self.now();
        self.store().update_workspace(&workspace).await?;
        self.publish(
            workspace.owner,
            workspace.project_id,
            Change::Workspace { workspace_id },
        )
        .await;
        Ok(Some(workspace))
    }

    /// Moves the task to a terminal state (or applies another event) and runs the effects,
    /// so the session, workspace and node follow in the same step. `Ok(false)` when the
    /// machine refused the event (a late or repeated report).
    async fn finish(&self, id: TaskId, event: &TaskEvent) -> Result<bool, Error> {
        let (task, effects) = match self.step(id, event, |_| {}).await? {
            Step::Applied { task, effects } => (task, effects),
            Step::Unchanged => return Ok(false),
            Step::Refused { task, error } => {
                tracing::debug!(task = %task.id, %error, "event ignored");
                return Ok(false);
            }
        };
        self.run_effects(&task, effects).await?;
        match task.status {
            TaskStatus::Completed => {
                self.set_session(&task, Some(SessionStatus::Completed), None)
                    .await;
            }
            TaskStatus::Failed | TaskStatus::Cancelled => {
                self.set_session(&task, Some(SessionStatus::Stopped), None)
                    .await;
            }
            TaskStatus::InProgress => {
                self.set_session(&task, Some(SessionStatus::Active), None)
                    .await;
            }
            _ => {}
        }
        Ok(true)
    }

    /// Sends the destroy command of `workspace` (already `destroying`) to `node`; a destroy
    /// done at once is recorded at once. A command that cannot be sent is logged (`whose`
    /// names the task or chat) and answered `false`: the workspace stays `destroying`, which
    /// the next resume sends again, and its node stays until its max lifetime.
    pub(super) async fn send_destroy(
        &self,
        node: NodeId,
        workspace: WorkspaceId,
        whose: &str,
    ) -> Result<bool, Error> {
        match self
            .inner
            .workspaces
            .destroy_workspace(node, workspace)
            .await
        {
            Ok(DestroyProgress::Destroyed) => {
                self.workspace_destroyed(workspace).await?;
                Ok(true)
            }
            Ok(DestroyProgress::Requested) => Ok(true),
            Err(e) => {
                tracing::warn!(%node, %workspace, error = %e, "could not send a workspace's destroy command ({whose})");
                Ok(false)
            }
        }
    }

    async fn run_effects(&self, task: &Task, effects: Vec<TaskEffect>) -> Result<(), Error> {
        for effect in effects {
            let (Some(workspace), Some(node)) = (task.workspace_id, task.node_id) else {
                continue;
            };
            match effect {
                TaskEffect::StopAgent => {
                    if let Err(e) = self.inner.workspaces.stop_agent(node, workspace).await {
                        tracing::warn!(task = %task.id, %workspace, error = %e, "could not stop the agent");
                    }
                    self.set_workspace(workspace, WorkspaceStatus::Stopped, None)
                        .await?;
                }
                TaskEffect::DestroyWorkspace => {
                    self.set_workspace(workspace, WorkspaceStatus::Destroying, None)
                        .await?;
                    self.send_destroy(node, workspace, &format!("task {}", task.id))
                        .await?;
                }
                // Done by `workspace_destroyed` once the node is empty.
                TaskEffect::ReleaseNode
                | TaskEffect::AcquireNode
                | TaskEffect::CreateWorkspace { .. } => {}
            }
        }
        Ok(())
    }
}

mod chat;
mod kept;
mod reconcile;
mod reports;
mod resume;
mod tick;

pub use chat::{NewChat, chat_claim};
pub use reconcile::Reconciled;
pub use resume::Resumed;
