//! A node's heartbeats settle the workspaces it no longer has, like its hello, but only once
//! they are certainly gone: missing from consecutive heartbeats with the stored row
//! unchanged, more than a heartbeat timeout after it last changed. A heartbeat built before a
//! workspace started never fails its task. A chat without a task whose workspace vanished is
//! stopped with a notice, and its node released.

mod common;

use std::time::Duration;

use common::Harness;
use kiln_core::{
    ChatSession, MessagePage, NodeId, NodeState, Role, SessionStatus, SessionStore, TaskId,
    TaskStatus, WorkspaceId, WorkspaceStatus,
};
use kiln_pool::memory::simulate_node_boots;
use kiln_pool::{DestroyProgress, NewChat, Reconciled};

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

/// A chat without a task whose agent is up: its workspace is running, the session active.
async fn running_chat(h: &Harness) -> (ChatSession, NodeId, WorkspaceId) {
    let session = h
        .runner
        .open_chat_inline(NewChat {
            project_id: h.project.id,
            vm_size: None,
            prompt: Some("What does this repository do?".into()),
            agent_hint: None,
        })
        .await
        .unwrap();
    let ws = session.workspace_id.unwrap();
    let node = h.nodes.created()[0].node_id;
    h.runner.agent_started(ws, None).await.unwrap();
    let session = h.store.get_session(session.id).await.unwrap().unwrap();
    assert_eq!(session.status, SessionStatus::Active);
    (session, node, ws)
}

/// The chat's stored session.
async fn chat_session(h: &Harness, chat: &ChatSession) -> ChatSession {
    h.store.get_session(chat.id).await.unwrap().unwrap()
}

/// The system notices stored in the chat, oldest first.
async fn notices(h: &Harness, chat: &ChatSession) -> Vec<String> {
    h.store
        .list_messages(chat.id, MessagePage::Latest { limit: 50 })
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.message.role == Role::System)
        .map(|m| m.message.content)
        .collect()
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

#[tokio::test]
async fn a_chat_whose_workspace_vanishes_from_heartbeats_is_stopped_and_its_node_released() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (chat, node, ws) = running_chat(&h).await;
    h.clock.advance(margin(&h) * 2);

    // One miss, then listed again: the chat runs on.
    assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
    assert_eq!(heartbeat(&h, node, &[ws]).await, Reconciled::default());
    assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
    assert_eq!(chat_session(&h, &chat).await.status, SessionStatus::Active);
    assert!(notices(&h, &chat).await.is_empty());

    // Two misses in a row: the workspace is gone, the chat says so and stops, the node it
    // held goes back to the warm pool.
    let done = heartbeat(&h, node, &[]).await;
    assert_eq!(done.stopped_chats, vec![chat.id]);
    assert!(done.failed_tasks.is_empty() && done.destroyed.is_empty());
    let stopped = chat_session(&h, &chat).await;
    assert_eq!(stopped.status, SessionStatus::Stopped);
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Destroyed);
    assert_eq!(h.node_state(node).await, NodeState::Warm);
    let notices = notices(&h, &chat).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].contains("workspace was lost")
            && notices[0].contains(&format!("node {node}"))
            && notices[0].contains("heartbeats"),
        "{}",
        notices[0]
    );

    // Settled once: later heartbeats change nothing and say nothing more.
    assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
    assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
    assert_eq!(self::notices(&h, &chat).await.len(), 1);

    // The user can still close it; there is nothing left to destroy on the node.
    let closed = h.runner.close_chat(chat.id).await.unwrap();
    assert_eq!(closed.status, SessionStatus::Closed);
    assert!(h.nodes.destroyed().is_empty());
    assert_eq!(h.node_state(node).await, NodeState::Warm);
}

#[tokio::test]
async fn a_chat_workspace_missing_within_the_margin_is_left_alone() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (chat, node, ws) = running_chat(&h).await;

    // Missing from every heartbeat, but its start is too recent for them to prove anything.
    for _ in 0..(margin(&h).as_secs() / INTERVAL.as_secs()) {
        assert_eq!(heartbeat(&h, node, &[]).await, Reconciled::default());
    }
    assert_eq!(chat_session(&h, &chat).await.status, SessionStatus::Active);
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Running);
    assert_eq!(h.node_state(node).await, NodeState::Active);
}

#[tokio::test]
async fn a_hello_without_a_chat_workspace_stops_the_chat_at_once() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (chat, node, ws) = running_chat(&h).await;

    // A hello that lists it changes nothing.
    assert_eq!(
        h.runner.reconcile_node(node, &[ws]).await.unwrap(),
        Reconciled::default()
    );
    assert_eq!(chat_session(&h, &chat).await.status, SessionStatus::Active);

    let done = h.runner.reconcile_node(node, &[]).await.unwrap();
    assert_eq!(done.stopped_chats, vec![chat.id]);
    assert_eq!(chat_session(&h, &chat).await.status, SessionStatus::Stopped);
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Destroyed);
    assert_eq!(h.node_state(node).await, NodeState::Warm);
    let notices = notices(&h, &chat).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].contains("workspace was lost")
            && notices[0].contains("started again without it"),
        "{}",
        notices[0]
    );

    // A second hello without it: nothing more.
    assert_eq!(
        h.runner.reconcile_node(node, &[]).await.unwrap(),
        Reconciled::default()
    );
    assert_eq!(self::notices(&h, &chat).await.len(), 1);
}

#[tokio::test]
async fn a_closed_chat_whose_workspace_vanished_while_destroying_gets_no_notice() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    // The node takes the destroy command but its `destroyed` report is lost.
    h.nodes.set_destroy_progress(DestroyProgress::Requested);
    let (chat, node, ws) = running_chat(&h).await;
    h.runner.close_chat(chat.id).await.unwrap();
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Destroying);

    let done = h.runner.reconcile_node(node, &[]).await.unwrap();
    assert_eq!(done.destroyed, vec![ws]);
    assert!(done.stopped_chats.is_empty());
    assert_eq!(chat_session(&h, &chat).await.status, SessionStatus::Closed);
    assert_eq!(h.node_state(node).await, NodeState::Warm);
    assert!(notices(&h, &chat).await.is_empty());
}
