//! Outbox throughput, printed (never asserted): raw SQLite inserts at the same synchronous
//! setting (1 and 50 rows per commit, the physical limits), Kiln's durable enqueue with 1 and
//! 8 producers, and end-to-end delivery to an in-process sink, each with its ratio to the
//! raw figure, on the same disk, for both durability levels.
//!
//! The raw figures are printed twice: with SQLite's default checkpoints (run inside the
//! commit that crosses 1,000 WAL pages: the baseline the targets refer to) and with the
//! outbox's own strategy (checkpoints on a second thread), so the part of the gain that
//! comes from moving checkpoints off the commit path is visible.
//!
//! `cargo bench -p kiln-outbox` (set `KILN_BENCH_SECS` to change the time per figure,
//! `KILN_BENCH_DIR` to measure another disk; `MSG_*` variables apply to the outbox).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_core::{
    ChatMessage, DeliveryReport, LifecycleClock, MessageId, MessageSink, Role, SessionId,
    SinkError, SystemClock,
};
use kiln_outbox::{Durability, Outbox, OutboxConfig, Route};
use rusqlite::{Connection, params};

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

/// Raw SQLite: the same columns and unique id index as the outbox, WAL, `synchronous` as
/// given, `rows_per_commit` rows per transaction, one connection, no channel.
fn raw_insert_rate(
    dir: &std::path::Path,
    sync: i64,
    rows_per_commit: usize,
    checkpoints: Checkpoints,
    secs: f64,
) -> f64 {
    let path = dir.join(format!(
        "raw-{sync}-{rows_per_commit}-{checkpoints:?}.sqlite"
    ));
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
    conn.execute_batch(
        "CREATE TABLE t (pos INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, \
         workspace TEXT NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL, role TEXT NOT NULL, \
         content TEXT NOT NULL, created_at TEXT NOT NULL)",
    )
    .unwrap();
    let session = SessionId::new().to_string();
    let start = Instant::now();
    let mut rows = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO t (id, workspace, session_id, seq, role, content, created_at) \
                     VALUES (?1, 'w', ?2, ?3, 'assistant', ?4, ?5)",
                )
                .unwrap();
            for _ in 0..rows_per_commit {
                rows += 1;
                let m = message(SessionId::new());
                stmt.execute(params![
                    m.id.to_string(),
                    session,
                    rows as i64,
                    m.content,
                    m.created_at.to_rfc3339()
                ])
                .unwrap();
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
/// in a loop, each on its own session.
fn enqueue_rate(dir: &std::path::Path, durability: Durability, producers: usize, secs: f64) -> f64 {
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
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
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

fn main() {
    // `cargo bench` passes `--bench`; any other argument is ignored.
    let secs: f64 = std::env::var("KILN_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.5);
    let base = std::env::var_os("KILN_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    println!(
        "kiln-outbox benchmark: {secs} s per figure, files in {}",
        dir.path().display()
    );
    for durability in [Durability::Process, Durability::PowerLoss] {
        let sync = durability.synchronous();
        let name = if sync == 1 { "NORMAL" } else { "FULL" };
        println!("\n== synchronous={name} ({durability:?}) ==");
        let raw1 = raw_insert_rate(dir.path(), sync, 1, Checkpoints::InCommit, secs);
        let raw50 = raw_insert_rate(dir.path(), sync, 50, Checkpoints::InCommit, secs);
        let raw1_bg = raw_insert_rate(dir.path(), sync, 1, Checkpoints::Background, secs);
        let raw50_bg = raw_insert_rate(dir.path(), sync, 50, Checkpoints::Background, secs);
        println!(
            "raw SQLite, 1 row/commit      {raw1:>12.0} rows/s  (SQLite's default in-commit checkpoints)"
        );
        println!("raw SQLite, 50 rows/commit    {raw50:>12.0} rows/s");
        println!(
            "raw SQLite, 1 row/commit      {raw1_bg:>12.0} rows/s  (checkpoints on a thread, as the outbox)"
        );
        println!(
            "raw SQLite, 50 rows/commit    {raw50_bg:>12.0} rows/s  (checkpoints on a thread, as the outbox)"
        );
        let one = enqueue_rate(dir.path(), durability, 1, secs);
        let one_async = async_enqueue_rate(dir.path(), durability, secs);
        let eight = enqueue_rate(dir.path(), durability, 8, secs);
        println!(
            "kiln enqueue, 1 producer      {one:>12.0} msg/s  = {:>5.1}% of raw 1/commit  (target >= 80%), {:>5.1}% of raw 1/commit with thread checkpoints",
            100.0 * one / raw1,
            100.0 * one / raw1_bg
        );
        println!(
            "kiln enqueue (async), 1 prod. {one_async:>12.0} msg/s  = {:>5.1}% of raw 1/commit, {:>5.1}% with thread checkpoints",
            100.0 * one_async / raw1,
            100.0 * one_async / raw1_bg
        );
        println!(
            "kiln enqueue, 8 producers     {eight:>12.0} msg/s  = {:>5.1}% of raw 50/commit (target >= 50%), {:>5.1}% with thread checkpoints",
            100.0 * eight / raw50,
            100.0 * eight / raw50_bg
        );
        let total = if sync == 1 { 100_000 } else { 20_000 };
        let e2e = end_to_end_rate(dir.path(), durability, total);
        println!(
            "end-to-end, 8 producers       {e2e:>12.0} msg/s  = {:>5.1}% of raw 50/commit (target >= 20,000 msg/s)",
            100.0 * e2e / raw50
        );
        let drain = drain_rate(dir.path(), durability, total);
        println!(
            "flusher drain of a backlog    {drain:>12.0} msg/s  = {:>5.1}% of raw 50/commit (target >= 20,000 msg/s)",
            100.0 * drain / raw50
        );
    }
}
