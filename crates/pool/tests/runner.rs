//! The task runner over the memory store, provider and workspace fake, on a manual clock.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Harness, MINUTE, eventually, settle};
use futures::StreamExt;
use kiln_core::memory::{MemoryStore, Operation};
use kiln_core::{
    Change, MessageId, MessagePage, NodeState, NodeStore, ProviderError, SessionStatus,
    SessionStore, Task, TaskId, TaskStatus, TaskStore, VmSize, WorkspaceStatus,
};
use kiln_pool::memory::simulate_node_boots;
use kiln_pool::{DestroyProgress, Error, NewTask, Settings};

fn new_task(h: &Harness, title: &str) -> NewTask {
    NewTask {
        project_id: h.project.id,
        title: title.into(),
        description: format!("{title}: please do it"),
        priority: 0,
        vm_size_override: None,
        agent_hint: Some("demo".into()),
    }
}

async fn task(h: &Harness, id: TaskId) -> Task {
    h.store.get_task(id).await.unwrap().unwrap()
}

/// Runs a task to delegation and returns it with its workspace id.
async fn delegated(h: &Harness, title: &str) -> (Task, kiln_core::WorkspaceId) {
    let queued = h.runner.run_now(new_task(h, title)).await.unwrap();
    eventually("the task is delegated", || async {
        task(h, queued.id).await.status == TaskStatus::Delegated
    })
    .await;
    let t = task(h, queued.id).await;
    (t.clone(), t.workspace_id.unwrap())
}

#[tokio::test]
async fn a_clean_run_completes_and_leaves_the_node_warm() {
    let h = Harness::new().await;
    let mut feed = h.store.subscribe().await.unwrap();
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, ws) = delegated(&h, "Fix the login bug").await;
    assert_eq!(t.attempt, 1);

    let requests = h.nodes.created();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.workspace_id, ws);
    assert_eq!(r.task_id, Some(t.id));
    assert_eq!(r.branch, Some(format!("task/{}", t.id)));
    let prompt = r.prompt.as_ref().unwrap();
    assert_eq!(prompt.message_id, MessageId::for_task_prompt(t.id));
    assert_eq!(prompt.text, t.description);
    assert_eq!(Some(r.session_id), t.session_id);
    assert_eq!(r.repository_url, h.project.repository_url);
    assert_eq!(r.agent_hint.as_deref(), Some("demo"));
    assert_eq!(Some(r.node_id), t.node_id);
    // The prompt is stored once in the session, under its derived id.
    let session = t.session_id.unwrap();
    let messages = h
        .store
        .list_messages(session, MessagePage::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].message.id, MessageId::for_task_prompt(t.id));

    let branch = format!("task/{}-2", t.id);
    h.runner
        .agent_started(ws, Some(branch.clone()))
        .await
        .unwrap();
    h.runner
        .agent_started(ws, Some(branch.clone()))
        .await
        .unwrap();
    assert_eq!(task(&h, t.id).await.status, TaskStatus::InProgress);
    let s = h.store.get_session(session).await.unwrap().unwrap();
    assert_eq!(
        (s.status, s.workspace_id),
        (SessionStatus::Active, Some(ws))
    );

    let pr = Some("https://git.example/pr/7".to_owned());
    let summary = Some("Fixed the regex.".to_owned());
    h.runner
        .completed(ws, Some(branch.clone()), pr.clone(), summary.clone())
        .await
        .unwrap();
    // A repeated report changes nothing.
    h.runner.completed(ws, None, None, None).await.unwrap();

    let done = task(&h, t.id).await;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.output_branch.as_deref(), Some(branch.as_str()));
    assert_eq!((done.pr_url, done.summary), (pr, summary));
    let workspace = h.store.get_workspace(ws).await.unwrap().unwrap();
    assert_eq!(workspace.status, WorkspaceStatus::Destroyed);
    assert_eq!(workspace.branch.as_deref(), Some(branch.as_str()));
    assert_eq!(h.nodes.destroyed(), vec![ws]);
    let node = h
        .store
        .get_node(done.node_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.state, NodeState::Warm);
    let s = h.store.get_session(session).await.unwrap().unwrap();
    assert_eq!(s.status, SessionStatus::Completed);
    assert_eq!(h.nodes.created().len(), 1, "one workspace for one run");

    // Every kind of change was announced for the server to broadcast.
    let mut seen = HashSet::new();
    while let Some(Some(event)) = feed.next().now_or_never() {
        seen.insert(std::mem::discriminant(&event.change));
        if let Change::Task { task_id } = event.change {
            assert_eq!(task_id, t.id);
            assert_eq!(event.project_id, Some(h.project.id));
            assert_eq!(event.owner, h.owner);
        }
    }
    for change in [
        Change::Task { task_id: t.id },
        Change::Session {
            session_id: session,
        },
        Change::Workspace { workspace_id: ws },
        Change::Node { node_id: node.id },
    ] {
        assert!(
            seen.contains(&std::mem::discriminant(&change)),
            "{change:?} not published"
        );
    }

    // The next task claims the warm node: no second provisioning.
    let (next, _) = delegated(&h, "Next").await;
    assert_eq!(next.node_id, Some(node.id));
    assert_eq!(h.provider.calls(Operation::Create), 1);
}

use futures::FutureExt;

#[tokio::test]
async fn an_agent_failure_fails_the_task_and_keeps_workspace_and_node() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, ws) = delegated(&h, "Will crash").await;
    h.runner.agent_started(ws, None).await.unwrap();
    h.runner
        .failed(ws, "agent exited with status 137")
        .await
        .unwrap();
    let failed = task(&h, t.id).await;
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(
        failed.error_message.as_deref(),
        Some("agent exited with status 137")
    );
    assert_eq!(
        h.store.get_workspace(ws).await.unwrap().unwrap().status,
        WorkspaceStatus::Stopped
    );
    assert_eq!(h.nodes.stopped(), vec![ws]);
    assert!(h.nodes.destroyed().is_empty(), "the workspace is kept");
    let node = h.store.get_node(t.node_id.unwrap()).await.unwrap().unwrap();
    assert_eq!(
        (node.state, node.claimed_by),
        (NodeState::Active, Some(t.id))
    );
    let s = h
        .store
        .get_session(t.session_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.status, SessionStatus::Stopped);
    // A late completion report does not resurrect it.
    h.runner.completed(ws, None, None, None).await.unwrap();
    assert_eq!(task(&h, t.id).await.status, TaskStatus::Failed);
    // When the user removes the kept workspace, the node goes back to the pool.
    h.runner.workspace_destroyed(ws).await.unwrap();
    assert_eq!(h.node_state(node.id).await, NodeState::Warm);
}

#[tokio::test]
async fn cancel_stops_the_agent_and_keeps_the_workspace() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, ws) = delegated(&h, "Cancel me").await;
    h.runner.agent_started(ws, None).await.unwrap();
    let cancelled = h.runner.cancel(t.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(h.nodes.stopped(), vec![ws]);
    assert_eq!(
        h.store.get_workspace(ws).await.unwrap().unwrap().status,
        WorkspaceStatus::Stopped
    );
    assert!(h.nodes.destroyed().is_empty());
    assert_eq!(h.node_state(t.node_id.unwrap()).await, NodeState::Active);
    // Cancelling again is a no-op; the node's own cancel report too.
    assert_eq!(
        h.runner.cancel(t.id).await.unwrap().status,
        TaskStatus::Cancelled
    );
    h.runner.cancelled(ws).await.unwrap();
    assert_eq!(h.nodes.stopped(), vec![ws]);
    // A completed task cannot be cancelled.
    let (done, ws2) = delegated(&h, "Done").await;
    h.runner.completed(ws2, None, None, None).await.unwrap();
    let err = h.runner.cancel(done.id).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err:?}");
}

#[tokio::test]
async fn a_provisioning_failure_fails_the_task_with_the_providers_message() {
    let h = Harness::new().await;
    h.provider.fail_next(
        Operation::Create,
        ProviderError::Quota {
            code: "resource_limit_exceeded".into(),
            message: "server limit of 10 reached".into(),
        },
    );
    let t = h.runner.run_now(new_task(&h, "No capacity")).await.unwrap();
    eventually("the task fails", || async {
        task(&h, t.id).await.status == TaskStatus::Failed
    })
    .await;
    let failed = task(&h, t.id).await;
    let reason = failed.error_message.unwrap();
    assert!(reason.contains("server limit of 10 reached"), "{reason}");
    assert!(h.nodes.created().is_empty());
}

#[tokio::test]
async fn a_rerun_starts_a_new_attempt_and_ignores_the_old_workspace() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, old_ws) = delegated(&h, "Flaky").await;
    h.runner.failed(old_ws, "tests failed").await.unwrap();
    let rerun = h.runner.rerun_inline(t.id).await.unwrap();
    assert_eq!(rerun.status, TaskStatus::Delegated);
    assert_eq!(rerun.attempt, 2);
    assert_eq!(rerun.error_message, None);
    assert_eq!(rerun.session_id, t.session_id, "one session per task");
    let new_ws = rerun.workspace_id.unwrap();
    assert_ne!(new_ws, old_ws);
    // The kept workspace was discarded first: the re-run took its node back warm.
    assert_eq!(rerun.node_id, t.node_id);
    // A late report from the first attempt's workspace does not move the new run.
    h.runner.completed(old_ws, None, None, None).await.unwrap();
    assert_eq!(task(&h, t.id).await.status, TaskStatus::Delegated);
    // Re-running a running task is a no-op; so is a repeated re-run.
    assert_eq!(h.runner.rerun(t.id).await.unwrap().attempt, 2);
    assert_eq!(h.nodes.created().len(), 2);
    // The prompt is still one message.
    let messages = h
        .store
        .list_messages(t.session_id.unwrap(), MessagePage::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
}

#[tokio::test]
async fn tasks_held_too_long_in_a_transient_state_fail_with_a_reason() {
    // Longer than the queued limit, so the tick (not the acquire) ends the wait.
    let settings = Settings {
        provisioning_timeout: 60 * MINUTE,
        ..Settings::default()
    };
    let h = Harness::with(settings).await;
    let stuck = h
        .runner
        .run_now(new_task(&h, "No node ever"))
        .await
        .unwrap();
    settle().await;
    h.clock.advance(14 * MINUTE);
    assert!(h.runner.tick().await.unwrap().is_empty());
    h.clock.advance(MINUTE);
    let failed = h.runner.tick().await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, stuck.id);
    assert_eq!(failed[0].status, TaskStatus::Failed);
    assert!(
        failed[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("queued"),
        "{:?}",
        failed[0].error_message
    );
    // Its node, once ready, goes back to the pool rather than to the failed task.
    let node = h
        .store
        .list_nodes(&kiln_core::NodeQuery::default())
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.claimed_by == Some(stuck.id))
        .unwrap();
    h.pool.node_ready(node.id).await.unwrap();
    eventually("the late node is released warm", || async {
        h.node_state(node.id).await == NodeState::Warm
    })
    .await;

    // Delegated, but the agent never starts.
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, ws) = delegated(&h, "Agent never starts").await;
    h.clock.advance(10 * MINUTE);
    let failed = h.runner.tick().await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, t.id);
    assert!(
        failed[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("delegated")
    );
    assert_eq!(h.nodes.stopped(), vec![ws]);
}

#[tokio::test]
async fn a_task_cancelled_while_queued_gives_its_node_back() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), 3 * MINUTE).await;
    let t = h
        .runner
        .run_now(new_task(&h, "Changed my mind"))
        .await
        .unwrap();
    settle().await;
    let cancelled = h.runner.cancel(t.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    h.clock.advance(3 * MINUTE);
    eventually("the node is released warm", || async {
        let nodes = h
            .store
            .list_nodes(&kiln_core::NodeQuery::default())
            .await
            .unwrap();
        nodes.len() == 1 && nodes[0].state == NodeState::Warm
    })
    .await;
    assert!(
        h.nodes.created().is_empty(),
        "no workspace for a cancelled task"
    );
    assert_eq!(task(&h, t.id).await.status, TaskStatus::Cancelled);
}

#[tokio::test]
async fn a_node_is_released_only_when_its_workspace_is_reported_gone() {
    let h = Harness::new().await;
    h.nodes.set_destroy_progress(DestroyProgress::Requested);
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, ws) = delegated(&h, "Async destroy").await;
    h.runner.completed(ws, None, None, None).await.unwrap();
    assert_eq!(
        h.store.get_workspace(ws).await.unwrap().unwrap().status,
        WorkspaceStatus::Destroying
    );
    assert_eq!(h.node_state(t.node_id.unwrap()).await, NodeState::Active);
    h.runner.workspace_destroyed(ws).await.unwrap();
    h.runner.workspace_destroyed(ws).await.unwrap();
    assert_eq!(h.node_state(t.node_id.unwrap()).await, NodeState::Warm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_runs_start_one_workspace_on_one_node() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let draft = h.runner.run_now(new_task(&h, "Once")).await.unwrap();
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let runner = h.runner.clone();
            tokio::spawn(async move { runner.run_inline(draft.id).await })
        })
        .collect();
    for run in runs {
        assert!(run.await.unwrap().unwrap().status.is_running());
    }
    eventually("delegated", || async {
        task(&h, draft.id).await.status == TaskStatus::Delegated
    })
    .await;
    settle().await;
    assert_eq!(h.provider.calls(Operation::Create), 1);
    assert_eq!(h.nodes.created().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_tasks_at_once_with_one_warm_node_one_claims_four_provision() {
    let h = Harness::new().await;
    let warm = h.warm_node(VmSize::Small, 30 * MINUTE).await;
    let creates_before = h.provider.calls(Operation::Create);
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let t = TaskId::new();
        let now = h.now();
        h.store
            .create_task(&Task {
                id: t,
                project_id: h.project.id,
                owner: h.owner,
                title: format!("t{i}"),
                description: "d".into(),
                priority: 0,
                status: TaskStatus::Ready,
                status_detail: None,
                status_changed_at: now,
                output_branch: None,
                pr_url: None,
                summary: None,
                error_message: None,
                session_id: None,
                workspace_id: None,
                node_id: None,
                vm_size_override: None,
                agent_hint: None,
                attempt: 0,
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
        ids.push(t);
    }
    let runs: Vec<_> = ids
        .iter()
        .map(|id| {
            let runner = h.runner.clone();
            let id = *id;
            tokio::spawn(async move { runner.run_inline(id).await })
        })
        .collect();
    let mut nodes = HashSet::new();
    let mut on_warm = 0;
    for run in runs {
        let t = run.await.unwrap().unwrap();
        assert_eq!(t.status, TaskStatus::Delegated, "{t:?}");
        let node = t.node_id.unwrap();
        assert!(nodes.insert(node), "two tasks on one node");
        on_warm += usize::from(node == warm.id);
    }
    assert_eq!(on_warm, 1);
    assert_eq!(h.provider.calls(Operation::Create) - creates_before, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_runs_complete_on_the_memory_store() {
    let report = common::fifty_concurrent_runs(Arc::new(MemoryStore::new())).await;
    println!("{report}");
}

#[tokio::test]
async fn a_task_on_a_node_that_stops_heartbeating_fails_and_the_node_is_destroyed() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (t, ws) = delegated(&h, "On a dying node").await;
    h.runner.agent_started(ws, None).await.unwrap();
    let node = t.node_id.unwrap();
    h.store.record_heartbeat(node, h.now()).await.unwrap();
    // A quiet node that never sent a heartbeat is not judged.
    let (quiet, _) = delegated(&h, "Never heartbeats").await;
    h.clock.advance(Duration::from_secs(89));
    assert!(h.runner.tick().await.unwrap().is_empty());
    h.clock.advance(Duration::from_secs(1));
    let failed = h.runner.tick().await.unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].id, t.id);
    let reason = failed[0].error_message.clone().unwrap();
    assert!(reason.starts_with("node lost"), "{reason}");
    assert_eq!(h.node_state(node).await, NodeState::Destroyed);
    assert_eq!(
        h.store.get_workspace(ws).await.unwrap().unwrap().status,
        WorkspaceStatus::Stopped
    );
    let s = h
        .store
        .get_session(t.session_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.status, SessionStatus::Stopped);
    assert_eq!(task(&h, quiet.id).await.status, TaskStatus::Delegated);
    assert_eq!(
        h.node_state(quiet.node_id.unwrap()).await,
        NodeState::Active
    );
}

#[tokio::test]
async fn the_runner_loop_ticks_on_the_clock() {
    let settings = Settings {
        provisioning_timeout: 60 * MINUTE,
        ..Settings::default()
    };
    let h = Harness::with(settings).await;
    let stuck = h
        .runner
        .run_now(new_task(&h, "Waits forever"))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = h.runner.clone();
    let running = tokio::spawn(async move {
        runner
            .run_until(async {
                let _ = stopped.await;
            })
            .await;
    });
    for _ in 0..30 {
        settle().await;
        h.clock.advance(Duration::from_secs(30));
    }
    eventually("the loop failed the stuck task", || async {
        task(&h, stuck.id).await.status == TaskStatus::Failed
    })
    .await;
    stop.send(()).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn tasks_run_on_the_projects_vm_size_unless_they_override_it() {
    let h = Harness::new().await;
    let mut project = h.project.clone();
    project.default_vm_size = VmSize::Medium;
    h.store.update_project(&project).await.unwrap();
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (default, _) = delegated(&h, "Default size").await;
    let overridden = h
        .runner
        .run_now(NewTask {
            vm_size_override: Some(VmSize::Large),
            ..new_task(&h, "Big one")
        })
        .await
        .unwrap();
    eventually("delegated", || async {
        task(&h, overridden.id).await.status == TaskStatus::Delegated
    })
    .await;
    let size = |t: Task| {
        let store = h.store.clone();
        async move {
            store
                .get_node(t.node_id.unwrap())
                .await
                .unwrap()
                .unwrap()
                .size
        }
    };
    assert_eq!(size(default).await, VmSize::Medium);
    assert_eq!(size(task(&h, overridden.id).await).await, VmSize::Large);
}
