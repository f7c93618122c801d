//! Shared test harness: a pool and a runner over the memory store and provider, on a
//! manual clock.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::memory::{MemoryProvider, MemoryStore};
use kiln_core::{
    LifecycleClock, ManualClock, Node, NodeBootstrap, NodeId, NodeProvider, NodeSpec, NodeState,
    NodeStore, Project, ProjectId, SessionStore, Store, Task, TaskId, TaskStatus, Timestamp,
    UserId, VmSize, WorkspaceId, WorkspaceStatus,
};
use kiln_pool::memory::MemoryWorkspaces;
use kiln_pool::{NewTask, Settings, TaskRunner, WarmPool};

pub const MINUTE: Duration = Duration::from_secs(60);

pub struct Harness {
    pub store: Arc<dyn Store>,
    pub provider: Arc<MemoryProvider>,
    pub clock: ManualClock,
    pub pool: Arc<WarmPool>,
    pub nodes: Arc<MemoryWorkspaces>,
    pub runner: TaskRunner,
    pub owner: UserId,
    pub project: Project,
}

impl Harness {
    /// The stored task.
    pub async fn task(&self, id: TaskId) -> Task {
        self.store.get_task(id).await.unwrap().unwrap()
    }

    /// The stored workspace's status.
    pub async fn workspace_status(&self, id: WorkspaceId) -> WorkspaceStatus {
        self.store.get_workspace(id).await.unwrap().unwrap().status
    }

    /// A task run to `delegated`: its workspace is being created on its node.
    pub async fn delegated_task(&self, title: &str) -> Task {
        let queued = self
            .runner
            .run_now(NewTask {
                project_id: self.project.id,
                title: title.into(),
                description: format!("{title}: do it"),
                priority: 0,
                vm_size_override: None,
                agent_hint: None,
            })
            .await
            .unwrap();
        eventually("the task is delegated", || async {
            self.task(queued.id).await.status == TaskStatus::Delegated
        })
        .await;
        self.task(queued.id).await
    }

    pub async fn new() -> Self {
        Self::with(Settings::default()).await
    }

    pub async fn with(settings: Settings) -> Self {
        Self::over(Arc::new(MemoryStore::new()), settings).await
    }

    /// A harness over `store` (memory, SQLite…).
    pub async fn over(store: Arc<dyn Store>, settings: Settings) -> Self {
        let clock = ManualClock::starting_at_epoch();
        let provider = Arc::new(MemoryProvider::new());
        let pool = Arc::new(WarmPool::new(
            store.clone(),
            provider.clone(),
            Arc::new(clock.clone()),
            settings,
        ));
        let nodes = Arc::new(MemoryWorkspaces::new());
        let runner = TaskRunner::new(pool.clone(), nodes.clone());
        let owner = UserId::new();
        let project = Project {
            id: ProjectId::new(),
            owner,
            name: "harness".into(),
            repository_url: "/srv/harness.git".into(),
            default_vm_size: VmSize::Small,
            provider: "memory".into(),
            created_at: clock.now(),
            updated_at: clock.now(),
        };
        store.create_project(&project).await.unwrap();
        Self {
            store,
            provider,
            clock,
            pool,
            nodes,
            runner,
            owner,
            project,
        }
    }

    /// A second pool (another replica, or the pool after a restart) over the same store,
    /// provider and clock.
    pub fn another_pool(&self, settings: Settings) -> Arc<WarmPool> {
        Arc::new(WarmPool::new(
            self.store.clone(),
            self.provider.clone(),
            Arc::new(self.clock.clone()),
            settings,
        ))
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A warm node of the owner, existing at the provider, expiring `in_` from now.
    pub async fn warm_node(&self, size: VmSize, in_: Duration) -> Node {
        let mut node = self.node(size, NodeState::Warm);
        node.warm_until = Some(kiln_core::clock::add_duration(self.now(), in_));
        self.store.insert_node(&node).await.unwrap();
        node
    }

    /// A node row in `state` with a server at the provider (not stored).
    pub fn node(&self, size: VmSize, state: NodeState) -> Node {
        let id = NodeId::new();
        let server = futures::executor::block_on(self.provider.create(&NodeSpec {
            node_id: id,
            owner: self.owner,
            size,
            location: None,
            bootstrap: NodeBootstrap {
                control_plane_url: String::new(),
                callback_token: String::new(),
                env: Default::default(),
            },
        }))
        .unwrap();
        Node {
            id,
            owner: self.owner,
            size,
            location: None,
            provider: "memory".into(),
            provider_id: Some(server.provider_id),
            state,
            warm_until: None,
            claimed_by: None,
            auto_provisioned: true,
            last_heartbeat_at: None,
            error_message: None,
            created_at: self.now(),
            updated_at: self.now(),
        }
    }

    pub async fn node_state(&self, id: NodeId) -> NodeState {
        self.store.get_node(id).await.unwrap().unwrap().state
    }

    pub fn server_exists(&self, provider_id: &str) -> bool {
        self.provider
            .servers()
            .iter()
            .any(|s| s.provider_id == provider_id)
    }
}

/// Waits (in real time, at most 5 s) until `check` holds; panics with `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Lets spawned tasks run.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// 50 tasks run at once on `store`, with nodes that boot at once and agents that finish at
/// once: every task completes, each with its own workspace, and every node ends warm.
pub async fn fifty_concurrent_runs(store: Arc<dyn Store>) -> String {
    use kiln_core::{NodeQuery, TaskQuery, TaskStatus, TaskStore};
    use kiln_pool::NewTask;

    let h = Harness::over(store, Settings::default()).await;
    let _boots = kiln_pool::memory::simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let mut requests = h.nodes.take_requests().unwrap();
    let runner = h.runner.clone();
    let agents = tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            let runner = runner.clone();
            tokio::spawn(async move {
                let branch = request.branch.clone();
                runner
                    .agent_started(request.workspace_id, branch.clone())
                    .await
                    .unwrap();
                runner
                    .completed(request.workspace_id, branch, None, Some("done".into()))
                    .await
                    .unwrap();
            });
        }
    });
    let runs: Vec<_> = (0..50)
        .map(|i| {
            let runner = h.runner.clone();
            let new = NewTask {
                project_id: h.project.id,
                title: format!("task {i}"),
                description: format!("do thing {i}"),
                priority: 0,
                vm_size_override: None,
                agent_hint: None,
            };
            tokio::spawn(async move { runner.run_now(new).await })
        })
        .collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    let store = h.store.clone();
    let project = h.project.id;
    eventually("all 50 tasks completed", || {
        let store = store.clone();
        async move {
            let tasks = store
                .list_tasks(project, &TaskQuery::default())
                .await
                .unwrap();
            tasks.len() == 50 && tasks.iter().all(|t| t.status == TaskStatus::Completed)
        }
    })
    .await;
    let tasks = h
        .store
        .list_tasks(project, &TaskQuery::default())
        .await
        .unwrap();
    let workspaces: std::collections::HashSet<_> =
        tasks.iter().map(|t| t.workspace_id.unwrap()).collect();
    assert_eq!(workspaces.len(), 50, "one workspace per task");
    assert_eq!(h.nodes.created().len(), 50);
    eventually("every node warm", || async {
        let nodes = h.store.list_nodes(&NodeQuery::default()).await.unwrap();
        nodes.iter().all(|n| n.state == NodeState::Warm)
    })
    .await;
    let nodes = h.store.list_nodes(&NodeQuery::default()).await.unwrap();
    let creates = h.provider.calls(kiln_core::memory::Operation::Create);
    assert_eq!(creates as usize, nodes.len());
    assert!(creates <= 50);
    agents.abort();
    format!(
        "50 tasks completed: {} nodes provisioned, {} runs on a reclaimed warm node",
        nodes.len(),
        50 - nodes.len()
    )
}
