//! A process that stops after claiming (or starting to provision) a queued task's node but
//! before storing `queued → delegated` leaves a node `active`, claimed by the task, that the
//! task does not name. Found by the chaos soak: 4 nodes stayed `active`, claimed by completed
//! tasks, with no workspace on them — the resumed task had taken a second node.

mod common;

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use common::{Harness, MINUTE, eventually, settle};
use futures::stream::BoxStream;
use kiln_core::memory::{MemoryStore, Operation};
use kiln_core::{
    ApiToken, ChatMessage, ChatSession, DestroyGuard, InsertOutcome, MessageId, MessagePage, Node,
    NodeId, NodeQuery, NodeState, NodeStore, Project, ProjectId, SecretKey, SecretKind,
    SecretStore, SessionId, SessionPatch, SessionQuery, SessionStatus, SessionStore, StoreError,
    StoreEvent, StoredMessage, StoredSecret, Task, TaskId, TaskQuery, TaskStatus, TaskStore,
    Timestamp, User, UserId, UserStore, VmSize, Workspace, WorkspaceId, WorkspaceQuery,
    WorkspaceStatus,
};
use kiln_pool::memory::{MemoryWorkspaces, simulate_node_boots};
use kiln_pool::{Resumed, Settings, TaskRunner};

fn restarted(h: &Harness) -> (TaskRunner, Arc<MemoryWorkspaces>) {
    let pool = h.another_pool(Settings::default());
    let workspaces = Arc::new(MemoryWorkspaces::new());
    (TaskRunner::new(pool, workspaces.clone()), workspaces)
}

/// A task stored `queued` (Run Now) by the process that is about to stop.
async fn queued_task(h: &Harness, title: &str) -> Task {
    let now = h.now();
    let t = Task {
        id: TaskId::new(),
        project_id: h.project.id,
        owner: h.owner,
        title: title.into(),
        description: format!("{title}: do it"),
        priority: 0,
        status: TaskStatus::Queued,
        status_changed_at: now,
        status_detail: None,
        output_branch: None,
        pr_url: None,
        summary: None,
        error_message: None,
        session_id: Some(kiln_core::SessionId::new()),
        workspace_id: None,
        node_id: None,
        vm_size_override: None,
        agent_hint: None,
        attempt: 1,
        created_at: now,
        updated_at: now,
    };
    h.store.create_task(&t).await.unwrap();
    t
}

async fn all_nodes(h: &Harness) -> Vec<Node> {
    h.store.list_nodes(&NodeQuery::default()).await.unwrap()
}

/// Runs the delegated task to completion on `runner` and returns its node.
async fn complete(h: &Harness, runner: &TaskRunner, id: TaskId) -> kiln_core::NodeId {
    let t = h.task(id).await;
    let workspace = t.workspace_id.unwrap();
    runner.agent_started(workspace, None).await.unwrap();
    runner
        .completed(workspace, None, None, Some("done".into()))
        .await
        .unwrap();
    assert_eq!(h.task(id).await.status, TaskStatus::Completed);
    assert_eq!(
        h.workspace_status(workspace).await,
        WorkspaceStatus::Destroyed
    );
    t.node_id.unwrap()
}

#[tokio::test]
async fn a_queued_task_whose_warm_node_was_claimed_before_the_restart_runs_on_that_node() {
    let h = Harness::new().await;
    let first = h.warm_node(VmSize::Small, 10 * MINUTE).await;
    let second = h.warm_node(VmSize::Small, 10 * MINUTE).await;
    let task = queued_task(&h, "Claimed, then the server stopped").await;
    // The stopped process claimed a warm node for the task and stopped before storing it.
    h.clock.advance(Duration::from_secs(1));
    let claimed = h
        .pool
        .claim_warm("memory", h.owner, VmSize::Small, None, task.id)
        .await
        .unwrap()
        .expect("a warm node to claim")
        .node;
    let spare = if claimed.id == first.id {
        second.id
    } else {
        first.id
    };
    assert_eq!(h.task(task.id).await.node_id, None);

    h.clock.advance(Duration::from_secs(1));
    let (runner, workspaces) = restarted(&h);
    assert_eq!(
        runner.resume().await.unwrap(),
        Resumed {
            queued: 1,
            ..Resumed::default()
        }
    );
    eventually("the resumed task is delegated", || async {
        h.task(task.id).await.status == TaskStatus::Delegated
    })
    .await;
    let t = h.task(task.id).await;
    assert_eq!(t.node_id, Some(claimed.id), "the node claimed for it");
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].node_id, claimed.id);
    let spare = h.store.get_node(spare).await.unwrap().unwrap();
    assert_eq!(
        (spare.state, spare.claimed_by),
        (NodeState::Warm, None),
        "the other warm node is left for other runs"
    );

    // Once the task is done no node is left claimed by it.
    let node = complete(&h, &runner, task.id).await;
    assert_eq!(node, claimed.id);
    let nodes = all_nodes(&h).await;
    assert!(
        nodes
            .iter()
            .all(|n| n.state == NodeState::Warm && n.claimed_by.is_none()),
        "every node back warm: {nodes:?}"
    );
}

#[tokio::test]
async fn a_queued_task_whose_node_was_provisioning_at_the_restart_waits_for_that_node() {
    let h = Harness::new().await;
    let task = queued_task(&h, "Provisioning, then the server stopped").await;
    // The stopped process asked the provider for a node for the task and stopped before
    // it booted.
    let mut booting = h.node(VmSize::Small, NodeState::Provisioning);
    booting.claimed_by = Some(task.id);
    h.store.insert_node(&booting).await.unwrap();
    assert_eq!(h.provider.calls(Operation::Create), 1);

    let (runner, workspaces) = restarted(&h);
    // Nodes boot at once: the one the stopped process asked for, and any new one.
    let _boots = simulate_node_boots(runner.pool().clone(), Duration::ZERO).await;
    assert_eq!(runner.resume().await.unwrap().queued, 1);
    eventually("the resumed task is delegated", || async {
        h.task(task.id).await.status == TaskStatus::Delegated
    })
    .await;
    assert_eq!(h.task(task.id).await.node_id, Some(booting.id));
    assert_eq!(workspaces.created()[0].node_id, booting.id);
    assert_eq!(
        h.provider.calls(Operation::Create),
        1,
        "no second node provisioned"
    );

    complete(&h, &runner, task.id).await;
    let nodes = all_nodes(&h).await;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(
        (nodes[0].state, nodes[0].claimed_by),
        (NodeState::Warm, None)
    );
}

/// Two acquirers of one queued task (a resume finding it while the process that queued it
/// still acquires, or two replicas resuming) both take the node claimed for it. The one whose
/// `queued → delegated` write loses must not give back the node the winner delegated to:
/// until the winner writes its workspace row the node looks empty, and a release would put
/// it back warm, unclaimed, for another task to take while this one starts on it.
#[tokio::test]
async fn the_acquirer_losing_the_race_for_a_claimed_node_leaves_it_to_the_winner() {
    let gated = Arc::new(GatedStore::new());
    let h = Harness::over(gated.clone(), Settings::default()).await;
    h.warm_node(VmSize::Small, 10 * MINUTE).await;
    h.warm_node(VmSize::Small, 10 * MINUTE).await;
    let task = queued_task(&h, "Two acquirers").await;
    let claimed = h
        .pool
        .claim_warm("memory", h.owner, VmSize::Small, None, task.id)
        .await
        .unwrap()
        .expect("a warm node to claim")
        .node;

    let (runner, workspaces) = restarted(&h);
    // Each resume starts an acquisition; both find the claimed node. The first to write
    // `delegated` is held there, so the second writes it first and wins; the winner is then
    // held before it writes its workspace row.
    gated.hold_next_delegation();
    runner.resume().await.unwrap();
    runner.resume().await.unwrap();
    eventually(
        "the winner holds before writing its workspace row",
        || async { gated.held_workspace_rows() == 1 },
    )
    .await;
    assert_eq!(h.task(task.id).await.node_id, Some(claimed.id));
    // The loser's write goes on: it conflicts, finds the task delegated, and gives up.
    gated.let_delegation_go();
    settle().await;
    let node = h.store.get_node(claimed.id).await.unwrap().unwrap();
    assert_eq!(
        (node.state, node.claimed_by),
        (NodeState::Active, Some(task.id)),
        "the winner's node stays claimed while its workspace is not written yet"
    );

    gated.let_workspace_rows_go();
    eventually("the workspace is created", || async {
        workspaces.created().len() == 1
    })
    .await;
    assert_eq!(workspaces.created()[0].node_id, claimed.id);
    let t = h.task(task.id).await;
    let rows = h
        .store
        .list_workspaces(&WorkspaceQuery {
            node_id: Some(claimed.id),
            ..WorkspaceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|w| Some(w.id)).collect::<Vec<_>>(),
        vec![t.workspace_id]
    );
    let node = h.store.get_node(claimed.id).await.unwrap().unwrap();
    assert_eq!(
        (node.state, node.claimed_by),
        (NodeState::Active, Some(task.id))
    );
    let warm = all_nodes(&h)
        .await
        .into_iter()
        .filter(|n| n.state == NodeState::Warm && n.claimed_by.is_none())
        .count();
    assert_eq!(warm, 1, "the other warm node untouched");
}

/// The memory store, with two writes that can be held: the next write of a task to
/// `delegated`, and every workspace row.
#[derive(Debug)]
struct GatedStore {
    inner: MemoryStore,
    hold_delegation: std::sync::atomic::AtomicBool,
    delegation: tokio::sync::Semaphore,
    rows_held: std::sync::atomic::AtomicUsize,
    rows: tokio::sync::Semaphore,
}

impl GatedStore {
    fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            hold_delegation: false.into(),
            delegation: tokio::sync::Semaphore::new(0),
            rows_held: 0.into(),
            rows: tokio::sync::Semaphore::new(0),
        }
    }

    fn hold_next_delegation(&self) {
        self.hold_delegation.store(true, Ordering::SeqCst);
    }

    fn let_delegation_go(&self) {
        self.delegation.add_permits(1);
    }

    fn held_workspace_rows(&self) -> usize {
        self.rows_held.load(Ordering::SeqCst)
    }

    fn let_workspace_rows_go(&self) {
        self.rows.add_permits(tokio::sync::Semaphore::MAX_PERMITS);
    }
}

macro_rules! forward {
    ($($trait:ident { $(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* })*) => {
        $(
            #[async_trait]
            impl $trait for GatedStore {
                $(
                    async fn $name(&self $(, $arg: $ty)*) -> $ret {
                        self.inner.$name($($arg),*).await
                    }
                )*
            }
        )*
    };
}

#[async_trait]
impl TaskStore for GatedStore {
    async fn create_task(&self, task: &Task) -> Result<(), StoreError> {
        self.inner.create_task(task).await
    }
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.inner.get_task(id).await
    }
    async fn list_tasks(
        &self,
        project: ProjectId,
        query: &TaskQuery,
    ) -> Result<Vec<Task>, StoreError> {
        self.inner.list_tasks(project, query).await
    }
    async fn update_task(&self, task: &Task, expected: TaskStatus) -> Result<(), StoreError> {
        if task.status == TaskStatus::Delegated
            && self.hold_delegation.swap(false, Ordering::SeqCst)
        {
            self.delegation.acquire().await.unwrap().forget();
        }
        self.inner.update_task(task, expected).await
    }
    async fn delete_task(&self, id: TaskId) -> Result<bool, StoreError> {
        self.inner.delete_task(id).await
    }
    async fn list_tasks_by_status(&self, statuses: &[TaskStatus]) -> Result<Vec<Task>, StoreError> {
        self.inner.list_tasks_by_status(statuses).await
    }
    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        self.rows_held.fetch_add(1, Ordering::SeqCst);
        self.rows.acquire().await.unwrap().forget();
        self.inner.create_workspace(workspace).await
    }
    async fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>, StoreError> {
        self.inner.get_workspace(id).await
    }
    async fn update_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        self.inner.update_workspace(workspace).await
    }
    async fn list_workspaces(&self, query: &WorkspaceQuery) -> Result<Vec<Workspace>, StoreError> {
        self.inner.list_workspaces(query).await
    }
}

forward! {
    SessionStore {
        fn create_project(&self, project: &Project) -> Result<(), StoreError>;
        fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError>;
        fn list_projects(&self, owner: UserId) -> Result<Vec<Project>, StoreError>;
        fn update_project(&self, project: &Project) -> Result<(), StoreError>;
        fn delete_project(&self, id: ProjectId) -> Result<bool, StoreError>;
        fn create_session(&self, session: &ChatSession) -> Result<(), StoreError>;
        fn get_session(&self, id: SessionId) -> Result<Option<ChatSession>, StoreError>;
        fn list_sessions(&self, project: ProjectId, query: &SessionQuery) -> Result<Vec<ChatSession>, StoreError>;
        fn list_chats_by_status(&self, statuses: &[SessionStatus]) -> Result<Vec<ChatSession>, StoreError>;
        fn update_session(&self, id: SessionId, patch: &SessionPatch, now: Timestamp) -> Result<ChatSession, StoreError>;
        fn insert_messages(&self, messages: &[ChatMessage], now: Timestamp) -> Result<InsertOutcome, StoreError>;
        fn list_messages(&self, session: SessionId, page: MessagePage) -> Result<Vec<StoredMessage>, StoreError>;
        fn update_message_content(&self, id: MessageId, content: &str, now: Timestamp) -> Result<(), StoreError>;
        fn publish(&self, event: &StoreEvent) -> Result<(), StoreError>;
        fn subscribe(&self) -> Result<BoxStream<'static, StoreEvent>, StoreError>;
    }
    UserStore {
        fn create_user(&self, user: &User) -> Result<(), StoreError>;
        fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError>;
        fn get_user_by_name(&self, name: &str) -> Result<Option<User>, StoreError>;
        fn create_api_token(&self, token: &ApiToken) -> Result<(), StoreError>;
        fn find_api_token(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError>;
        fn delete_api_token(&self, id: uuid::Uuid) -> Result<bool, StoreError>;
        fn list_api_tokens(&self, user: UserId) -> Result<Vec<ApiToken>, StoreError>;
    }
    SecretStore {
        fn put_secret(&self, secret: &StoredSecret) -> Result<StoredSecret, StoreError>;
        fn get_secret(&self, key: &SecretKey) -> Result<Option<StoredSecret>, StoreError>;
        fn delete_secret(&self, key: &SecretKey) -> Result<bool, StoreError>;
        fn secret_owners(&self, kind: SecretKind) -> Result<Vec<UserId>, StoreError>;
    }
    NodeStore {
        fn insert_node(&self, node: &Node) -> Result<(), StoreError>;
        fn get_node(&self, id: NodeId) -> Result<Option<Node>, StoreError>;
        fn list_nodes(&self, query: &NodeQuery) -> Result<Vec<Node>, StoreError>;
        fn claim_warm_node(&self, owner: UserId, size: VmSize, provider: &str, location: Option<&str>, task: TaskId, now: Timestamp) -> Result<Option<Node>, StoreError>;
        fn set_node_provider_id(&self, id: NodeId, provider_id: &str, now: Timestamp) -> Result<(), StoreError>;
        fn mark_node_ready(&self, id: NodeId, now: Timestamp) -> Result<Node, StoreError>;
        fn release_node(&self, id: NodeId, warm_until: Timestamp, now: Timestamp) -> Result<Node, StoreError>;
        fn begin_destroy_node(&self, id: NodeId, guard: DestroyGuard, now: Timestamp) -> Result<Node, StoreError>;
        fn mark_node_destroyed(&self, id: NodeId, now: Timestamp) -> Result<(), StoreError>;
        fn mark_node_failed(&self, id: NodeId, reason: &str, now: Timestamp) -> Result<Node, StoreError>;
        fn record_heartbeat(&self, id: NodeId, now: Timestamp) -> Result<(), StoreError>;
    }
}
