//! A process that stops between delegating a task (`queued → delegated`, its node and
//! workspace id stored) and writing the task's workspace row leaves a task no command was
//! ever sent for. Found by the chaos soak: a server SIGTERMed during a warm claim left one
//! task `delegated` until the delegated-state limit failed it ("the workspace did not start
//! its agent within 120 s").

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, MINUTE};
use kiln_core::task::TaskEvent;
use kiln_core::{
    ChatSession, MessageId, NodeStore, SessionId, SessionStatus, SessionStore, Task, TaskId,
    TaskStatus, TaskStore, VmSize, WorkspaceId, WorkspaceStatus,
};
use kiln_pool::memory::MemoryWorkspaces;
use kiln_pool::{Resumed, Settings, TaskRunner};

fn restarted(h: &Harness) -> (TaskRunner, Arc<MemoryWorkspaces>) {
    let pool = h.another_pool(Settings::default());
    let workspaces = Arc::new(MemoryWorkspaces::new());
    (TaskRunner::new(pool, workspaces.clone()), workspaces)
}

/// What the stopped process left: a task `delegated` to a warm node it claimed, naming a
/// workspace id whose row it never wrote.
async fn delegated_without_workspace_row(h: &Harness) -> Task {
    let now = h.now();
    let session = SessionId::new();
    let mut task = Task {
        id: TaskId::new(),
        project_id: h.project.id,
        owner: h.owner,
        title: "Delegated, then the server stopped".into(),
        description: "do it".into(),
        priority: 0,
        status: TaskStatus::Queued,
        status_changed_at: now,
        status_detail: None,
        output_branch: None,
        pr_url: None,
        summary: None,
        error_message: None,
        session_id: Some(session),
        workspace_id: None,
        node_id: None,
        vm_size_override: None,
        agent_hint: None,
        attempt: 1,
        created_at: now,
        updated_at: now,
    };
    h.store.create_task(&task).await.unwrap();
    h.store
        .create_session(&ChatSession {
            id: session,
            project_id: h.project.id,
            owner: h.owner,
            task_id: Some(task.id),
            workspace_id: None,
            topic: None,
            status: SessionStatus::Pending,
            agent_hint: None,
            vm_size: None,
            message_count: 0,
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    h.warm_node(VmSize::Small, 10 * MINUTE).await;
    let node = h
        .pool
        .claim_warm("memory", h.owner, VmSize::Small, None, task.id)
        .await
        .unwrap()
        .expect("the warm node is claimed")
        .node
        .id;
    task.apply(&TaskEvent::NodeAcquired { node }, now).unwrap();
    task.workspace_id = Some(WorkspaceId::new());
    h.store
        .update_task(&task, TaskStatus::Queued)
        .await
        .unwrap();
    task
}

#[tokio::test]
async fn a_delegated_task_whose_workspace_row_was_never_written_starts_it_on_resume() {
    let h = Harness::new().await;
    let left = delegated_without_workspace_row(&h).await;
    let (node, workspace) = (left.node_id.unwrap(), left.workspace_id.unwrap());
    assert_eq!(left.status, TaskStatus::Delegated);
    assert!(h.store.get_workspace(workspace).await.unwrap().is_none());

    let (runner, workspaces) = restarted(&h);
    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            delegated: 1,
            ..Resumed::default()
        }
    );
    // The node is asked for the workspace the task names, with the task's prompt.
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1, "one create command: {requests:?}");
    let r = &requests[0];
    assert_eq!(r.workspace_id, workspace);
    assert_eq!(r.node_id, node);
    assert_eq!(r.task_id, Some(left.id));
    assert_eq!(
        r.prompt.as_ref().unwrap().message_id,
        MessageId::for_task_prompt(left.id)
    );
    // Its row exists now, on the task's node, and the session points at it.
    let row = h.store.get_workspace(workspace).await.unwrap().unwrap();
    assert_eq!(row.status, WorkspaceStatus::Creating);
    assert_eq!(row.node_id, node);
    assert_eq!(row.task_id, Some(left.id));
    let session = h
        .store
        .get_session(left.session_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.workspace_id, Some(workspace));

    // The agent's start report moves the task on, as for any run.
    runner.agent_started(workspace, None).await.unwrap();
    let t = h.task(left.id).await;
    assert_eq!(t.status, TaskStatus::InProgress);
    assert_eq!(t.node_id, Some(node));
}

#[tokio::test]
async fn a_delegated_task_without_a_workspace_row_whose_node_is_gone_is_left_to_its_limit() {
    let h = Harness::new().await;
    let left = delegated_without_workspace_row(&h).await;
    let node = left.node_id.unwrap();
    h.store
        .mark_node_failed(node, "its VM was deleted", h.now())
        .await
        .unwrap();

    let (runner, workspaces) = restarted(&h);
    assert_eq!(runner.resume().await.unwrap(), Resumed::default());
    assert!(
        workspaces.created().is_empty(),
        "nothing sent to a gone node"
    );
    assert!(
        h.store
            .get_workspace(left.workspace_id.unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // The delegated-state limit fails it, with its reason.
    h.clock
        .advance(Settings::default().task_limits.delegated + Duration::from_secs(1));
    runner.tick().await.unwrap();
    let t = h.task(left.id).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert!(
        t.error_message
            .as_deref()
            .is_some_and(|m| m.contains("delegated-state limit")),
        "{t:?}"
    );
}
