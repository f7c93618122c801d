//! A real crash test: a child process (this test binary, re-executed) enqueues messages in
//! a loop while its flusher delivers them to a file, printing each id once `enqueue`
//! returned; the parent kills it with SIGKILL at a random moment, reopens the outbox, and
//! checks that every acknowledged id is still pending or was delivered — zero lost — and
//! that every session's seqs are contiguous and unique. `KILN_OUTBOX_CRASH_ROUNDS` sets the
//! number of rounds (default 120).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_core::{
    ChatMessage, DeliveryReport, LifecycleClock, MessageId, MessageSink, Role, SessionId,
    SinkError, SystemClock,
};
use kiln_outbox::{Outbox, OutboxConfig, Route};
use rand::Rng;

const CHILD_ENV: &str = "KILN_OUTBOX_CRASH_CHILD";

/// Appends every delivered message as `id session seq` to a file before acknowledging.
#[derive(Debug)]
struct FileSink(PathBuf);

#[async_trait]
impl MessageSink for FileSink {
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
        let mut text = String::new();
        for m in batch {
            text.push_str(&format!(
                "{} {} {}\n",
                m.id,
                m.session_id,
                m.seq.unwrap_or(0)
            ));
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .map_err(|e| SinkError::Unavailable {
                message: e.to_string(),
                retry_after: None,
            })?;
        // One write(2): a killed process leaves whole lines or a torn last line, which
        // the parent ignores (its row is still pending then).
        f.write_all(text.as_bytes())
            .map_err(|e| SinkError::Unavailable {
                message: e.to_string(),
                retry_after: None,
            })?;
        Ok(DeliveryReport {
            persisted: batch.len() as u64,
            duplicates: 0,
        })
    }
}

fn delivered_path(db: &Path) -> PathBuf {
    db.with_extension("delivered")
}

/// The child's body, run only when the parent re-executes this binary with `CHILD_ENV`.
#[test]
fn crash_child_entry_point() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db = PathBuf::from(db);
    let outbox = Outbox::open(&db, OutboxConfig::default()).expect("open after a crash");
    println!("READY");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _flusher = {
        let _guard = runtime.enter();
        outbox.spawn_flusher(
            Arc::new(FileSink(delivered_path(&db))),
            Arc::new(SystemClock),
        )
    };
    let sessions = [SessionId::new(), SessionId::new(), SessionId::new()];
    let stdout = std::io::stdout();
    for i in 0u64.. {
        let session = sessions[(i % 3) as usize];
        let message = ChatMessage {
            id: MessageId::new(),
            session_id: session,
            role: Role::Assistant,
            content: format!("message {i}"),
            tool: None,
            seq: None,
            created_at: SystemClock.now(),
        };
        let receipt = if i % 7 == 0 {
            let second = ChatMessage {
                id: MessageId::new(),
                ..message.clone()
            };
            let r = outbox
                .enqueue_batch_blocking(Route::single(), vec![message, second])
                .unwrap();
            let mut out = stdout.lock();
            writeln!(out, "ENQUEUED {} {} {}", r[0].id, session, r[0].seq).unwrap();
            r[1]
        } else {
            outbox.enqueue_blocking(Route::single(), message).unwrap()
        };
        let mut out = stdout.lock();
        writeln!(out, "ENQUEUED {} {} {}", receipt.id, session, receipt.seq).unwrap();
        out.flush().unwrap();
    }
}

struct Seen {
    session: String,
    seq: i64,
}

fn parse_line(line: &str, prefix: &str) -> Option<(String, Seen)> {
    let rest = line.strip_prefix(prefix)?;
    let mut parts = rest.split(' ');
    let id = parts.next()?.to_owned();
    let session = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    Some((id, Seen { session, seq }))
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_enqueue() {
    let rounds: usize = std::env::var("KILN_OUTBOX_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite");
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut acknowledged: HashMap<String, Seen> = HashMap::new();
    let started = Instant::now();
    let mut rounds_with_progress = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_entry_point",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.ends_with('\n') {
                    if line.trim_end().ends_with("READY") {
                        let _ = ready_tx.send(());
                    }
                    lines.push(line.trim_end().to_owned());
                }
                line.clear();
            }
            lines
        });
        // One round in four kills at a random moment from spawn (startup and recovery of
        // the previous kill included); the others once the outbox is open, so a loaded
        // machine's slow process start does not turn the test into kills before any enqueue.
        if round % 4 != 0 {
            let _ = ready_rx.recv_timeout(Duration::from_secs(60));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..60)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let before = acknowledged.len();
        for line in &lines {
            if let Some((id, seen)) = parse_line(line, "ENQUEUED ") {
                acknowledged.insert(id, seen);
            }
        }
        if acknowledged.len() > before {
            rounds_with_progress += 1;
        }
        check(&db, &acknowledged, round);
    }
    eprintln!(
        "{rounds} SIGKILL rounds, {} acknowledged enqueues, all present, in {:?}",
        acknowledged.len(),
        started.elapsed()
    );
    assert!(
        rounds_with_progress * 2 > rounds,
        "too few rounds got to enqueue ({rounds_with_progress}/{rounds}); the test proves little"
    );
}

/// Reopens the outbox after a kill: every acknowledged id is pending or delivered, and the
/// seqs of each session are 1..n with no gap and no duplicate.
fn check(db: &Path, acknowledged: &HashMap<String, Seen>, round: usize) {
    let outbox = Outbox::open(db, OutboxConfig::default())
        .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL failed: {e}"));
    let mut present: HashMap<String, Seen> = HashMap::new();
    for m in outbox.pending_messages().unwrap() {
        present.insert(
            m.id.to_string(),
            Seen {
                session: m.session_id.to_string(),
                seq: m.seq.unwrap(),
            },
        );
    }
    assert!(
        outbox.dead_letters().unwrap().is_empty(),
        "nothing should be dropped"
    );
    drop(outbox);
    if let Ok(text) = std::fs::read_to_string(delivered_path(db)) {
        for line in text.lines() {
            if let Some((id, seen)) = parse_line(&format!("D {line}"), "D ") {
                present.insert(id, seen);
            }
        }
    }
    for (id, seen) in acknowledged {
        let found = present
            .get(id)
            .unwrap_or_else(|| panic!("round {round}: acknowledged message {id} was lost"));
        assert_eq!(found.seq, seen.seq, "round {round}: seq of {id} changed");
    }
    let mut by_session: HashMap<&str, Vec<i64>> = HashMap::new();
    for seen in present.values() {
        by_session.entry(&seen.session).or_default().push(seen.seq);
    }
    for (session, mut seqs) in by_session {
        seqs.sort_unstable();
        let unique: HashSet<i64> = seqs.iter().copied().collect();
        assert_eq!(
            unique.len(),
            seqs.len(),
            "round {round}: duplicate seq in {session}"
        );
        let n = seqs.len() as i64;
        assert_eq!(
            seqs,
            (1..=n).collect::<Vec<_>>(),
            "round {round}: seq gap in {session}"
        );
    }
}
