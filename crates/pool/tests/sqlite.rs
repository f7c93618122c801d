//! The runner and pool on the SQLite store (kiln-backends): the same concurrency test as on
//! the memory store, through real SQL claims and compare-and-set updates.

mod common;

use std::sync::Arc;

use kiln_backends::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_runs_complete_on_the_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::connect(path.to_str().unwrap())
        .await
        .expect("open SQLite store");
    let report = common::fifty_concurrent_runs(Arc::new(store)).await;
    println!("SQLite: {report}");
}
