//! A node's heartbeats settle the workspaces it no longer has, like its hello, but only once
//! they are certainly gone: missing from consecutive heartbeats with the stored row
//! unchanged, more than a heartbeat timeout after it last changed. A heartbeat built before a
//! workspace started never fails its task.

mod common;

use std::time::Duration;

use common::Harness;
use kiln_core::{NodeId, NodeState, TaskId, TaskStatus, WorkspaceId, WorkspaceStatus};
use kiln_pool::memory::simulate_node_boots;
use kiln_pool::{DestroyProgress, Reconciled};

/// The node agent's heartbeat interval (`KILN_HEARTBEAT_INTERVAL_MS`).
const INTERVAL: Duration = Duration::from_secs(15);

/// A task run to `delegated`: its workspace is being created on its node.
async fn delegated_task(h: &Harness, title: &str) -> (TaskId, NodeId, WorkspaceId) {
    let t = h.delegated_task(title).await;
    (t.id, t.node_id.unwrap(), t.workspace_id.unwrap())
}

/// A task whose agent started: its workspace is running.
async fn running_task(h: &Harness, title: &str) -> (TaskId, NodeId, WorkspaceId) {
    let (t, node, ws) = delegated_task(h, title).await;
    h.runner.agent_started(ws, None).await.unwrap();
    assert_eq!(h.task(t).await.status, TaskStatus::InProgress);
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Running);
    (t, node, ws)
}

/// The time after which a workspace's last change is surely older than any heartbeat.
fn margin(h: &Harness) -> Duration {
    h.pool.settings().heartbeat_timeout
}

/// One heartbeat arriving `INTERVAL` after the previous one, listing `listed`.
async fn heartbeat(h: &Harness, node: NodeId, listed: &[WorkspaceId]) -> Reconciled {
    h.clock.advance(INTERVAL);
    h.runner.reconcile_heartbeat(node, listed).await.unwrap()
}

#[tokio::test]
async fn a_running_workspace_missing_from_heartbeats_fails_its_task_once_the_rule_is_met() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, node, ws) = running_task(&h, "Vanishes").await;

    // Missing from consecutive heartbeats, but its start is recent: a heartbeat that old
    // could predate it. Nothing happens.
    let heartbeats_within_margin = margin(&h).as_secs() / INTERVAL.as_secs();
    for _ in 0..heartbeats_within_margin {
        assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
        assert_eq!(h.task(t).await.status, TaskStatus::InProgress);
    }

    // Past the margin and still missing: the task fails, saying why.
    h.clock.advance(Duration::from_secs(1));
    let done = heartbeat(&h, node, &[]).await;
    assert_eq!(done.failed_tasks, vec![t]);
    let failed = h.task(t).await;
    assert_eq!(failed.status, TaskStatus::Failed);
    let reason = failed.error_message.unwrap();
    assert!(
        reason.contains(&format!("no longer has workspace {ws}")) && reason.contains("heartbeats"),
        "{reason}"
    );
    // Settled once: later heartbeats change nothing.
    assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
}

#[tokio::test]
async fn one_missing_heartbeat_is_not_enough_even_long_after_the_start() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, node, ws) = running_task(&h, "Long running").await;
    h.clock.advance(margin(&h) * 2);

    // Missing, listed again, missing: never two in a row.
    for listed in [&[][..], &[ws], &[], &[ws], &[]] {
        assert_eq!(heartbeat(&h, node, listed).await, Reconciled::default());
        assert_eq!(h.task(t).await.status, TaskStatus::InProgress);
    }
    // Missing again right after: two in a row now.
    assert_eq!(heartbeat(&h, node, &[]).await.failed_tasks, vec![t]);
    assert_eq!(h.task(t).await.status, TaskStatus::Failed);
}

#[tokio::test]
async fn a_workspace_that_just_started_is_not_failed_by_heartbeats_built_before_it() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, node, ws) = delegated_task(&h, "Just started").await;

    // The node builds a heartbeat before it has the workspace; the request is slow. The
    // workspace starts meanwhile, then that heartbeat (and a retry of it) arrives.
    h.clock.advance(INTERVAL);
    h.runner.agent_started(ws, None).await.unwrap();
    for _ in 0..2 {
        let done = h.runner.reconcile_heartbeat(node, &[]).await.unwrap();
        assert_eq!(done, Reconciled::default());
    }
    assert_eq!(h.task(t).await.status, TaskStatus::InProgress);

    // The heartbeats built afterwards list it: it runs on, however long.
    for _ in 0..(2 * margin(&h).as_secs() / INTERVAL.as_secs()) {
        assert_eq!(heartbeat(&h, node, &[ws]).await, Reconciled::default());
    }
    assert_eq!(h.task(t).await.status, TaskStatus::InProgress);
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Running);
}

#[tokio::test]
async fn a_destroying_workspace_missing_from_heartbeats_is_destroyed_and_its_node_released() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    // The node takes the destroy command but its `destroyed` report is lost.
    h.nodes.set_destroy_progress(DestroyProgress::Requested);
    let (t, node, ws) = running_task(&h, "Destroy lost").await;
    h.runner.completed(ws, None, None, None).await.unwrap();
    assert_eq!(h.task(t).await.status, TaskStatus::Completed);
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Destroying);
    assert_eq!(h.node_state(node).await, NodeState::Active);

    // Within the margin: still destroying, the node still held.
    assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
    assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Destroying);

    h.clock.advance(margin(&h));
    let done = heartbeat(&h, node, &[]).await;
    assert_eq!(done.destroyed, vec![ws]);
    assert!(done.failed_tasks.is_empty());
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Destroyed);
    assert_eq!(h.node_state(node).await, NodeState::Warm);
    assert_eq!(h.task(t).await.status, TaskStatus::Completed);
}

#[tokio::test]
async fn workspaces_being_created_are_never_touched_by_heartbeats() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, node, ws) = delegated_task(&h, "Still creating").await;
    h.clock.advance(margin(&h) * 2);
    for _ in 0..4 {
        assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
    }
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Creating);
    assert_eq!(h.task(t).await.status, TaskStatus::Delegated);
}

#[tokio::test]
async fn a_hello_still_settles_at_once_and_clears_the_heartbeat_misses() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, node, ws) = running_task(&h, "Hello").await;
    h.clock.advance(margin(&h) * 2);

    // One miss, then a hello that lists it (the node restarted and resumed it): the miss
    // is forgotten, so the next missing heartbeat is a first miss again.
    assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
    assert_eq!(
        h.runner.reconcile_node(node, &[ws]).await.unwrap(),
        Reconciled::default()
    );
    assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
    assert_eq!(h.task(t).await.status, TaskStatus::InProgress);

    // A hello without it settles at once, as before.
    let done = h.runner.reconcile_node(node, &[]).await.unwrap();
    assert_eq!(done.failed_tasks, vec![t]);
    let reason = h.task(t).await.error_message.unwrap();
    assert!(reason.contains("started again without it"), "{reason}");
}
