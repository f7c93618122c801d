//! The SQLite store against the kiln-core conformance suite, plus what only SQLite has:
//! WAL mode, two pools on one file, and persistence across reconnects.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kiln_backends::{SqliteConfig, SqliteStore};
use kiln_core::conformance::{Fixture, store_suite};
use kiln_core::{NodeStore, SessionStore, Store, StoreError, TaskId, VmSize};

async fn file_store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::connect(dir.path().join("kiln.db").to_str().unwrap())
        .await
        .expect("open SQLite store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_store_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    store_suite(Arc::new(file_store(&dir).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_in_memory_store_passes_the_store_suite() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store_suite(Arc::new(store)).await;
}

#[tokio::test]
async fn the_database_is_in_wal_mode_with_foreign_keys_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        synchronous, 2,
        "FULL: every commit reaches the disk by default"
    );
}

#[tokio::test]
async fn commits_may_skip_the_fsync_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::connect_with(SqliteConfig {
        fsync_every_commit: false,
        ..SqliteConfig::from_env(dir.path().join("kiln.db").to_str().unwrap())
    })
    .await
    .unwrap();
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(synchronous, 1, "NORMAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_through_two_pools_on_one_file_never_double_claim() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn Store> = Arc::new(file_store(&dir).await);
    let b: Arc<dyn Store> = Arc::new(file_store(&dir).await);
    let f = Fixture::new(a.clone()).await;
    let mut nodes = HashSet::new();
    for _ in 0..4 {
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
                store
                    .claim_warm_node(owner, VmSize::Small, "memory", None, TaskId::new(), now)
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut won = Vec::new();
    for c in claimers {
        won.extend(c.await.unwrap().map(|n| n.id));
    }
    assert_eq!(won.len(), 4, "one winner per warm node");
    assert_eq!(won.iter().copied().collect::<HashSet<_>>(), nodes);
}

#[tokio::test]
async fn rows_survive_a_reconnect_and_duplicates_are_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(file_store(&dir).await);
    let f = Fixture::new(store.clone()).await;
    assert!(matches!(
        store.create_project(&f.project).await,
        Err(StoreError::Conflict { .. })
    ));
    drop(f);
    drop(store);
    let again = file_store(&dir).await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM projects")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_closed_store_fails_with_a_retryable_error() {
    let store = SqliteStore::connect_with(SqliteConfig {
        max_connections: 2,
        ..SqliteConfig::from_env("sqlite::memory:")
    })
    .await
    .unwrap();
    store.close().await;
    let err = store
        .get_project(kiln_core::ProjectId::new())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}
