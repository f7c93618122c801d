//! A restarted runner picks up the `queued` and `delegated` runs its predecessor left.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, eventually};
use kiln_core::{MessageId, Task, TaskId, TaskStatus, TaskStore, WorkspaceStatus};
use kiln_pool::memory::{MemoryWorkspaces, simulate_node_boots};
use kiln_pool::{NewTask, Resumed, Settings, TaskRunner};

async fn task(h: &Harness, id: TaskId) -> Task {
    h.store.get_task(id).await.unwrap().unwrap()
}

/// The runner of a restarted process: a new pool and workspace controller over the same
/// store, provider and clock.
fn restarted(h: &Harness) -> (TaskRunner, Arc<MemoryWorkspaces>) {
    let pool = h.another_pool(Settings::default());
    let workspaces = Arc::new(MemoryWorkspaces::new());
    (TaskRunner::new(pool, workspaces.clone()), workspaces)
}

/// A task stored `queued` by a process that stopped before acquiring its node.
async fn stranded_queued(h: &Harness) -> Task {
    let now = h.now();
    let t = Task {
        id: TaskId::new(),
        project_id: h.project.id,
        owner: h.owner,
        title: "Stranded".into(),
        description: "left queued by a restart".into(),
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

#[tokio::test]
async fn a_queued_task_left_by_a_stopped_process_acquires_its_node_on_resume() {
    let h = Harness::new().await;
    let stranded = stranded_queued(&h).await;
    let (runner, workspaces) = restarted(&h);
    let _boots = simulate_node_boots(runner.pool().clone(), Duration::ZERO).await;

    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            queued: 1,
            ..Resumed::default()
        }
    );
    eventually("the resumed task is delegated", || async {
        task(&h, stranded.id).await.status == TaskStatus::Delegated
    })
    .await;
    let t = task(&h, stranded.id).await;
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1, "one workspace for the resumed task");
    assert_eq!(requests[0].task_id, Some(stranded.id));
    assert_eq!(Some(requests[0].workspace_id), t.workspace_id);
    assert_eq!(Some(requests[0].node_id), t.node_id);

    // Resuming again (another replica starting) does not start a second workspace.
    runner.resume().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(workspaces.created().len(), 1);
}

#[tokio::test]
async fn a_delegated_task_gets_its_workspace_command_again_after_a_restart() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (queued, _) = delegated_task(&h, "Delegated then restarted").await;
    let before = task(&h, queued.id).await;
    let workspace = before.workspace_id.unwrap();
    assert_eq!(
        h.store
            .get_workspace(workspace)
            .await
            .unwrap()
            .unwrap()
            .status,
        WorkspaceStatus::Creating
    );

    // The command was in the old process's memory; the new one sends it again.
    let (runner, workspaces) = restarted(&h);
    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            delegated: 1,
            ..Resumed::default()
        }
    );
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.workspace_id, workspace);
    assert_eq!(Some(r.node_id), before.node_id);
    assert_eq!(r.task_id, Some(before.id));
    assert_eq!(r.branch, Some(format!("task/{}", before.id)));
    assert_eq!(
        r.prompt.as_ref().unwrap().message_id,
        MessageId::for_task_prompt(before.id)
    );
    // Nothing else moved: same node, same workspace, still delegated.
    let after = task(&h, queued.id).await;
    assert_eq!(after.status, TaskStatus::Delegated);
    assert_eq!(after.node_id, before.node_id);

    // Once the agent runs, there is nothing left to resend.
    runner.agent_started(workspace, None).await.unwrap();
    let (again, workspaces) = restarted(&h);
    assert_eq!(again.resume().await.unwrap(), Resumed::default());
    assert!(workspaces.created().is_empty());
}

#[tokio::test]
async fn a_workspace_left_destroying_gets_its_destroy_command_again() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (queued, _) = delegated_task(&h, "Completed, then the server stopped").await;
    let t = task(&h, queued.id).await;
    let workspace = t.workspace_id.unwrap();
    // The node reports completion; the old process asks for the destroy and stops before
    // the node hears it (its controller only records the request).
    h.nodes
        .set_destroy_progress(kiln_pool::DestroyProgress::Requested);
    h.runner.agent_started(workspace, None).await.unwrap();
    h.runner
        .completed(workspace, None, None, None)
        .await
        .unwrap();
    assert_eq!(
        h.store
            .get_workspace(workspace)
            .await
            .unwrap()
            .unwrap()
            .status,
        WorkspaceStatus::Destroying
    );

    let (runner, workspaces) = restarted(&h);
    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            destroying: 1,
            ..Resumed::default()
        }
    );
    assert_eq!(workspaces.destroyed(), vec![workspace]);
    // The fake node removes it at once: the workspace is destroyed and the node warm again.
    assert_eq!(
        h.store
            .get_workspace(workspace)
            .await
            .unwrap()
            .unwrap()
            .status,
        WorkspaceStatus::Destroyed
    );
    let node = t.node_id.unwrap();
    eventually("the node is released warm", || async {
        h.node_state(node).await == kiln_core::NodeState::Warm
    })
    .await;
}

/// A task run to `delegated` on the harness's runner, with its workspace.
async fn delegated_task(h: &Harness, title: &str) -> (Task, kiln_core::WorkspaceId) {
    let queued = h
        .runner
        .run_now(NewTask {
            project_id: h.project.id,
            title: title.into(),
            description: format!("{title}: do it"),
            priority: 0,
            vm_size_override: None,
            agent_hint: None,
        })
        .await
        .unwrap();
    eventually("the task is delegated", || async {
        task(h, queued.id).await.status == TaskStatus::Delegated
    })
    .await;
    let t = task(h, queued.id).await;
    let ws = t.workspace_id.unwrap();
    (t, ws)
}

#[tokio::test]
async fn a_hello_without_a_running_workspace_fails_its_task_and_settles_destroys() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;

    // Still being created: the node may not have heard of it yet; left alone.
    let (creating, creating_ws) = delegated_task(&h, "Creating").await;
    let node = creating.node_id.unwrap();
    let none = h.runner.reconcile_node(node, &[]).await.unwrap();
    assert_eq!(none, kiln_pool::Reconciled::default());
    assert_eq!(task(&h, creating.id).await.status, TaskStatus::Delegated);

    // Running, and listed by the node: nothing to do.
    h.runner.agent_started(creating_ws, None).await.unwrap();
    let none = h.runner.reconcile_node(node, &[creating_ws]).await.unwrap();
    assert_eq!(none, kiln_pool::Reconciled::default());
    assert_eq!(task(&h, creating.id).await.status, TaskStatus::InProgress);

    // Running in the store, but the node came back without it: the task fails, clearly.
    let done = h.runner.reconcile_node(node, &[]).await.unwrap();
    assert_eq!(done.failed_tasks, vec![creating.id]);
    let failed = task(&h, creating.id).await;
    assert_eq!(failed.status, TaskStatus::Failed);
    assert!(
        failed
            .error_message
            .as_deref()
            .unwrap()
            .contains("no longer has workspace"),
        "{:?}",
        failed.error_message
    );

    // A workspace being destroyed that the node no longer has is destroyed; its node is
    // released once empty.
    let (t, ws) = delegated_task(&h, "Destroy lost").await;
    h.nodes
        .set_destroy_progress(kiln_pool::DestroyProgress::Requested);
    h.runner.agent_started(ws, None).await.unwrap();
    h.runner.completed(ws, None, None, None).await.unwrap();
    assert_eq!(
        h.store.get_workspace(ws).await.unwrap().unwrap().status,
        WorkspaceStatus::Destroying
    );
    let done = h
        .runner
        .reconcile_node(t.node_id.unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(done.destroyed, vec![ws]);
    assert_eq!(
        h.store.get_workspace(ws).await.unwrap().unwrap().status,
        WorkspaceStatus::Destroyed
    );
}
