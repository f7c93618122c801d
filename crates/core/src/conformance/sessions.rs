use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::Fixture;
use crate::ids::{ProjectId, SessionId, TaskId};
use crate::model::{Project, Role, SessionStatus, VmSize};
use crate::store::{
    Change, MessagePage, SessionPatch, SessionQuery, Store, StoreError, StoreEvent,
};
use crate::task::TaskStatus;

/// Projects: create, read, list by owner only, update the editable fields.
pub async fn projects_are_scoped_to_their_owner(store: Arc<dyn Store>) {
    let a = Fixture::new(store.clone()).await;
    let b = Fixture::new(store.clone()).await;
    let mine = store.list_projects(a.owner).await.unwrap();
    assert_eq!(
        mine.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![a.project.id],
        "list_projects filters by owner"
    );
    assert_eq!(
        store.get_project(a.project.id).await.unwrap().as_ref(),
        Some(&a.project),
        "get_project round-trips"
    );
    assert!(store.get_project(ProjectId::new()).await.unwrap().is_none());

    let updated = Project {
        name: "renamed".into(),
        repository_url: "https://example.invalid/r.git".into(),
        default_vm_size: VmSize::Large,
        provider: "hetzner".into(),
        updated_at: a.later(Duration::from_secs(5)),
        ..a.project.clone()
    };
    store.update_project(&updated).await.unwrap();
    assert_eq!(
        store.get_project(a.project.id).await.unwrap(),
        Some(updated)
    );
    let missing = Project {
        id: ProjectId::new(),
        ..b.project.clone()
    };
    assert!(matches!(
        store.update_project(&missing).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        matches!(
            store.create_project(&b.project).await,
            Err(StoreError::Conflict { .. })
        ),
        "a second create of one project id is a conflict"
    );
}

/// Deleting a project removes what belongs to it, and only that.
pub async fn deleting_a_project_removes_its_tasks_sessions_and_messages(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let other = Fixture::new(store.clone()).await;
    let task = f.task("t", 0, TaskStatus::Draft);
    store.create_task(&task).await.unwrap();
    let session = f.session(Some(task.id)).await;
    let kept = other.session(None).await;
    let m = f.message(session.id, Role::User, "hi");
    store
        .insert_messages(std::slice::from_ref(&m), f.now())
        .await
        .unwrap();
    store
        .insert_messages(&[other.message(kept.id, Role::User, "stay")], f.now())
        .await
        .unwrap();

    assert!(store.delete_project(f.project.id).await.unwrap());
    assert!(
        !store.delete_project(f.project.id).await.unwrap(),
        "a second delete reports nothing deleted"
    );
    assert!(store.get_task(task.id).await.unwrap().is_none());
    assert!(store.get_session(session.id).await.unwrap().is_none());
    assert!(
        store
            .list_messages(session.id, MessagePage::Latest { limit: 10 })
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list_messages(kept.id, MessagePage::Latest { limit: 10 })
            .await
            .unwrap()
            .len(),
        1
    );
    // The message id is free again only in the sense that the old row is gone: re-inserting
    // it into a live session stores it.
    let again = crate::model::ChatMessage {
        session_id: kept.id,
        ..m
    };
    assert_eq!(
        store
            .insert_messages(&[again], f.now())
            .await
            .unwrap()
            .persisted,
        1
    );
}

/// Sessions list newest first and filter by task.
pub async fn sessions_list_newest_first_and_filter_by_task(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let task = f.task("t", 0, TaskStatus::Draft);
    store.create_task(&task).await.unwrap();
    let first = f.session(None).await;
    f.advance(Duration::from_secs(1));
    let second = f.session(Some(task.id)).await;
    f.advance(Duration::from_secs(1));
    let third = f.session(None).await;
    let all = store
        .list_sessions(f.project.id, &SessionQuery::default())
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![third.id, second.id, first.id],
        "newest first"
    );
    let of_task = store
        .list_sessions(
            f.project.id,
            &SessionQuery {
                task_id: Some(task.id),
                limit: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(of_task, vec![second.clone()]);
    let limited = store
        .list_sessions(
            f.project.id,
            &SessionQuery {
                task_id: None,
                limit: Some(2),
            },
        )
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    assert!(
        store
            .list_sessions(ProjectId::new(), &SessionQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.get_session(second.id).await.unwrap(), Some(second));
}

/// `list_chats_by_status` finds the chats without a task of every project in the given
/// statuses, oldest first; task sessions are never listed (the runner's resume scan).
pub async fn chats_list_by_status_across_projects(store: Arc<dyn Store>) {
    let a = Fixture::new(store.clone()).await;
    let b = Fixture::new(store.clone()).await;
    let pending = SessionPatch {
        status: Some(SessionStatus::Pending),
        ..SessionPatch::default()
    };
    let chat_b = b.session(None).await;
    store
        .update_session(chat_b.id, &pending, b.now())
        .await
        .unwrap();
    a.advance(Duration::from_secs(5));
    let chat_a = a.session(None).await;
    store
        .update_session(chat_a.id, &pending, a.now())
        .await
        .unwrap();
    let active_a = a.session(None).await;
    let task = a.task("t", 0, TaskStatus::Queued);
    store.create_task(&task).await.unwrap();
    let of_task = a.session(Some(task.id)).await;
    store
        .update_session(of_task.id, &pending, a.now())
        .await
        .unwrap();
    let ours = [chat_b.id, chat_a.id, active_a.id, of_task.id];
    let found: Vec<SessionId> = store
        .list_chats_by_status(&[SessionStatus::Pending])
        .await
        .expect("list_chats_by_status")
        .into_iter()
        .map(|s| s.id)
        .filter(|id| ours.contains(id))
        .collect();
    assert_eq!(
        found,
        vec![chat_b.id, chat_a.id],
        "pending chats of both projects, oldest first; no task session, no other status"
    );
    let both: Vec<SessionId> = store
        .list_chats_by_status(&[SessionStatus::Pending, SessionStatus::Active])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .filter(|id| ours.contains(id))
        .collect();
    assert_eq!(both.len(), 3, "{both:?}");
    assert!(
        !both.contains(&of_task.id),
        "a task's session is not a chat"
    );
    assert!(store.list_chats_by_status(&[]).await.unwrap().is_empty());
}

/// A chat keeps the agent hint and VM size it was created with, through every read (by id,
/// by project, the resume scan) and through patches, which never touch them; a chat created
/// without them reads back without them.
pub async fn chats_keep_their_agent_hint_and_vm_size(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let plain = f.session(None).await;
    let mut chosen = plain.clone();
    chosen.id = SessionId::new();
    chosen.agent_hint = Some("codex".into());
    chosen.vm_size = Some(VmSize::Large);
    store.create_session(&chosen).await.unwrap();
    assert_eq!(
        store.get_session(chosen.id).await.unwrap(),
        Some(chosen.clone()),
        "a created chat reads back with its agent hint and size"
    );
    assert_eq!(
        store.get_session(plain.id).await.unwrap(),
        Some(plain.clone()),
        "a chat created without a hint or size reads back without them"
    );
    let listed = store
        .list_sessions(f.project.id, &SessionQuery::default())
        .await
        .unwrap();
    assert!(listed.contains(&chosen), "{listed:?}");
    let pending = store
        .update_session(
            chosen.id,
            &SessionPatch {
                status: Some(SessionStatus::Pending),
                topic: Some(Some("topic".into())),
                ..SessionPatch::default()
            },
            f.now(),
        )
        .await
        .unwrap();
    assert_eq!(
        (pending.agent_hint.as_deref(), pending.vm_size),
        (Some("codex"), Some(VmSize::Large)),
        "a patch leaves the hint and size alone"
    );
    let resumable = store
        .list_chats_by_status(&[SessionStatus::Pending])
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id == chosen.id)
        .expect("the pending chat is listed for resume");
    assert_eq!(resumable, pending);
}

/// A session patch changes only the fields it names, and moves updated_at.
pub async fn session_patches_change_only_what_they_name(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let s = f.session(None).await;
    f.advance(Duration::from_secs(3));
    let ws = crate::ids::WorkspaceId::new();
    let patched = store
        .update_session(
            s.id,
            &SessionPatch {
                workspace_id: Some(Some(ws)),
                ..Default::default()
            },
            f.now(),
        )
        .await
        .unwrap();
    assert_eq!(
        (patched.workspace_id, patched.status, patched.topic.clone()),
        (Some(ws), SessionStatus::Active, None)
    );
    assert_eq!(patched.updated_at, f.now());
    let patched = store
        .update_session(
            s.id,
            &SessionPatch {
                status: Some(SessionStatus::Completed),
                workspace_id: Some(None),
                topic: Some(Some("T".into())),
            },
            f.now(),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            patched.workspace_id,
            patched.status,
            patched.topic.as_deref()
        ),
        (None, SessionStatus::Completed, Some("T"))
    );
    assert_eq!(store.get_session(s.id).await.unwrap(), Some(patched));
    assert!(matches!(
        store
            .update_session(SessionId::new(), &SessionPatch::default(), f.now())
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Inserting messages is idempotent by id; counts, cursors, updated_at and topic move with it.
pub async fn message_inserts_are_idempotent_and_move_the_session(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let s = f.session(None).await;
    let sys = f.message(s.id, Role::System, "plan");
    let user = f.message(s.id, Role::User, "Fix the flaky test\nin module x");
    let mut tool = f.message(s.id, Role::Tool, "write a.txt");
    tool.tool = Some(crate::model::ToolMeta {
        tool: "edit".into(),
        target: Some("a.txt".into()),
        status: Some("completed".into()),
    });
    tool.seq = Some(7);
    f.advance(Duration::from_secs(2));
    let out = store
        .insert_messages(&[sys.clone(), user.clone(), tool.clone()], f.now())
        .await
        .unwrap();
    assert_eq!((out.persisted, out.duplicates), (3, 0));
    assert_eq!(
        out.stored.iter().map(|m| m.cursor).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "cursors are 1.. in input order"
    );
    assert_eq!(
        out.stored[2].message, tool,
        "a stored message round-trips, tool metadata and seq included"
    );

    let again = f.message(s.id, Role::User, "second user message");
    let out = store
        .insert_messages(
            &[user.clone(), again.clone(), sys.clone(), again.clone()],
            f.now(),
        )
        .await
        .unwrap();
    assert_eq!(
        (out.persisted, out.duplicates),
        (1, 3),
        "duplicates by id, also within one batch"
    );
    assert_eq!(out.stored.len(), 1);
    assert_eq!(out.stored[0].cursor, 4);

    let session = store.get_session(s.id).await.unwrap().unwrap();
    assert_eq!(session.message_count, 4);
    assert_eq!(session.updated_at, f.now());
    assert_eq!(
        session.topic.as_deref(),
        Some("Fix the flaky test"),
        "topic from the first user message"
    );

    // A set topic is never overwritten by later messages.
    let s2 = f.session(None).await;
    store
        .update_session(
            s2.id,
            &SessionPatch {
                topic: Some(Some("Chosen".into())),
                ..Default::default()
            },
            f.now(),
        )
        .await
        .unwrap();
    store
        .insert_messages(&[f.message(s2.id, Role::User, "other")], f.now())
        .await
        .unwrap();
    assert_eq!(
        store
            .get_session(s2.id)
            .await
            .unwrap()
            .unwrap()
            .topic
            .as_deref(),
        Some("Chosen")
    );
}

/// A batch naming an unknown session stores nothing at all.
pub async fn messages_into_an_unknown_session_store_nothing(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let s = f.session(None).await;
    let good = f.message(s.id, Role::User, "ok");
    let bad = f.message(SessionId::new(), Role::User, "lost");
    let err = store
        .insert_messages(&[good.clone(), bad], f.now())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: "session",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        store
            .list_messages(s.id, MessagePage::Latest { limit: 10 })
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .get_session(s.id)
            .await
            .unwrap()
            .unwrap()
            .message_count,
        0
    );
}

/// Pages: latest N, N before a cursor, N after a cursor, always oldest first.
pub async fn message_pages_read_latest_before_and_after(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let s = f.session(None).await;
    let batch: Vec<_> = (1..=25)
        .map(|i| f.message(s.id, Role::Assistant, &format!("m{i}")))
        .collect();
    store.insert_messages(&batch[..10], f.now()).await.unwrap();
    store.insert_messages(&batch[10..], f.now()).await.unwrap();
    let cursors =
        |page: Vec<crate::model::StoredMessage>| page.iter().map(|m| m.cursor).collect::<Vec<_>>();
    let read = |page| {
        let store = store.clone();
        async move { store.list_messages(s.id, page).await.unwrap() }
    };
    assert_eq!(
        cursors(read(MessagePage::Latest { limit: 3 }).await),
        vec![23, 24, 25]
    );
    assert_eq!(
        cursors(
            read(MessagePage::Before {
                cursor: 23,
                limit: 3
            })
            .await
        ),
        vec![20, 21, 22]
    );
    assert_eq!(
        cursors(
            read(MessagePage::Before {
                cursor: 3,
                limit: 5
            })
            .await
        ),
        vec![1, 2]
    );
    assert_eq!(
        cursors(
            read(MessagePage::After {
                cursor: 20,
                limit: 3
            })
            .await
        ),
        vec![21, 22, 23]
    );
    assert_eq!(
        cursors(
            read(MessagePage::After {
                cursor: 23,
                limit: 10
            })
            .await
        ),
        vec![24, 25]
    );
    assert!(
        read(MessagePage::After {
            cursor: 25,
            limit: 10
        })
        .await
        .is_empty()
    );
    let latest = read(MessagePage::Latest { limit: 100 }).await;
    assert_eq!(latest.len(), 25);
    assert_eq!(latest[0].message.content, "m1");
    assert_eq!(latest[24].message.content, "m25");
}

/// Many writers inserting overlapping batches: each message stored once, counts exact.
pub async fn concurrent_duplicate_inserts_store_each_message_once(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let s = f.session(None).await;
    let messages: Vec<_> = (0..40)
        .map(|i| f.message(s.id, Role::Assistant, &format!("c{i}")))
        .collect();
    let now = f.now();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            // Each writer sends every message, in a rotated order, in batches of 10.
            let mut mine = messages.clone();
            mine.rotate_left(w * 5);
            tokio::spawn(async move {
                let mut total = (0, 0);
                for chunk in mine.chunks(10) {
                    let out = store
                        .insert_messages(chunk, now)
                        .await
                        .expect("concurrent insert");
                    total.0 += out.persisted;
                    total.1 += out.duplicates;
                }
                total
            })
        })
        .collect();
    let (mut persisted, mut duplicates) = (0, 0);
    for w in writers {
        let (p, d) = w.await.unwrap();
        persisted += p;
        duplicates += d;
    }
    assert_eq!(persisted, 40, "each message persisted exactly once");
    assert_eq!(duplicates, 8 * 40 - 40);
    let stored = store
        .list_messages(s.id, MessagePage::Latest { limit: 1000 })
        .await
        .unwrap();
    assert_eq!(stored.len(), 40);
    assert_eq!(
        stored.iter().map(|m| m.cursor).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>(),
        "cursors contiguous"
    );
    assert_eq!(
        store
            .get_session(s.id)
            .await
            .unwrap()
            .unwrap()
            .message_count,
        40
    );
}

/// A stored message's content can be replaced (an edited draft prompt).
pub async fn updating_a_message_changes_its_content(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let s = f.session(None).await;
    let m = f.message(s.id, Role::User, "before");
    store
        .insert_messages(std::slice::from_ref(&m), f.now())
        .await
        .unwrap();
    store
        .update_message_content(m.id, "after", f.now())
        .await
        .unwrap();
    let page = store
        .list_messages(s.id, MessagePage::Latest { limit: 1 })
        .await
        .unwrap();
    assert_eq!(page[0].message.content, "after");
    assert_eq!(page[0].cursor, 1);
    assert!(matches!(
        store
            .update_message_content(crate::ids::MessageId::new(), "x", f.now())
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Subscribers hear of stored messages (with their cursor range) and of published changes.
pub async fn the_change_feed_announces_stored_and_published_changes(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let s = f.session(None).await;
    let mut feed = store.subscribe().await.unwrap();
    let batch: Vec<_> = (0..3)
        .map(|i| f.message(s.id, Role::Assistant, &format!("e{i}")))
        .collect();
    store.insert_messages(&batch, f.now()).await.unwrap();
    let task = TaskId::new();
    let published = StoreEvent {
        owner: f.owner,
        project_id: Some(f.project.id),
        change: Change::Task { task_id: task },
    };
    store.publish(&published).await.unwrap();

    // Stores may announce a batch as one range or several; together they cover 1..=3.
    let mut covered = Vec::new();
    let mut seen_task = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while covered.len() < 3 || !seen_task {
        let event = tokio::time::timeout_at(deadline, feed.next())
            .await
            .expect("the change feed announced within 10 s")
            .expect("the feed stays open");
        match &event.change {
            Change::MessagesStored {
                session_id,
                first,
                last,
            } if *session_id == s.id => {
                assert_eq!(
                    (event.owner, event.project_id),
                    (f.owner, Some(f.project.id))
                );
                covered.extend(*first..=*last);
            }
            Change::Task { task_id } if *task_id == task => {
                assert_eq!(event, published);
                seen_task = true;
            }
            _ => {} // Other checks sharing the store.
        }
    }
    covered.sort_unstable();
    assert_eq!(covered, vec![1, 2, 3], "each stored message announced once");
}
