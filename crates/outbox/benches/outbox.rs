//! Outbox throughput, printed (never asserted): raw SQLite inserts at the same synchronous
//! setting (1, 8 and 50 rows per commit, the physical limits), Kiln's durable enqueue with 1
//! and 8 producers (threads, and async tasks), and end-to-end delivery to an in-process
//! sink, each with its ratio to the raw figure, on the same disk, for both durability levels.
//!
//! "Raw" is SQLite alone storing the same rows: the outbox's own file, table and indexes
//! and its own `INSERT`, on one connection, with no queue, channel or seq bookkeeping. So
//! each ratio is what Kiln's machinery costs on top of SQLite, not the price of the table.
//!
//! Eight producers that each wait for their message to be durable have at most eight rows
//! queued, so a group commit holds at most eight: raw 8 rows/commit is their ceiling, and
//! the ratio to it is printed beside the target's ratio to raw 50 rows/commit.
//!
//! The raw figures the targets refer to insert one row per statement (SQLite's plain
//! insert rate). The outbox writes the rows of consecutive calls with multi-row
//! `INSERT … VALUES (…), (…)` statements, so raw 8 and 50 rows/commit are printed once
//! more with one multi-row statement per commit, and the 8-producer figure's ratio to those
//! too: how much of the outbox's margin comes from the statement form, and how much is left
//! to its group commit.
//!
//! The raw figures are printed twice: with SQLite's default checkpoints (run inside the
//! commit that crosses 1,000 WAL pages: the baseline the targets refer to) and with the
//! outbox's own strategy (checkpoints on a second thread), so the part of the gain that
//! comes from moving checkpoints off the commit path is visible.
//!
//! Every figure is measured once per round, the rounds interleaved, and the median printed.
//!
//! `cargo bench -p kiln-outbox` (`KILN_BENCH_SECS`: time per figure, `KILN_BENCH_ROUNDS`:
//! rounds, `KILN_BENCH_DIR`: another disk, `KILN_BENCH_PRODUCERS_ONLY`: only the
//! 8-producer figures; `MSG_*` variables apply to the outbox).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_core::{
    ChatMessage, DeliveryReport, LifecycleClock, MessageId, MessageSink, Role, SessionId,
    SinkError, SystemClock,
};
use kiln_outbox::{Durability, Outbox, OutboxConfig, Route};
use rusqlite::Connection;

fn message(session: SessionId) -> ChatMessage {
    ChatMessage {
        id: MessageId::new(),
        session_id: session,
        role: Role::Assistant,
        content: "The quick brown fox jumps over the lazy dog; a typical short agent line.".into(),
        tool: None,
        seq: None,
        created_at: SystemClock.now(),
    }
}

/// How the raw figure checkpoints the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checkpoints {
    /// SQLite's default: inside the commit that crosses 1,000 WAL pages.
    InCommit,
    /// As the outbox does: a second connection on its own thread, `PASSIVE`, every 50 ms
    /// while commits happen.
    Background,
}

/// How the raw figure writes the rows of one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Statements {
    /// One `INSERT` per row, the statement prepared once: SQLite's plain insert rate.
    PerRow,
    /// One multi-row `INSERT … VALUES (…), (…)` per commit, as the outbox writes the rows
    /// of consecutive calls.
    MultiRow,
}

/// Raw SQLite: the outbox's own file and table (created by [`Outbox::open`], then closed),
/// the outbox's own columns and conflict clause, WAL, `synchronous` as given,
/// `rows_per_commit` rows per transaction, one connection, no queue, no channel: what
/// storing these rows costs SQLite itself.
fn raw_insert_rate(
    dir: &std::path::Path,
    sync: i64,
    rows_per_commit: usize,
    (checkpoints, statements): (Checkpoints, Statements),
    secs: f64,
) -> f64 {
    let path = dir.join(format!(
        "raw-{sync}-{rows_per_commit}-{checkpoints:?}-{statements:?}.sqlite"
    ));
    let durability = if sync == 1 {
        Durability::Process
    } else {
        Durability::PowerLoss
    };
    drop(Outbox::open(&path, config(durability)).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", sync).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpointer = (checkpoints == Checkpoints::Background).then(|| {
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)
            .unwrap();
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let cp = Connection::open(&path).unwrap();
            cp.pragma_update(None, "synchronous", sync).unwrap();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let _: i64 = cp
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(0))
                    .unwrap();
            }
        })
    });
    let per_statement = match statements {
        Statements::PerRow => 1,
        Statements::MultiRow => rows_per_commit,
    };
    let sql = format!(
        "INSERT INTO message_outbox \
         (id, workspace, project, session_id, seq, role, content, tool, created_at) \
         VALUES {} ON CONFLICT (id) DO NOTHING",
        vec!["(?, 'w', NULL, ?, ?, 'assistant', ?, NULL, ?)"; per_statement].join(", ")
    );
    let session_id = SessionId::new();
    let session = session_id.to_string();
    let start = Instant::now();
    let mut rows = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut stmt = tx.prepare_cached(&sql).unwrap();
            for _ in 0..rows_per_commit / per_statement {
                for i in 0..per_statement {
                    rows += 1;
                    // Each row comes from a message and is encoded here, as the outbox
                    // encodes on the producer's thread.
                    let m = message(session_id);
                    let at = i * 5;
                    stmt.raw_bind_parameter(at + 1, m.id.to_string()).unwrap();
                    stmt.raw_bind_parameter(at + 2, &session).unwrap();
                    stmt.raw_bind_parameter(at + 3, rows as i64).unwrap();
                    stmt.raw_bind_parameter(at + 4, m.content).unwrap();
                    stmt.raw_bind_parameter(at + 5, m.created_at.to_rfc3339())
                        .unwrap();
                }
                assert_eq!(stmt.raw_execute().unwrap(), per_statement);
            }
        }
        tx.commit().unwrap();
    }
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = checkpointer {
        t.join().unwrap();
    }
    rate
}

fn config(durability: Durability) -> OutboxConfig {
    OutboxConfig {
        durability,
        max_size: 10_000_000,
        ..OutboxConfig::from_env().expect("MSG_* settings")
    }
}

/// `producers` threads, each calling `enqueue_blocking` (one message, durable on return)
/// in a loop, each on its own session; also the messages per group commit.
fn enqueue_rate(
    dir: &std::path::Path,
    durability: Durability,
    producers: usize,
    secs: f64,
) -> (f64, f64) {
    let path = dir.join(format!("kiln-{durability:?}-{producers}.sqlite"));
    let outbox = Outbox::open(&path, config(durability)).unwrap();
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|_| {
            let outbox = outbox.clone();
            let total = total.clone();
            std::thread::spawn(move || {
                let session = SessionId::new();
                while start.elapsed().as_secs_f64() < secs {
                    outbox
                        .enqueue_blocking(Route::single(), message(session))
                        .unwrap();
                    total.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = total.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    (
        n as f64 / elapsed,
        n as f64 / outbox.commit_count().max(1) as f64,
    )
}

/// One producer awaiting `enqueue` (the async API, which hands each commit to the writer
/// thread) on a current-thread runtime.
fn async_enqueue_rate(dir: &std::path::Path, durability: Durability, secs: f64) -> f64 {
    let path = dir.join(format!("kiln-async-{durability:?}.sqlite"));
    let outbox = Outbox::open(&path, config(durability)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let session = SessionId::new();
        let start = Instant::now();
        let mut total = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            outbox
                .enqueue(Route::single(), message(session))
                .await
                .unwrap();
            total += 1;
        }
        total as f64 / start.elapsed().as_secs_f64()
    })
}

/// `producers` async tasks, each awaiting `enqueue` (one message, durable on return) in a
/// loop, each on its own session, on a one-worker runtime (as an agent host's producers).
fn async_tasks_rate(
    dir: &std::path::Path,
    durability: Durability,
    producers: usize,
    secs: f64,
) -> f64 {
    let path = dir.join(format!("kiln-tasks-{durability:?}-{producers}.sqlite"));
    let outbox = Outbox::open(&path, config(durability)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..producers)
            .map(|_| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    let session = SessionId::new();
                    let mut n = 0u64;
                    while start.elapsed().as_secs_f64() < secs {
                        outbox
                            .enqueue(Route::single(), message(session))
                            .await
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total as f64 / start.elapsed().as_secs_f64()
    })
}

#[derive(Debug, Default)]
struct CountingSink(AtomicU64);

#[async_trait]
impl MessageSink for CountingSink {
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(DeliveryReport {
            persisted: batch.len() as u64,
            duplicates: 0,
        })
    }
}

/// 8 producers enqueue `total` messages while the flusher delivers to an in-process sink;
/// the rate is messages acknowledged by the sink (and deleted) per second, from the first
/// enqueue to the last delete.
fn end_to_end_rate(dir: &std::path::Path, durability: Durability, total: usize) -> f64 {
    let path = dir.join(format!("e2e-{durability:?}.sqlite"));
    let outbox = Outbox::open(&path, config(durability)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = Arc::new(CountingSink::default());
    let flusher = {
        let _guard = runtime.enter();
        outbox.spawn_flusher(sink.clone(), Arc::new(SystemClock))
    };
    let start = Instant::now();
    let producers = 8;
    let threads: Vec<_> = (0..producers)
        .map(|_| {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                let session = SessionId::new();
                for _ in 0..total / producers {
                    outbox
                        .enqueue_blocking(Route::single(), message(session))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    while outbox.pending_count() > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let delivered = sink.0.load(Ordering::Relaxed);
    runtime.block_on(flusher.shutdown(SystemClock.now()));
    delivered as f64 / elapsed
}

/// A backlog of `total` messages (written with `enqueue_batch`, 50 per call) drained by the
/// flusher: its own ceiling (read, deliver, compare-and-set delete), without producers.
fn drain_rate(dir: &std::path::Path, durability: Durability, total: usize) -> f64 {
    let path = dir.join(format!("drain-{durability:?}.sqlite"));
    let outbox = Outbox::open(&path, config(durability)).unwrap();
    let session = SessionId::new();
    for _ in 0..total / 50 {
        let batch = (0..50).map(|_| message(session)).collect();
        outbox
            .enqueue_batch_blocking(Route::single(), batch)
            .unwrap();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = Arc::new(CountingSink::default());
    let start = Instant::now();
    let flusher = {
        let _guard = runtime.enter();
        outbox.spawn_flusher(sink.clone(), Arc::new(SystemClock))
    };
    while outbox.pending_count() > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed().as_secs_f64();
    runtime.block_on(flusher.shutdown(SystemClock.now()));
    sink.0.load(Ordering::Relaxed) as f64 / elapsed
}

/// One round of every figure for one durability level.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    raw1: f64,
    raw8: f64,
    raw50: f64,
    raw8_multi: f64,
    raw50_multi: f64,
    raw1_bg: f64,
    raw50_bg: f64,
    one: f64,
    one_async: f64,
    eight: f64,
    per_commit: f64,
    tasks: f64,
    e2e: f64,
    drain: f64,
}

fn round(dir: &std::path::Path, durability: Durability, secs: f64, n: usize) -> Round {
    let sync = durability.synchronous();
    let sub = dir.join(format!("round-{n}-{sync}"));
    std::fs::create_dir_all(&sub).unwrap();
    let dir = sub.as_path();
    let raw = |rows, how| raw_insert_rate(dir, sync, rows, how, secs);
    let (eight, per_commit) = enqueue_rate(dir, durability, 8, secs);
    let total = if sync == 1 { 100_000 } else { 20_000 };
    let r = Round {
        raw1: raw(1, (Checkpoints::InCommit, Statements::PerRow)),
        raw8: raw(8, (Checkpoints::InCommit, Statements::PerRow)),
        raw50: raw(50, (Checkpoints::InCommit, Statements::PerRow)),
        raw8_multi: raw(8, (Checkpoints::InCommit, Statements::MultiRow)),
        raw50_multi: raw(50, (Checkpoints::InCommit, Statements::MultiRow)),
        raw1_bg: raw(1, (Checkpoints::Background, Statements::PerRow)),
        raw50_bg: raw(50, (Checkpoints::Background, Statements::PerRow)),
        one: enqueue_rate(dir, durability, 1, secs).0,
        one_async: async_enqueue_rate(dir, durability, secs),
        eight,
        per_commit,
        tasks: async_tasks_rate(dir, durability, 8, secs),
        e2e: end_to_end_rate(dir, durability, total),
        drain: drain_rate(dir, durability, total),
    };
    std::fs::remove_dir_all(dir).unwrap();
    r
}

/// The median of each figure over the rounds.
fn median(rounds: &[Round]) -> Round {
    let m = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Round {
        raw1: m(|r| r.raw1),
        raw8: m(|r| r.raw8),
        raw50: m(|r| r.raw50),
        raw8_multi: m(|r| r.raw8_multi),
        raw50_multi: m(|r| r.raw50_multi),
        raw1_bg: m(|r| r.raw1_bg),
        raw50_bg: m(|r| r.raw50_bg),
        one: m(|r| r.one),
        one_async: m(|r| r.one_async),
        eight: m(|r| r.eight),
        per_commit: m(|r| r.per_commit),
        tasks: m(|r| r.tasks),
        e2e: m(|r| r.e2e),
        drain: m(|r| r.drain),
    }
}

fn print(r: &Round) {
    let pct = |a: f64, b: f64| 100.0 * a / b;
    println!(
        "raw SQLite, 1 row/commit      {:>12.0} rows/s  (SQLite's default in-commit checkpoints)",
        r.raw1
    );
    println!(
        "raw SQLite, 8 rows/commit     {:>12.0} rows/s  (the most 8 one-message producers can share)",
        r.raw8
    );
    println!("raw SQLite, 50 rows/commit    {:>12.0} rows/s", r.raw50);
    println!(
        "raw SQLite, 8 rows/commit     {:>12.0} rows/s  (one multi-row INSERT per commit)",
        r.raw8_multi
    );
    println!(
        "raw SQLite, 50 rows/commit    {:>12.0} rows/s  (one multi-row INSERT per commit)",
        r.raw50_multi
    );
    println!(
        "raw SQLite, 1 row/commit      {:>12.0} rows/s  (checkpoints on a thread, as the outbox)",
        r.raw1_bg
    );
    println!(
        "raw SQLite, 50 rows/commit    {:>12.0} rows/s  (checkpoints on a thread, as the outbox)",
        r.raw50_bg
    );
    println!(
        "kiln enqueue, 1 producer      {:>12.0} msg/s  = {:>5.1}% of raw 1/commit  (target >= 80%), {:>5.1}% of raw 1/commit with thread checkpoints",
        r.one,
        pct(r.one, r.raw1),
        pct(r.one, r.raw1_bg)
    );
    println!(
        "kiln enqueue (async), 1 prod. {:>12.0} msg/s  = {:>5.1}% of raw 1/commit, {:>5.1}% with thread checkpoints",
        r.one_async,
        pct(r.one_async, r.raw1),
        pct(r.one_async, r.raw1_bg)
    );
    println!(
        "kiln enqueue, 8 producers     {:>12.0} msg/s  = {:>5.1}% of raw 50/commit (target >= 50%), {:>5.1}% with thread checkpoints, {:>5.1}% of raw 8/commit; {:.1} messages per commit",
        r.eight,
        pct(r.eight, r.raw50),
        pct(r.eight, r.raw50_bg),
        pct(r.eight, r.raw8),
        r.per_commit
    );
    println!(
        "                                                  {:>5.1}% of raw 50/commit in multi-row INSERTs, {:>5.1}% of raw 8/commit in one multi-row INSERT",
        pct(r.eight, r.raw50_multi),
        pct(r.eight, r.raw8_multi)
    );
    println!(
        "kiln enqueue, 8 async tasks   {:>12.0} msg/s  = {:>5.1}% of raw 50/commit, {:>5.1}% of raw 8/commit",
        r.tasks,
        pct(r.tasks, r.raw50),
        pct(r.tasks, r.raw8)
    );
    println!(
        "end-to-end, 8 producers       {:>12.0} msg/s  = {:>5.1}% of raw 50/commit (target >= 20,000 msg/s)",
        r.e2e,
        pct(r.e2e, r.raw50)
    );
    println!(
        "flusher drain of a backlog    {:>12.0} msg/s  = {:>5.1}% of raw 50/commit",
        r.drain,
        pct(r.drain, r.raw50)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is ignored.
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
    let secs = env("KILN_BENCH_SECS").unwrap_or(1.0);
    // Every figure is measured once per round, rounds interleaved, and the median printed:
    // a disk or a neighbour that changes speed for a while then moves no single ratio.
    let rounds = env("KILN_BENCH_ROUNDS").map_or(3, |r| (r as usize).max(1));
    // Only the 8-producer figures (for tuning the group commit).
    let producers_only = std::env::var_os("KILN_BENCH_PRODUCERS_ONLY").is_some();
    let base = std::env::var_os("KILN_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    println!(
        "kiln-outbox benchmark: {secs} s per figure, median of {rounds} rounds, files in {}",
        dir.path().display()
    );
    for durability in [Durability::Process, Durability::PowerLoss] {
        let sync = durability.synchronous();
        let name = if sync == 1 { "NORMAL" } else { "FULL" };
        println!("\n== synchronous={name} ({durability:?}) ==");
        if producers_only {
            let (eight, per_commit) = enqueue_rate(dir.path(), durability, 8, secs);
            let tasks = async_tasks_rate(dir.path(), durability, 8, secs);
            println!(
                "kiln enqueue, 8 producers     {eight:>12.0} msg/s  ({per_commit:.1} per commit)"
            );
            println!("kiln enqueue, 8 async tasks   {tasks:>12.0} msg/s");
            continue;
        }
        let all: Vec<Round> = (0..rounds)
            .map(|n| {
                eprint!("round {}/{rounds}\r", n + 1);
                round(dir.path(), durability, secs, n)
            })
            .collect();
        print(&median(&all));
    }
}
