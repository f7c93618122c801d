//! A pool with two providers: a project's tasks run on nodes of the project's provider, a
//! warm node is claimed only for that provider, expiry deletes at the provider that made the
//! node, a queued task says "provisioning node…" while its node boots, and a provider the pool
//! does not know fails the task with a clear reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_core::memory::{MemoryProvider, MemoryStore, Operation};
use kiln_core::{
    LifecycleClock, ManualClock, NodeProvider, NodeSpec, NodeState, NodeStore, Project, ProjectId,
    ProviderError, ProvisionedNode, SessionStore, TaskId, TaskStatus, TaskStore, UserId, VmSize,
};
use kiln_pool::memory::{MemoryWorkspaces, simulate_node_boots};
use kiln_pool::{NewTask, PROVISIONING_DETAIL, Settings, TaskRunner, WarmPool};

/// A memory provider under another name.
#[derive(Debug)]
struct Named(&'static str, Arc<MemoryProvider>);

#[async_trait]
impl NodeProvider for Named {
    fn name(&self) -> &str {
        self.0
    }
    async fn create(&self, spec: &NodeSpec) -> Result<ProvisionedNode, ProviderError> {
        self.1.create(spec).await
    }
    async fn get(&self, id: &str) -> Result<Option<ProvisionedNode>, ProviderError> {
        self.1.get(id).await
    }
    async fn destroy(&self, id: &str) -> Result<(), ProviderError> {
        self.1.destroy(id).await
    }
    async fn list(&self) -> Result<Vec<ProvisionedNode>, ProviderError> {
        self.1.list().await
    }
}

/// Polls `check` (real time, generous) while the manual clock stands still.
async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn new_task(project: ProjectId) -> NewTask {
    NewTask {
        project_id: project,
        title: "t".into(),
        description: "do it".into(),
        priority: 0,
        vm_size_override: None,
        agent_hint: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_on_their_projects_provider_and_nodes_go_back_to_it() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::starting_at_epoch();
    let local = Arc::new(MemoryProvider::new());
    let cloud = Arc::new(MemoryProvider::new());
    let pool = Arc::new(
        WarmPool::new(
            store.clone(),
            local.clone(),
            Arc::new(clock.clone()),
            Settings::default(),
        )
        .with_provider(Arc::new(Named("cloud", cloud.clone()))),
    );
    assert_eq!(pool.default_provider(), "memory");
    let boot_time = Duration::from_secs(90);
    let _boots = simulate_node_boots(pool.clone(), boot_time).await;
    let workspaces = Arc::new(MemoryWorkspaces::new());
    let runner = TaskRunner::new(pool.clone(), workspaces.clone());
    let owner = UserId::new();
    let project = |provider: &str| Project {
        id: ProjectId::new(),
        owner,
        name: provider.into(),
        repository_url: "/srv/repo.git".into(),
        default_vm_size: VmSize::Small,
        provider: provider.into(),
        created_at: clock.now(),
        updated_at: clock.now(),
    };
    let on_cloud = project("cloud");
    store.create_project(&on_cloud).await.unwrap();

    // Cold start on the cloud provider: the queued task says a node is being provisioned.
    let task = runner.run_now(new_task(on_cloud.id)).await.unwrap();
    assert_eq!(task.status, TaskStatus::Queued);
    let queued = until("the provisioning note", async || {
        let t = store.get_task(task.id).await.unwrap().unwrap();
        (t.status_detail.is_some()).then_some(t)
    })
    .await;
    assert_eq!(queued.status_detail.as_deref(), Some(PROVISIONING_DETAIL));
    assert_eq!(queued.status, TaskStatus::Queued);
    until("the cloud server", async || {
        (cloud.servers().len() == 1).then_some(())
    })
    .await;
    assert!(local.servers().is_empty(), "nothing asked of the default");

    clock.advance(boot_time);
    let request = until("the workspace request", async || {
        workspaces.created().first().cloned()
    })
    .await;
    let delegated = store.get_task(task.id).await.unwrap().unwrap();
    assert_eq!(delegated.status, TaskStatus::Delegated);
    assert_eq!(
        delegated.status_detail, None,
        "the note goes with the status"
    );
    let node = store.get_node(request.node_id).await.unwrap().unwrap();
    assert_eq!(node.provider, "cloud");

    runner
        .agent_started(request.workspace_id, Some(format!("task/{}", task.id)))
        .await
        .unwrap();
    runner
        .completed(request.workspace_id, None, None, Some("done".into()))
        .await
        .unwrap();
    let node = store.get_node(request.node_id).await.unwrap().unwrap();
    assert_eq!(node.state, NodeState::Warm);

    // The warm cloud node is not claimed for the default provider, only for its own.
    assert!(
        pool.claim_warm("memory", owner, VmSize::Small, None, TaskId::new())
            .await
            .unwrap()
            .is_none()
    );

    // Expiry deletes it at the provider that made it.
    clock.advance(Settings::default().warm_timeout);
    pool.expire_due().await.unwrap();
    assert_eq!(
        store.get_node(node.id).await.unwrap().unwrap().state,
        NodeState::Destroyed
    );
    assert!(cloud.servers().is_empty());
    assert_eq!(local.calls(Operation::Destroy), 0);

    // A provider the pool does not know fails the task, saying which.
    let nowhere = project("nowhere");
    store.create_project(&nowhere).await.unwrap();
    let task = runner.run_now(new_task(nowhere.id)).await.unwrap();
    let failed = until("the failure", async || {
        let t = store.get_task(task.id).await.unwrap().unwrap();
        (t.status == TaskStatus::Failed).then_some(t)
    })
    .await;
    let reason = failed.error_message.unwrap();
    assert!(
        reason.contains("no node provider named \"nowhere\""),
        "{reason}"
    );
}
