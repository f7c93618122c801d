//! Store figures, printed (never asserted), for SQLite and PostgreSQL:
//!
//! - batch-insert throughput: concurrent writers, batches of 50 messages, through
//!   `insert_messages` (dedupe, cursors, session update, change feed); on PostgreSQL also a
//!   plain multi-row `INSERT` of the same rows through the same pool, the limit;
//! - claim latency p50/p99 with 16 concurrent claimers;
//! - the page load: list 100 sessions and read the latest 200 messages of a session that
//!   holds 10,000.
//!
//! `cargo bench -p kiln-backends --bench stores`. PostgreSQL runs when
//! `KILN_TEST_POSTGRES_URL` is set (in its own throwaway database). Sizes:
//! `KILN_BENCH_WRITERS` (default 8), `KILN_BENCH_BATCHES` per writer (default 20).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_backends::{PostgresStore, SqliteStore};
use kiln_core::conformance::Fixture;
use kiln_core::{
    ChatMessage, LifecycleClock, MessageId, MessagePage, Role, SessionId, SessionQuery, Store,
    SystemClock, TaskId, VmSize,
};
use sqlx::{Postgres, QueryBuilder};

const BATCH: usize = 50;
const CLAIMERS: usize = 16;
const CLAIMS_PER_CLAIMER: usize = 25;
const PAGE_SESSIONS: usize = 100;
const PAGE_MESSAGES: usize = 10_000;
const PAGE_RUNS: usize = 50;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn message(session: SessionId, i: usize) -> ChatMessage {
    ChatMessage {
        id: MessageId::new(),
        session_id: session,
        role: if i.is_multiple_of(5) {
            Role::User
        } else {
            Role::Assistant
        },
        content: format!("message {i}: {}", "lorem ipsum dolor sit amet ".repeat(8)),
        tool: None,
        seq: Some(i as i64),
        created_at: SystemClock.now(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Messages per writer, in batches, one session per writer.
async fn batches(f: &Fixture, writers: usize, per_writer: usize) -> Vec<Vec<Vec<ChatMessage>>> {
    let mut all = Vec::new();
    for _ in 0..writers {
        let session = f.session(None).await;
        let messages: Vec<_> = (0..per_writer * BATCH)
            .map(|i| message(session.id, i))
            .collect();
        all.push(messages.chunks(BATCH).map(<[_]>::to_vec).collect());
    }
    all
}

#[allow(clippy::disallowed_methods)] // A benchmark measures wall time.
async fn insert_throughput(store: &Arc<dyn Store>, f: &Fixture) -> f64 {
    let (writers, per_writer) = (
        setting("KILN_BENCH_WRITERS", 8),
        setting("KILN_BENCH_BATCHES", 20),
    );
    let work = batches(f, writers, per_writer).await;
    let started = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|mine| {
            let store = store.clone();
            tokio::spawn(async move {
                for batch in mine {
                    store
                        .insert_messages(&batch, SystemClock.now())
                        .await
                        .expect("insert");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (writers * per_writer * BATCH) as f64 / started.elapsed().as_secs_f64()
}

/// The same rows as a plain multi-row INSERT (no dedupe, no cursor assignment, no session
/// update, no notify): what the pool and server manage at best.
#[allow(clippy::disallowed_methods)] // A benchmark measures wall time.
async fn plain_insert_throughput(store: &PostgresStore, f: &Fixture) -> f64 {
    let (writers, per_writer) = (
        setting("KILN_BENCH_WRITERS", 8),
        setting("KILN_BENCH_BATCHES", 20),
    );
    let work = batches(f, writers, per_writer).await;
    let started = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|mine| {
            let pool = store.pool().clone();
            tokio::spawn(async move {
                let mut cursor = 0i64;
                for batch in mine {
                    let mut sql = QueryBuilder::<Postgres>::new(
                        "INSERT INTO chat_messages (id, session_id, cursor, role, content, \
                         tool, seq, created_at, stored_at) ",
                    );
                    sql.push_values(&batch, |mut row, m| {
                        cursor += 1;
                        row.push_bind(m.id.0)
                            .push_bind(m.session_id.0)
                            .push_bind(cursor)
                            .push_bind(m.role.as_str())
                            .push_bind(m.content.clone())
                            .push_bind(None::<serde_json::Value>)
                            .push_bind(m.seq)
                            .push_bind(m.created_at)
                            .push_bind(m.created_at);
                    });
                    sql.build().execute(&pool).await.expect("plain insert");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (writers * per_writer * BATCH) as f64 / started.elapsed().as_secs_f64()
}

#[allow(clippy::disallowed_methods)] // A benchmark measures wall time.
async fn claim_latency(store: &Arc<dyn Store>, f: &Fixture) -> (Duration, Duration) {
    for _ in 0..CLAIMERS * CLAIMS_PER_CLAIMER {
        f.warm_node(VmSize::Small, Duration::from_secs(3600)).await;
    }
    let claimers: Vec<_> = (0..CLAIMERS)
        .map(|_| {
            let store = store.clone();
            let (owner, now) = (f.owner, f.now());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for _ in 0..CLAIMS_PER_CLAIMER {
                    let started = Instant::now();
                    store
                        .claim_warm_node(owner, VmSize::Small, "memory", None, TaskId::new(), now)
                        .await
                        .expect("claim");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    all.sort();
    (percentile(&all, 0.5), percentile(&all, 0.99))
}

#[allow(clippy::disallowed_methods)] // A benchmark measures wall time.
async fn page_load(store: &Arc<dyn Store>, f: &Fixture) -> (Duration, Duration) {
    let big = f.session(None).await;
    for _ in 1..PAGE_SESSIONS {
        f.session(None).await;
    }
    let messages: Vec<_> = (0..PAGE_MESSAGES).map(|i| message(big.id, i)).collect();
    for chunk in messages.chunks(500) {
        store.insert_messages(chunk, f.now()).await.expect("seed");
    }
    let mut runs = Vec::new();
    for _ in 0..PAGE_RUNS {
        let started = Instant::now();
        let sessions = store
            .list_sessions(
                f.project.id,
                &SessionQuery {
                    task_id: None,
                    limit: Some(PAGE_SESSIONS as u32),
                },
            )
            .await
            .expect("sessions");
        let page = store
            .list_messages(big.id, MessagePage::Latest { limit: 200 })
            .await
            .expect("messages");
        runs.push(started.elapsed());
        assert_eq!((sessions.len(), page.len()), (PAGE_SESSIONS, 200));
    }
    runs.sort();
    (percentile(&runs, 0.5), percentile(&runs, 0.99))
}

async fn report(name: &str, store: Arc<dyn Store>, postgres: Option<&PostgresStore>) {
    let f = Fixture::new(store.clone()).await;
    let rate = insert_throughput(&store, &f).await;
    println!("{name}: batch insert (batches of {BATCH}, concurrent writers): {rate:.0} messages/s");
    if let Some(pg) = postgres {
        let limit = plain_insert_throughput(pg, &f).await;
        println!(
            "{name}: plain multi-row INSERT of the same rows, same pool: {limit:.0} messages/s \
             (insert_messages reaches {:.0}% of it)",
            rate / limit * 100.0
        );
    }
    let (p50, p99) = claim_latency(&store, &Fixture::new(store.clone()).await).await;
    println!(
        "{name}: claim latency, {CLAIMERS} concurrent claimers: p50 {}, p99 {}",
        ms(p50),
        ms(p99)
    );
    let (p50, p99) = page_load(&store, &Fixture::new(store.clone()).await).await;
    println!(
        "{name}: page load ({PAGE_SESSIONS} sessions + latest 200 of {PAGE_MESSAGES} messages): \
         p50 {}, p99 {}",
        ms(p50),
        ms(p99)
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bench.db");
        let sqlite = SqliteStore::connect(path.to_str().expect("utf-8 path"))
            .await
            .expect("SQLite store");
        report("sqlite", Arc::new(sqlite), None).await;

        if let Some(db) = support::TestDatabase::create("stores bench (PostgreSQL)").await {
            let pg = PostgresStore::connect(&db.url)
                .await
                .expect("PostgreSQL store");
            report("postgres", Arc::new(pg.clone()), Some(&pg)).await;
            drop(pg);
            drop(db);
        }
    });
}
