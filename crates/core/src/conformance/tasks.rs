use std::sync::Arc;
use std::time::Duration;

use super::Fixture;
use crate::ids::{NodeId, ProjectId, TaskId, WorkspaceId};
use crate::model::{VmSize, Workspace, WorkspaceStatus};
use crate::store::{Store, StoreError, TaskQuery, WorkspaceQuery};
use crate::task::{TaskEvent, TaskStatus};

/// Tasks list highest priority first, then oldest first, and filter by status.
pub async fn tasks_list_by_priority_and_filter_by_status(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let low = f.task("low", 0, TaskStatus::Draft);
    f.advance(Duration::from_secs(1));
    let high = f.task("high", 5, TaskStatus::Ready);
    f.advance(Duration::from_secs(1));
    let low2 = f.task("low2", 0, TaskStatus::Failed);
    for t in [&low2, &low, &high] {
        store.create_task(t).await.unwrap();
    }
    let ids = |ts: Vec<crate::model::Task>| ts.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store
            .list_tasks(f.project.id, &TaskQuery::default())
            .await
            .unwrap()),
        vec![high.id, low.id, low2.id]
    );
    let drafts_and_failed = TaskQuery {
        statuses: vec![TaskStatus::Draft, TaskStatus::Failed],
    };
    assert_eq!(
        ids(store
            .list_tasks(f.project.id, &drafts_and_failed)
            .await
            .unwrap()),
        vec![low.id, low2.id]
    );
    assert!(
        store
            .list_tasks(ProjectId::new(), &TaskQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get_task(high.id).await.unwrap(),
        Some(high.clone()),
        "a task round-trips"
    );
    assert!(matches!(
        store.create_task(&high).await,
        Err(StoreError::Conflict { .. })
    ));
    let orphan = crate::model::Task {
        id: TaskId::new(),
        project_id: ProjectId::new(),
        ..high
    };
    assert!(
        store.create_task(&orphan).await.is_err(),
        "a task needs its project"
    );
}

/// `update_task` writes only when the stored status is the expected one.
pub async fn task_updates_are_compare_and_set_on_status(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let mut task = f.task("cas", 1, TaskStatus::Draft);
    store.create_task(&task).await.unwrap();
    f.advance(Duration::from_secs(1));
    let node = NodeId::new();
    task.apply(&TaskEvent::Run, f.now()).unwrap();
    task.apply(&TaskEvent::NodeAcquired { node }, f.now())
        .unwrap();
    task.vm_size_override = Some(VmSize::Medium);
    task.agent_hint = Some("demo".into());
    store.update_task(&task, TaskStatus::Draft).await.unwrap();
    assert_eq!(
        store.get_task(task.id).await.unwrap(),
        Some(task.clone()),
        "every field is written"
    );

    // A second writer that still believes the task is a draft loses.
    let mut stale = task.clone();
    stale.status = TaskStatus::Cancelled;
    let err = store
        .update_task(&stale, TaskStatus::Draft)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        store.get_task(task.id).await.unwrap().unwrap().status,
        TaskStatus::Delegated
    );

    // Exactly one of many concurrent writers moving the same status wins.
    let winners: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let mut mine = task.clone();
            mine.status = TaskStatus::Failed;
            mine.error_message = Some(format!("writer {i}"));
            tokio::spawn(async move {
                store
                    .update_task(&mine, TaskStatus::Delegated)
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut wins = 0;
    for w in winners {
        wins += usize::from(w.await.unwrap());
    }
    assert_eq!(wins, 1, "exactly one compare-and-set wins");
    assert!(matches!(
        store
            .update_task(&f.task("missing", 0, TaskStatus::Draft), TaskStatus::Draft)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.delete_task(task.id).await.unwrap());
    assert!(!store.delete_task(task.id).await.unwrap());
}

/// Workspaces: create, read, update branch and status, list with filters.
pub async fn workspaces_are_stored_updated_and_filtered(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let node = NodeId::new();
    let task = f.task("ws", 0, TaskStatus::Draft);
    store.create_task(&task).await.unwrap();
    let ws = |node_id, task_id, status| Workspace {
        id: WorkspaceId::new(),
        node_id,
        owner: f.owner,
        project_id: Some(f.project.id),
        task_id,
        session_id: None,
        branch: None,
        status,
        created_at: f.now(),
        updated_at: f.now(),
    };
    let mut a = ws(node, Some(task.id), WorkspaceStatus::Creating);
    f.advance(Duration::from_secs(1));
    let b = ws(node, None, WorkspaceStatus::Running);
    let c = ws(NodeId::new(), None, WorkspaceStatus::Running);
    for w in [&a, &b, &c] {
        store.create_workspace(w).await.unwrap();
    }
    a.branch = Some("task/x-2".into());
    a.status = WorkspaceStatus::Running;
    a.updated_at = f.later(Duration::from_secs(9));
    store.update_workspace(&a).await.unwrap();
    assert_eq!(store.get_workspace(a.id).await.unwrap(), Some(a.clone()));
    let ids = |ws: Vec<Workspace>| ws.iter().map(|w| w.id).collect::<Vec<_>>();
    let on_node = WorkspaceQuery {
        node_id: Some(node),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_workspaces(&on_node).await.unwrap()),
        vec![a.id, b.id],
        "oldest first"
    );
    let of_task = WorkspaceQuery {
        task_id: Some(task.id),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_workspaces(&of_task).await.unwrap()),
        vec![a.id]
    );
    let running_of_owner = WorkspaceQuery {
        owner: Some(f.owner),
        statuses: vec![WorkspaceStatus::Running],
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_workspaces(&running_of_owner).await.unwrap()),
        vec![a.id, b.id, c.id]
    );
    let missing = Workspace {
        id: WorkspaceId::new(),
        ..a
    };
    assert!(matches!(
        store.update_workspace(&missing).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// `list_tasks_by_status` finds tasks of every project in the given statuses, oldest status
/// change first (the task runner's scan for tasks stuck in a transient state).
pub async fn tasks_list_by_status_across_projects(store: Arc<dyn Store>) {
    let a = Fixture::new(store.clone()).await;
    let b = Fixture::new(store.clone()).await;
    let queued_b = b.task("queued-b", 0, TaskStatus::Queued);
    store.create_task(&queued_b).await.unwrap();
    a.advance(Duration::from_secs(5));
    let queued_a = a.task("queued-a", 0, TaskStatus::Queued);
    let delegated_a = a.task("delegated-a", 0, TaskStatus::Delegated);
    let draft_a = a.task("draft-a", 0, TaskStatus::Draft);
    for t in [&delegated_a, &draft_a, &queued_a] {
        store.create_task(t).await.unwrap();
    }
    let ours = [queued_b.id, queued_a.id, delegated_a.id, draft_a.id];
    let found: Vec<TaskId> = store
        .list_tasks_by_status(&[TaskStatus::Queued, TaskStatus::Delegated])
        .await
        .expect("list_tasks_by_status")
        .into_iter()
        .map(|t| t.id)
        .filter(|id| ours.contains(id))
        .collect();
    assert_eq!(
        found.len(),
        3,
        "queued and delegated tasks of both projects"
    );
    assert_eq!(found[0], queued_b.id, "oldest status change first");
    assert!(!found.contains(&draft_a.id), "only the given statuses");
}
