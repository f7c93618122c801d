//! The PostgreSQL store against the kiln-core conformance suite, plus what replicas need:
//! claims from two pools never double-claim, and the change feed crosses store instances.
//! Each test gets its own database (see `support`), so they run in parallel.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kiln_backends::PostgresStore;
use kiln_core::conformance::{Fixture, store_suite};
use kiln_core::{
    Change, NodeStore, Role, SessionStore, Store, StoreError, StoreEvent, TaskId, VmSize,
};
use support::TestDatabase;

async fn store(db: &TestDatabase) -> PostgresStore {
    PostgresStore::connect(&db.url)
        .await
        .expect("connect to the test database")
}

/// The next event about `wanted` within 10 s.
async fn next_event(
    feed: &mut futures::stream::BoxStream<'static, StoreEvent>,
    wanted: impl Fn(&StoreEvent) -> bool,
) -> StoreEvent {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("an event within 10 s")
            .expect("the feed stays open");
        if wanted(&event) {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_store_suite() {
    let Some(db) = TestDatabase::create("postgres_store_passes_the_store_suite").await else {
        return;
    };
    store_suite(Arc::new(store(&db).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_from_two_replicas_never_double_claim() {
    let Some(db) = TestDatabase::create("claims_from_two_replicas_never_double_claim").await else {
        return;
    };
    // Two replicas starting together on a fresh database migrate it once between them.
    let (a, b) = tokio::join!(store(&db), store(&db));
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(a), Arc::new(b));
    let f = Fixture::new(a.clone()).await;
    for round in 0..5 {
        let mut nodes = HashSet::new();
        for _ in 0..3 {
            nodes.insert(
                f.warm_node(VmSize::Small, Duration::from_secs(600))
                    .await
                    .id,
            );
        }
        let now = f.now();
        let claimers: Vec<_> = (0..16)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let owner = f.owner;
                tokio::spawn(async move {
                    let task = TaskId::new();
                    store
                        .claim_warm_node(owner, VmSize::Small, "memory", None, task, now)
                        .await
                        .expect("claim")
                        .map(|n| (n.id, task))
                })
            })
            .collect();
        let mut won = Vec::new();
        for c in claimers {
            won.extend(c.await.unwrap());
        }
        let claimed: HashSet<_> = won.iter().map(|(node, _)| *node).collect();
        assert_eq!(
            claimed.len(),
            won.len(),
            "round {round}: a node claimed twice"
        );
        assert!(
            claimed.is_subset(&nodes),
            "round {round}: claimed a foreign node"
        );
        for (node, task) in won {
            let stored = a.get_node(node).await.unwrap().unwrap();
            assert_eq!(stored.claimed_by, Some(task), "round {round}: stored claim");
        }
        // SKIP LOCKED may let a claimer pass over a node another holds for an instant; what
        // it must never do is hand one node out twice. Whatever was skipped stays warm.
        for node in nodes.difference(&claimed) {
            let stored = a.get_node(*node).await.unwrap().unwrap();
            assert_eq!(stored.state, kiln_core::NodeState::Warm);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_inserts_from_two_replicas_are_counted_exactly() {
    let Some(db) =
        TestDatabase::create("duplicate_inserts_from_two_replicas_are_counted_exactly").await
    else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(store(&db).await);
    let b: Arc<dyn Store> = Arc::new(store(&db).await);
    let f = Fixture::new(a.clone()).await;
    let sessions = [f.session(None).await.id, f.session(None).await.id];
    // Batches mix both sessions, so transactions lock two sessions each (in id order).
    let messages: Vec<_> = (0..60)
        .map(|i| f.message(sessions[i % 2], Role::Assistant, &format!("d{i}")))
        .collect();
    let now = f.now();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = if w % 2 == 0 { a.clone() } else { b.clone() };
            let mut mine = messages.clone();
            mine.rotate_left(w * 7);
            tokio::spawn(async move {
                let mut total = (0, 0);
                for chunk in mine.chunks(10) {
                    let out = store.insert_messages(chunk, now).await.expect("insert");
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
    assert_eq!((persisted, duplicates), (60, 8 * 60 - 60));
    for session in sessions {
        let page = b
            .list_messages(session, kiln_core::MessagePage::Latest { limit: 100 })
            .await
            .unwrap();
        assert_eq!(
            page.iter().map(|m| m.cursor).collect::<Vec<_>>(),
            (1..=30).collect::<Vec<_>>(),
            "contiguous cursors per session"
        );
        let stored = a.get_session(session).await.unwrap().unwrap();
        assert_eq!(stored.message_count, 30);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stored_and_published_changes_reach_another_replica() {
    let Some(db) = TestDatabase::create("stored_and_published_changes_reach_another_replica").await
    else {
        return;
    };
    let writer: Arc<dyn Store> = Arc::new(store(&db).await);
    let reader = store(&db).await;
    let mut feed = reader.subscribe().await.unwrap();
    let mut own_feed = writer.subscribe().await.unwrap();

    let f = Fixture::new(writer.clone()).await;
    let s = f.session(None).await;
    let batch: Vec<_> = (0..3)
        .map(|i| f.message(s.id, Role::Assistant, &format!("m{i}")))
        .collect();
    writer.insert_messages(&batch, f.now()).await.unwrap();
    let about_session = |e: &StoreEvent| matches!(e.change, Change::MessagesStored { session_id, .. } if session_id == s.id);
    for feed in [&mut feed, &mut own_feed] {
        let event = next_event(feed, about_session).await;
        assert_eq!(
            event,
            StoreEvent {
                owner: f.owner,
                project_id: Some(f.project.id),
                change: Change::MessagesStored {
                    session_id: s.id,
                    first: 1,
                    last: 3
                },
            }
        );
    }

    // Published by the reader replica, heard by the writer replica.
    let published = StoreEvent {
        owner: f.owner,
        project_id: None,
        change: Change::Task {
            task_id: TaskId::new(),
        },
    };
    reader.publish(&published).await.unwrap();
    assert_eq!(
        next_event(&mut own_feed, |e| *e == published).await,
        published
    );

    // A batch of duplicates stores nothing and announces nothing.
    writer.insert_messages(&batch, f.now()).await.unwrap();
    let marker = StoreEvent {
        owner: f.owner,
        project_id: None,
        change: Change::Session { session_id: s.id },
    };
    writer.publish(&marker).await.unwrap();
    let next = next_event(&mut feed, |e| about_session(e) || *e == marker).await;
    assert_eq!(next, marker, "duplicates were announced");
}

#[tokio::test]
async fn errors_are_classified_at_the_edge() {
    let Some(db) = TestDatabase::create("errors_are_classified_at_the_edge").await else {
        return;
    };
    let pg = store(&db).await;
    let store: Arc<dyn Store> = Arc::new(pg.clone());
    let f = Fixture::new(store.clone()).await;
    let err = store.create_project(&f.project).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(!err.is_retryable());
    pg.close().await;
    let err = store.get_project(f.project.id).await.unwrap_err();
    assert!(err.is_retryable(), "a closed pool is retryable: {err:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_retryable() {
    let Some(_) = support::postgres_url("an_unreachable_server_is_retryable") else {
        return;
    };
    let err = PostgresStore::connect_with(kiln_backends::PostgresConfig {
        acquire_timeout: Duration::from_millis(500),
        ..kiln_backends::PostgresConfig::from_env("postgres://postgres@127.0.0.1:1/none")
    })
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_recovers_from_a_lost_connection() {
    let Some(db) = TestDatabase::create("the_change_feed_recovers_from_a_lost_connection").await
    else {
        return;
    };
    let reader = store(&db).await;
    let writer = store(&db).await;
    let mut feed = reader.subscribe().await.unwrap();
    let listeners: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(writer.pool())
    .await
    .unwrap();
    assert_eq!(
        listeners.len(),
        2,
        "both replicas' listening connections were found"
    );
    for pid in &listeners {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(writer.pool())
            .await
            .unwrap();
    }
    // Wait until those connections are really gone before publishing.
    loop {
        let alive: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&listeners)
                .fetch_one(writer.pool())
                .await
                .unwrap();
        if alive == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // What is announced while the listener reconnects is lost; it must hear again soon after.
    let event = |n: i64| StoreEvent {
        owner: kiln_core::UserId::new(),
        project_id: None,
        change: Change::MessagesStored {
            session_id: kiln_core::SessionId::new(),
            first: n,
            last: n,
        },
    };
    let heard = tokio::time::timeout(Duration::from_secs(15), async {
        for n in 0.. {
            writer.publish(&event(n)).await.unwrap();
            if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), feed.next()).await
            {
                return e;
            }
        }
        unreachable!()
    })
    .await
    .expect("the feed heard again within 15 s of losing its connection");
    assert!(matches!(heard.change, Change::MessagesStored { .. }));
}
