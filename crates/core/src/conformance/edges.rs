//! Edges a SQL store can get wrong while the memory store cannot: batches that span
//! sessions or exceed one statement, ties in ordering, deletes that must not cascade, edits
//! that move their session, and owner filters that must exclude.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::Fixture;
use crate::ids::{NodeId, WorkspaceId};
use crate::model::{Role, VmSize, Workspace, WorkspaceStatus};
use crate::store::{Change, MessagePage, SessionQuery, Store, WorkspaceQuery};
use crate::task::TaskStatus;

/// One batch with messages of two sessions: each session numbers its own messages, counts
/// them and takes its topic from its own first user message; the feed covers both.
pub async fn a_batch_spanning_sessions_numbers_each_session_on_its_own(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let a = f.session(None).await;
    let b = f.session(None).await;
    let earlier: Vec<_> = (0..2)
        .map(|i| f.message(a.id, Role::Assistant, &format!("a{i}")))
        .collect();
    store.insert_messages(&earlier, f.now()).await.unwrap();
    let mut feed = store.subscribe().await.unwrap();
    let batch = vec![
        f.message(a.id, Role::User, "Topic of A"),
        f.message(b.id, Role::Assistant, "b0"),
        f.message(a.id, Role::User, "not the topic"),
        f.message(b.id, Role::User, "Topic of B"),
    ];
    let out = store.insert_messages(&batch, f.now()).await.unwrap();
    assert_eq!((out.persisted, out.duplicates), (4, 0));
    let cursors: Vec<_> = out
        .stored
        .iter()
        .map(|m| (m.message.session_id, m.cursor))
        .collect();
    assert_eq!(
        cursors,
        vec![(a.id, 3), (b.id, 1), (a.id, 4), (b.id, 2)],
        "each session's cursors continue its own sequence, in input order"
    );
    for (session, count, topic) in [(a.id, 4, "Topic of A"), (b.id, 2, "Topic of B")] {
        let stored = store.get_session(session).await.unwrap().unwrap();
        assert_eq!(stored.message_count, count);
        assert_eq!(stored.topic.as_deref(), Some(topic));
        let page = store
            .list_messages(session, MessagePage::Latest { limit: 10 })
            .await
            .unwrap();
        assert_eq!(
            page.iter().map(|m| m.cursor).collect::<Vec<_>>(),
            (1..=count).collect::<Vec<_>>()
        );
    }

    // A feed that crosses processes is asynchronous: the announcement of the earlier insert
    // may still arrive after subscribing, so only the new cursors are counted.
    let mut covered: HashMap<_, Vec<i64>> = HashMap::new();
    let new_cursors = |session, first: i64, last: i64| {
        let from = if session == a.id { 3 } else { 1 };
        (first.max(from)..=last).collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while covered.get(&a.id).map_or(0, Vec::len) < 2 || covered.get(&b.id).map_or(0, Vec::len) < 2 {
        let event = tokio::time::timeout_at(deadline, feed.next())
            .await
            .expect("the change feed announced both sessions within 10 s")
            .expect("the feed stays open");
        if let Change::MessagesStored {
            session_id,
            first,
            last,
        } = event.change
            && (session_id == a.id || session_id == b.id)
        {
            covered
                .entry(session_id)
                .or_default()
                .extend(new_cursors(session_id, first, last));
        }
    }
    for list in covered.values_mut() {
        list.sort_unstable();
    }
    assert_eq!(
        covered[&a.id],
        vec![3, 4],
        "each new message announced once"
    );
    assert_eq!(
        covered[&b.id],
        vec![1, 2],
        "each new message announced once"
    );
}

/// A batch far larger than the outbox sends (more rows than one SQL statement binds) is
/// stored whole, with contiguous cursors, its repeats counted as duplicates.
pub async fn a_batch_larger_than_one_statement_is_stored_whole(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let s = f.session(None).await;
    let mut batch: Vec<_> = (0..1200)
        .map(|i| f.message(s.id, Role::Assistant, &format!("big{i}")))
        .collect();
    batch.extend(batch[..100].to_vec());
    let out = store.insert_messages(&batch, f.now()).await.unwrap();
    assert_eq!((out.persisted, out.duplicates), (1200, 100));
    let page = store
        .list_messages(s.id, MessagePage::Latest { limit: 5000 })
        .await
        .unwrap();
    assert_eq!(page.len(), 1200);
    assert!(
        page.iter().zip(1..).all(|(m, c)| m.cursor == c),
        "cursors 1..=1200"
    );
    assert_eq!(page[1199].message.content, "big1199");
}

/// Equal sort keys fall back to the id: claims take the smaller id, projects list by id,
/// sessions list newest (larger) id first.
pub async fn ties_in_order_break_by_id(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let deadline = f.later(Duration::from_secs(600));
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let node = f.node(VmSize::Medium, crate::node::NodeState::Warm, Some(deadline));
        store.insert_node(&node).await.unwrap();
        nodes.push(node.id);
    }
    nodes.sort();
    for expected in &nodes {
        let claimed = store
            .claim_warm_node(
                f.owner,
                VmSize::Medium,
                "memory",
                None,
                crate::ids::TaskId::new(),
                f.now(),
            )
            .await
            .unwrap()
            .expect("a warm node");
        assert_eq!(claimed.id, *expected, "equal deadlines: smaller id first");
    }

    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(f.session(None).await.id);
    }
    sessions.sort_by(|x, y| y.cmp(x));
    let listed: Vec<_> = store
        .list_sessions(f.project.id, &SessionQuery::default())
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, sessions, "same creation time: larger id first");

    let mut second = f.project.clone();
    second.id = crate::ids::ProjectId::new();
    store.create_project(&second).await.unwrap();
    let mut ids = vec![f.project.id, second.id];
    ids.sort();
    let listed: Vec<_> = store
        .list_projects(f.owner)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(listed, ids, "same creation time: smaller id first");
}

/// Deleting a task removes only the task: its chat session and messages stay.
pub async fn deleting_a_task_keeps_its_session(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let task = f.task("gone", 0, TaskStatus::Completed);
    store.create_task(&task).await.unwrap();
    let s = f.session(Some(task.id)).await;
    store
        .insert_messages(&[f.message(s.id, Role::User, "kept")], f.now())
        .await
        .unwrap();
    assert!(store.delete_task(task.id).await.unwrap());
    assert_eq!(store.get_task(task.id).await.unwrap(), None);
    assert!(
        !store.delete_task(task.id).await.unwrap(),
        "deleting twice: false"
    );
    let kept = store
        .get_session(s.id)
        .await
        .unwrap()
        .expect("session kept");
    assert_eq!((kept.task_id, kept.message_count), (Some(task.id), 1));
    assert_eq!(
        store
            .list_messages(s.id, MessagePage::Latest { limit: 10 })
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Editing a message moves its session's `updated_at`, not its count or the cursor.
pub async fn editing_a_message_moves_its_session(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let s = f.session(None).await;
    let m = f.message(s.id, Role::User, "draft");
    store
        .insert_messages(std::slice::from_ref(&m), f.now())
        .await
        .unwrap();
    f.advance(Duration::from_secs(30));
    store
        .update_message_content(m.id, "edited", f.now())
        .await
        .unwrap();
    let session = store.get_session(s.id).await.unwrap().unwrap();
    assert_eq!((session.updated_at, session.message_count), (f.now(), 1));
    let page = store
        .list_messages(s.id, MessagePage::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(
        (page.len(), page[0].cursor, page[0].message.content.as_str()),
        (1, 1, "edited")
    );
}

/// An owner filter on workspaces excludes every other owner's.
pub async fn workspace_listing_by_owner_excludes_other_owners(store: Arc<dyn Store>) {
    let mine = Fixture::new(store.clone()).await;
    let theirs = Fixture::new(store.clone()).await;
    let node = NodeId::new();
    let ws = |f: &Fixture| Workspace {
        id: WorkspaceId::new(),
        node_id: node,
        owner: f.owner,
        project_id: Some(f.project.id),
        task_id: None,
        session_id: None,
        branch: None,
        status: WorkspaceStatus::Running,
        created_at: f.now(),
        updated_at: f.now(),
    };
    let (a, b) = (ws(&mine), ws(&theirs));
    store.create_workspace(&a).await.unwrap();
    store.create_workspace(&b).await.unwrap();
    let listed: Vec<_> = store
        .list_workspaces(&WorkspaceQuery {
            owner: Some(mine.owner),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(listed, vec![a.id]);
}

/// Creating a row whose id exists is a conflict; creating one under a missing project is
/// "not found" (the store's foreign keys and unique keys surface as these two errors).
pub async fn creates_reject_duplicates_and_unknown_parents(store: Arc<dyn Store>) {
    use crate::store::StoreError;
    let f = Fixture::new(store.clone()).await;
    let session = f.session(None).await;
    let conflict = |r: Result<(), StoreError>, what: &str| {
        assert!(
            matches!(r, Err(StoreError::Conflict { .. })),
            "{what}: {r:?}"
        );
    };
    conflict(store.create_session(&session).await, "duplicate session");
    let mut orphan = session.clone();
    orphan.id = crate::ids::SessionId::new();
    orphan.project_id = crate::ids::ProjectId::new();
    let r = store.create_session(&orphan).await;
    assert!(
        matches!(r, Err(StoreError::NotFound { .. })),
        "session of a missing project: {r:?}"
    );
    let mut task = f.task("orphan", 0, TaskStatus::Draft);
    task.project_id = crate::ids::ProjectId::new();
    let r = store.create_task(&task).await;
    assert!(
        matches!(r, Err(StoreError::NotFound { .. })),
        "task of a missing project: {r:?}"
    );
    let node = f.warm_node(VmSize::Small, Duration::from_secs(60)).await;
    conflict(store.insert_node(&node).await, "duplicate node");
    let workspace = Workspace {
        id: WorkspaceId::new(),
        node_id: node.id,
        owner: f.owner,
        project_id: None,
        task_id: None,
        session_id: Some(session.id),
        branch: None,
        status: WorkspaceStatus::Creating,
        created_at: f.now(),
        updated_at: f.now(),
    };
    store.create_workspace(&workspace).await.unwrap();
    conflict(
        store.create_workspace(&workspace).await,
        "duplicate workspace",
    );
}

/// A batch that stores nothing new announces nothing.
pub async fn a_batch_of_duplicates_announces_nothing(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let s = f.session(None).await;
    let batch = vec![f.message(s.id, Role::Assistant, "once")];
    store.insert_messages(&batch, f.now()).await.unwrap();
    let mut feed = store.subscribe().await.unwrap();
    let out = store.insert_messages(&batch, f.now()).await.unwrap();
    assert_eq!((out.persisted, out.duplicates), (0, 1));
    let marker = crate::store::StoreEvent {
        owner: f.owner,
        project_id: Some(f.project.id),
        change: Change::Session { session_id: s.id },
    };
    store.publish(&marker).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, feed.next())
            .await
            .expect("the marker arrived within 10 s")
            .expect("the feed stays open");
        if event == marker {
            break;
        }
        // The first insert's announcement may still be on its way (feeds that cross
        // processes are asynchronous); anything later about this session is a bug.
        if let Change::MessagesStored {
            session_id, first, ..
        } = event.change
        {
            assert!(
                session_id != s.id || first == 1,
                "a duplicate batch was announced: {event:?}"
            );
        }
    }
}
