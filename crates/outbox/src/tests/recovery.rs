//! Startup recovery: unreadable rows never block the rest, and a route's persisted backoff
//! survives a restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_core::{
    ChatMessage, DeliveryReport, LifecycleClock, ManualClock, MessageSink, Role, SessionId,
    SinkError,
};

use super::message;
use crate::flusher::{Flusher, Step};
use crate::{Outbox, OutboxConfig, Route, SingleSink};

#[derive(Debug, Default)]
struct Recorder {
    down: Mutex<bool>,
    got: Mutex<Vec<ChatMessage>>,
}

#[async_trait]
impl MessageSink for Recorder {
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
        if *self.down.lock().unwrap() {
            return Err(SinkError::Unavailable {
                message: "down".into(),
                retry_after: Some(Duration::from_secs(120)),
            });
        }
        self.got.lock().unwrap().extend_from_slice(batch);
        Ok(DeliveryReport {
            persisted: batch.len() as u64,
            duplicates: 0,
        })
    }
}

fn open(path: &std::path::Path, clock: &ManualClock) -> Outbox {
    Outbox::open_with_clock(path, OutboxConfig::default(), Arc::new(clock.clone())).unwrap()
}

async fn drain(flusher: &mut Flusher) {
    for _ in 0..100 {
        if let Step::Idle { .. } = flusher.step().await.unwrap() {
            return;
        }
    }
    panic!("the flusher never went idle");
}

#[tokio::test]
async fn an_unreadable_row_is_moved_aside_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let clock = ManualClock::starting_at_epoch();
    let session = SessionId::new();
    {
        let outbox = open(&path, &clock);
        for i in 0..5 {
            outbox
                .enqueue(Route::single(), message(session, &format!("m{i}")))
                .await
                .unwrap();
        }
    }
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute(
            "UPDATE message_outbox SET content = X'FFFE00' WHERE seq = 2",
            [],
        )
        .unwrap();
        raw.execute("UPDATE message_outbox SET role = 'robot' WHERE seq = 4", [])
            .unwrap();
    }
    let outbox = open(&path, &clock);
    let sink = Arc::new(Recorder::default());
    let mut flusher = Flusher::for_test(
        &outbox,
        Arc::new(SingleSink(sink.clone())),
        Arc::new(clock.clone()),
        1,
    );
    drain(&mut flusher).await;
    let got = sink.got.lock().unwrap();
    let seqs: Vec<i64> = got.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(seqs, [1, 3, 5, 6], "the readable rows and one notice");
    assert_eq!(got[3].role, Role::System);
    assert!(
        got[3].content.starts_with("2 messages were dropped"),
        "{}",
        got[3].content
    );
    let dead = outbox.dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d.reason == "corrupt"));
    assert_eq!(outbox.pending_count(), 0);
}

#[tokio::test]
async fn a_route_in_backoff_stays_in_backoff_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let clock = ManualClock::starting_at_epoch();
    let sink = Arc::new(Recorder::default());
    *sink.down.lock().unwrap() = true;
    {
        let outbox = open(&path, &clock);
        outbox
            .enqueue(Route::single(), message(SessionId::new(), "m"))
            .await
            .unwrap();
        let mut flusher = Flusher::for_test(
            &outbox,
            Arc::new(SingleSink(sink.clone())),
            Arc::new(clock.clone()),
            1,
        );
        assert_eq!(flusher.step().await.unwrap(), Step::Worked);
    }
    // Restart: the receiver is back, but asked for 120 s; the new process honours that.
    *sink.down.lock().unwrap() = false;
    clock.advance(Duration::from_secs(60));
    let outbox = open(&path, &clock);
    let mut flusher = Flusher::for_test(
        &outbox,
        Arc::new(SingleSink(sink.clone())),
        Arc::new(clock.clone()),
        2,
    );
    match flusher.step().await.unwrap() {
        Step::Idle { next_due: Some(at) } => {
            assert_eq!((at - clock.now()).num_seconds(), 60);
        }
        other => panic!("expected to wait for the persisted retry time, got {other:?}"),
    }
    assert!(sink.got.lock().unwrap().is_empty());
    clock.advance(Duration::from_secs(61));
    drain(&mut flusher).await;
    assert_eq!(sink.got.lock().unwrap().len(), 1);
    assert_eq!(outbox.pending_count(), 0);
}

#[tokio::test]
async fn seqs_continue_after_delivery_and_restarts() {
    // The writer persists a session's next seq only when rows leave the outbox; an
    // insert-only commit relies on the row itself (reopen derives MAX(seq) + 1). Both paths,
    // and their mix, must continue the sequence after a restart.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let clock = ManualClock::starting_at_epoch();
    let (a, b) = (SessionId::new(), SessionId::new());
    let sink = Arc::new(Recorder::default());
    let seq = |r: crate::Receipt| r.seq;
    {
        let outbox = open(&path, &clock);
        for _ in 0..3 {
            outbox
                .enqueue(Route::single(), message(a, "a"))
                .await
                .unwrap();
        }
        outbox
            .enqueue(Route::single(), message(b, "b"))
            .await
            .unwrap();
        let mut flusher = Flusher::for_test(
            &outbox,
            Arc::new(SingleSink(sink.clone())),
            Arc::new(clock.clone()),
            1,
        );
        drain(&mut flusher).await;
        assert_eq!(outbox.pending_count(), 0, "everything delivered");
        // Insert-only after the delivery: b's newest seq now lives only in its row.
        let r = outbox
            .enqueue(Route::single(), message(b, "b2"))
            .await
            .unwrap();
        assert_eq!(seq(r), 2);
    }
    {
        let outbox = open(&path, &clock);
        let r = outbox
            .enqueue(Route::single(), message(a, "a4"))
            .await
            .unwrap();
        assert_eq!(
            seq(r),
            4,
            "a continues although all its rows were delivered"
        );
        let r = outbox
            .enqueue(Route::single(), message(b, "b3"))
            .await
            .unwrap();
        assert_eq!(seq(r), 3, "b continues from its pending row");
        let mut flusher = Flusher::for_test(
            &outbox,
            Arc::new(SingleSink(sink.clone())),
            Arc::new(clock.clone()),
            2,
        );
        drain(&mut flusher).await;
        assert_eq!(outbox.pending_count(), 0);
    }
    let outbox = open(&path, &clock);
    let r = outbox
        .enqueue(Route::single(), message(a, "a5"))
        .await
        .unwrap();
    assert_eq!(seq(r), 5);
    let r = outbox
        .enqueue(Route::single(), message(b, "b4"))
        .await
        .unwrap();
    assert_eq!(seq(r), 4);
    let got = sink.got.lock().unwrap();
    let of = |s: SessionId| -> Vec<i64> {
        got.iter()
            .filter(|m| m.session_id == s)
            .map(|m| m.seq.unwrap())
            .collect()
    };
    assert_eq!(of(a), [1, 2, 3, 4]);
    assert_eq!(of(b), [1, 2, 3]);
}

#[test]
fn the_wal_is_checkpointed_off_the_commit_path() {
    // The writer's own auto-checkpoint is set far above what this test writes, so only the
    // checkpoint thread can move these pages into the database file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let outbox = Outbox::open(&path, OutboxConfig::default()).unwrap();
    let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let before = size();
    let session = SessionId::new();
    for i in 0..200 {
        outbox
            .enqueue_blocking(Route::single(), message(session, &format!("m{i}")))
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while size() < before + 32 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within 60 s: database file {} bytes (was {before})",
            size()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(outbox.pending_count(), 200);
}

/// Writes `garbage` over the file at `offset`.
fn scribble(path: &std::path::Path, offset: u64, garbage: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(garbage).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test]
async fn a_corrupt_file_is_moved_aside_and_a_fresh_outbox_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let clock = ManualClock::starting_at_epoch();
    let session = SessionId::new();
    // Two kinds of damage: a destroyed header (not a database any more) and a destroyed
    // b-tree page (the header is fine; only the check finds it).
    for (round, (offset, len)) in [(0u64, 100usize), (4096, 4096)].into_iter().enumerate() {
        {
            let outbox = open(&path, &clock);
            assert_eq!(outbox.corrupt_file_set_aside(), None, "round {round}");
            for i in 0..20 {
                outbox
                    .enqueue(Route::single(), message(session, &format!("m{i}")))
                    .await
                    .unwrap();
            }
        } // closed: the WAL is checkpointed into the file and removed
        scribble(&path, offset, &vec![0xA5; len]);
        let damaged = std::fs::read(&path).unwrap();
        let outbox = open(&path, &clock);
        let aside = outbox
            .corrupt_file_set_aside()
            .unwrap_or_else(|| panic!("round {round}: corruption not detected"))
            .to_path_buf();
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            damaged,
            "round {round}: the corrupt file is kept as it was"
        );
        assert_eq!(outbox.pending_count(), 0, "round {round}: a fresh outbox");
        let r = outbox
            .enqueue(Route::single(), message(session, "after"))
            .await
            .unwrap();
        assert_eq!(r.seq, 1, "round {round}: the fresh outbox numbers from 1");
        drop(outbox);
        std::fs::remove_file(&path).unwrap();
    }
    let kept = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .count();
    assert!(kept >= 2, "both corrupt files are kept, found {kept}");
}

#[test]
fn the_quick_check_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    drop(Outbox::open(&path, OutboxConfig::default()).unwrap());
    scribble(&path, 0, &[0xA5; 100]);
    let config = OutboxConfig {
        quick_check_on_open: false,
        ..OutboxConfig::default()
    };
    let err = Outbox::open(&path, config).unwrap_err();
    assert!(err.to_string().contains("not a database"), "{err}");
    assert!(path.exists(), "nothing moved");
}
