//! Kept workspaces (of failed and cancelled tasks) are discarded — explicitly, by a re-run,
//! by deleting the task, and after the retention limit — and their node goes back to the
//! pool. Memory store (and SQLite for the retention sweep), manual clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, MINUTE, eventually};
use kiln_backends::SqliteStore;
use kiln_core::{
    MessagePage, NodeState, NodeStore, Role, SessionStore, Store, Task, TaskStatus, TaskStore,
    WorkspaceId, WorkspaceStatus,
};
use kiln_pool::memory::simulate_node_boots;
use kiln_pool::{DestroyProgress, Error, Settings};

/// A task that ran on a node and failed there: its workspace kept (stopped), its node claimed.
async fn failed_task(h: &Harness, title: &str) -> (Task, WorkspaceId) {
    let t = h.delegated_task(title).await;
    let ws = t.workspace_id.unwrap();
    // The task is delegated just before its workspace row is written.
    eventually("the workspace is stored", || async {
        h.store.get_workspace(ws).await.unwrap().is_some()
    })
    .await;
    h.runner.agent_started(ws, None).await.unwrap();
    h.runner.failed(ws, "tests failed").await.unwrap();
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Stopped);
    (h.task(t.id).await, ws)
}

async fn node_of(h: &Harness, t: &Task) -> kiln_core::Node {
    h.store.get_node(t.node_id.unwrap()).await.unwrap().unwrap()
}

#[tokio::test]
async fn discarding_a_failed_tasks_workspace_destroys_it_and_releases_the_node_warm() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, ws) = failed_task(&h, "Broken").await;
    assert_eq!(node_of(&h, &t).await.claimed_by, Some(t.id));

    let discarded = h.runner.discard_workspace(ws).await.unwrap();
    assert_eq!(discarded.status, WorkspaceStatus::Destroyed);
    assert_eq!(
        h.nodes.destroyed(),
        vec![ws],
        "the destroy went to the node"
    );
    let node = node_of(&h, &t).await;
    assert_eq!((node.state, node.claimed_by), (NodeState::Warm, None));
    // The task keeps its outcome; discarding again changes nothing.
    assert_eq!(h.task(t.id).await.status, TaskStatus::Failed);
    let again = h.runner.discard_workspace(ws).await.unwrap();
    assert_eq!(again.status, WorkspaceStatus::Destroyed);
    assert_eq!(h.nodes.destroyed(), vec![ws]);
}

#[tokio::test]
async fn a_cancelled_tasks_workspace_is_released_once_the_node_reports_it_gone() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    h.nodes.set_destroy_progress(DestroyProgress::Requested);
    let t = h.delegated_task("Cancel me").await;
    let ws = t.workspace_id.unwrap();
    h.runner.cancel(t.id).await.unwrap();

    let discarded = h.runner.discard_workspace(ws).await.unwrap();
    assert_eq!(discarded.status, WorkspaceStatus::Destroying);
    assert_eq!(h.nodes.destroyed(), vec![ws]);
    assert_eq!(node_of(&h, &t).await.state, NodeState::Active);
    h.runner.workspace_destroyed(ws).await.unwrap();
    assert_eq!(node_of(&h, &t).await.state, NodeState::Warm);
}

#[tokio::test]
async fn a_running_tasks_workspace_is_not_discarded_and_an_unknown_one_is_not_found() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let t = h.delegated_task("Still running").await;
    let ws = t.workspace_id.unwrap();
    h.runner.agent_started(ws, None).await.unwrap();

    let err = h.runner.discard_workspace(ws).await.unwrap_err();
    assert!(
        matches!(&err, Error::WorkspaceInUse { workspace, .. } if *workspace == ws),
        "{err:?}"
    );
    assert!(err.to_string().contains("cancel the task first"), "{err}");
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Running);
    assert!(h.nodes.destroyed().is_empty());

    let err = h
        .runner
        .discard_workspace(WorkspaceId::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn a_rerun_discards_the_kept_workspace_and_takes_its_node_back() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, old_ws) = failed_task(&h, "Flaky").await;

    let rerun = h.runner.rerun_inline(t.id).await.unwrap();
    assert_eq!(rerun.status, TaskStatus::Delegated);
    assert_eq!(h.workspace_status(old_ws).await, WorkspaceStatus::Destroyed);
    assert_eq!(h.nodes.destroyed(), vec![old_ws]);
    assert_eq!(
        rerun.node_id, t.node_id,
        "the released node was claimed again"
    );
    assert_eq!(h.provider.servers().len(), 1, "no second node");
}

#[tokio::test]
async fn a_rerun_waiting_for_a_new_node_releases_the_old_one_when_its_destroy_is_confirmed() {
    let h = Harness::new().await;
    let boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, old_ws) = failed_task(&h, "Slow destroy").await;
    // The node removes the old workspace later, and no new node boots meanwhile.
    boots.abort();
    h.nodes.set_destroy_progress(DestroyProgress::Requested);
    h.clock.advance(MINUTE);
    let queued = h.runner.rerun(t.id).await.unwrap();
    assert_eq!(queued.status, TaskStatus::Queued);
    eventually("a new node is being provisioned", || async {
        h.provider.servers().len() == 2
    })
    .await;
    assert_eq!(h.task(t.id).await.node_id, None);

    h.runner.workspace_destroyed(old_ws).await.unwrap();
    let old = node_of(&h, &t).await;
    assert_eq!((old.state, old.claimed_by), (NodeState::Warm, None));
}

#[tokio::test]
async fn deleting_a_task_discards_the_workspaces_of_all_its_attempts() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, ws) = failed_task(&h, "Gone").await;
    let other = failed_task(&h, "Stays").await;

    assert!(h.store.delete_task(t.id).await.unwrap());
    let discarded = h.runner.discard_kept_workspaces(t.id).await.unwrap();
    assert_eq!(discarded, vec![ws]);
    assert_eq!(node_of(&h, &t).await.state, NodeState::Warm);
    assert_eq!(
        h.workspace_status(other.1).await,
        WorkspaceStatus::Stopped,
        "another task's kept workspace stays"
    );
}

async fn retention_discards_after_the_limit(store: Arc<dyn Store>) {
    let settings = Settings {
        kept_workspace_ttl: Some(60 * MINUTE),
        ..Settings::default()
    };
    let h = Harness::over(store, settings).await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, ws) = failed_task(&h, "Inspect me").await;

    h.clock.advance(59 * MINUTE);
    h.runner.tick().await.unwrap();
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Stopped);
    assert_eq!(node_of(&h, &t).await.state, NodeState::Active);

    h.clock.advance(2 * MINUTE);
    h.runner.tick().await.unwrap();
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Destroyed);
    assert_eq!(node_of(&h, &t).await.state, NodeState::Warm);
    let messages = h
        .store
        .list_messages(t.session_id.unwrap(), MessagePage::Latest { limit: 10 })
        .await
        .unwrap();
    let notices: Vec<_> = messages
        .iter()
        .filter(|m| m.message.role == Role::System)
        .map(|m| m.message.content.as_str())
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].contains("discarded after the retention period (1 h)"),
        "{}",
        notices[0]
    );
    // Once: the next tick finds nothing to discard.
    h.runner.tick().await.unwrap();
    assert!(
        h.runner
            .discard_expired_workspaces()
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_kept_workspace_is_discarded_after_the_retention_limit() {
    retention_discards_after_the_limit(Arc::new(kiln_core::memory::MemoryStore::new())).await;
}

#[tokio::test]
async fn a_kept_workspace_is_discarded_after_the_retention_limit_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::connect(path.to_str().unwrap()).await.unwrap();
    retention_discards_after_the_limit(Arc::new(store)).await;
}

#[tokio::test]
async fn a_zero_retention_keeps_workspaces_forever() {
    let settings = Settings {
        kept_workspace_ttl: None,
        ..Settings::default()
    };
    let h = Harness::with(settings).await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, ws) = failed_task(&h, "Keep me").await;
    h.clock.advance(1000 * 60 * MINUTE);
    h.runner.tick().await.unwrap();
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Stopped);
    assert_eq!(h.task(t.id).await.status, TaskStatus::Failed);
}
