//! A process that stops between storing a task's end and acting on it (destroying a completed
//! task's workspace, stopping a failed or cancelled task's agent) leaves the workspace
//! `running` and the node claimed. The node's repeated report of the end cannot settle it:
//! the ended task refuses the event. Found by the chaos soak: 9 of 35 nodes were left
//! `active`, claimed by completed tasks, at the end of a run with 27 server restarts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, eventually};
use kiln_core::task::TaskEvent;
use kiln_core::{
    NodeState, SessionStatus, SessionStore, Task, TaskStatus, TaskStore, WorkspaceStatus,
};
use kiln_pool::memory::{MemoryWorkspaces, simulate_node_boots};
use kiln_pool::{Resumed, Settings, TaskRunner};

fn restarted(h: &Harness) -> (TaskRunner, Arc<MemoryWorkspaces>) {
    let pool = h.another_pool(Settings::default());
    let workspaces = Arc::new(MemoryWorkspaces::new());
    (TaskRunner::new(pool, workspaces.clone()), workspaces)
}

/// A task whose agent runs, then `event` stored by a process that stopped before acting on
/// it (the compare-and-set write of the task is all that happened).
async fn ended_without_effects(h: &Harness, event: &TaskEvent) -> Task {
    let t = h.delegated_task("Ended, then the server stopped").await;
    h.runner
        .agent_started(t.workspace_id.unwrap(), None)
        .await
        .unwrap();
    let mut task = h.task(t.id).await;
    assert_eq!(task.status, TaskStatus::InProgress);
    task.apply(event, h.now()).unwrap();
    h.store
        .update_task(&task, TaskStatus::InProgress)
        .await
        .unwrap();
    task
}

async fn session_status(h: &Harness, t: &Task) -> SessionStatus {
    h.store
        .get_session(t.session_id.unwrap())
        .await
        .unwrap()
        .unwrap()
        .status
}

#[tokio::test]
async fn a_completed_task_left_with_a_running_workspace_has_it_destroyed_on_resume() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let completed = TaskEvent::Completed {
        branch: None,
        pr_url: None,
        summary: Some("done".into()),
    };
    let t = ended_without_effects(&h, &completed).await;
    let (workspace, node) = (t.workspace_id.unwrap(), t.node_id.unwrap());
    assert_eq!(
        h.workspace_status(workspace).await,
        WorkspaceStatus::Running
    );
    assert_eq!(h.node_state(node).await, NodeState::Active);

    // A task that ends while the new process resumes is its report's to settle, not the
    // resume's (here: it ended at the very instant the resume began).
    let (runner, workspaces) = restarted(&h);
    assert_eq!(runner.resume().await.unwrap(), Resumed::default());
    assert!(workspaces.destroyed().is_empty());

    h.clock.advance(Duration::from_secs(1));
    let (runner, workspaces) = restarted(&h);
    // The node reporting the completion again changes nothing: the task is completed.
    runner
        .completed(workspace, None, None, Some("done".into()))
        .await
        .unwrap();
    assert_eq!(
        h.workspace_status(workspace).await,
        WorkspaceStatus::Running
    );

    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            ended: 1,
            ..Resumed::default()
        }
    );
    assert_eq!(workspaces.destroyed(), vec![workspace]);
    assert_eq!(
        h.workspace_status(workspace).await,
        WorkspaceStatus::Destroyed
    );
    eventually("the node is released warm", || async {
        h.node_state(node).await == NodeState::Warm
    })
    .await;
    assert_eq!(session_status(&h, &t).await, SessionStatus::Completed);
    assert_eq!(h.task(t.id).await.status, TaskStatus::Completed);

    // Nothing is left for a second resume.
    let (again, workspaces) = restarted(&h);
    assert_eq!(again.resume().await.unwrap(), Resumed::default());
    assert!(workspaces.destroyed().is_empty());
}

#[tokio::test]
async fn a_cancelled_task_left_with_a_running_workspace_has_its_agent_stopped_on_resume() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let t = ended_without_effects(&h, &TaskEvent::Cancel).await;
    let workspace = t.workspace_id.unwrap();
    h.clock.advance(Duration::from_secs(1));

    let (runner, workspaces) = restarted(&h);
    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            ended: 1,
            ..Resumed::default()
        }
    );
    // As a cancel does: the agent stopped, the workspace kept.
    assert_eq!(workspaces.stopped(), vec![workspace]);
    assert!(workspaces.destroyed().is_empty());
    assert_eq!(
        h.workspace_status(workspace).await,
        WorkspaceStatus::Stopped
    );
    assert_eq!(session_status(&h, &t).await, SessionStatus::Stopped);
    assert_eq!(h.task(t.id).await.status, TaskStatus::Cancelled);
}
