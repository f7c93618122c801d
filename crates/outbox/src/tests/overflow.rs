//! The size bound against rows in flight, and the `Reject` overflow policy.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kiln_core::{ChatMessage, DeliveryReport, ManualClock, MessageSink, SessionId, SinkError};
use tokio::sync::oneshot;

use super::message;
use crate::flusher::{Flusher, Step};
use crate::{Outbox, OutboxConfig, Route, SingleSink};

/// Holds its first delivery until released (so rows stay in flight), then records all.
#[derive(Debug)]
struct GateSink {
    entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    release: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
    got: Mutex<Vec<ChatMessage>>,
}

#[async_trait]
impl MessageSink for GateSink {
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
        let entered = self.entered.lock().unwrap().take();
        if let Some(entered) = entered {
            entered.send(()).unwrap();
            if let Some(release) = self.release.lock().await.take() {
                release.await.unwrap();
            }
        }
        self.got.lock().unwrap().extend_from_slice(batch);
        Ok(DeliveryReport {
            persisted: batch.len() as u64,
            duplicates: 0,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_never_drops_a_row_that_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_size: 5,
        batch_max_size: 3,
        ..OutboxConfig::default()
    };
    let clock = ManualClock::starting_at_epoch();
    let outbox =
        Outbox::open_with_clock(dir.path().join("o.sqlite"), config, Arc::new(clock.clone()))
            .unwrap();
    let session = SessionId::new();
    let mut first = Vec::new();
    for i in 0..3 {
        let m = message(session, &format!("first {i}"));
        first.push(m.id);
        outbox.enqueue(Route::single(), m).await.unwrap();
    }
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let sink = Arc::new(GateSink {
        entered: Mutex::new(Some(entered_tx)),
        release: tokio::sync::Mutex::new(Some(release_rx)),
        got: Mutex::new(Vec::new()),
    });
    // While the first three are at the receiver, five more arrive: 8 rows against a bound
    // of 5. The oldest rows are the ones in flight; they must not be the ones dropped.
    let producer = {
        let outbox = outbox.clone();
        std::thread::spawn(move || {
            entered_rx.recv().unwrap();
            for i in 0..5 {
                outbox
                    .enqueue_blocking(Route::single(), message(session, &format!("later {i}")))
                    .unwrap();
            }
            release_tx.send(()).unwrap();
        })
    };
    let mut flusher = Flusher::for_test(
        &outbox,
        Arc::new(SingleSink(sink.clone())),
        Arc::new(clock.clone()),
        1,
    );
    assert_eq!(flusher.step().await.unwrap(), Step::Worked);
    producer.join().unwrap();
    for _ in 0..20 {
        if let Step::Idle { .. } = flusher.step().await.unwrap() {
            break;
        }
    }
    let got = sink.got.lock().unwrap().clone();
    let delivered: HashSet<String> = got.iter().map(|m| m.id.to_string()).collect();
    for id in &first {
        assert!(
            delivered.contains(&id.to_string()),
            "in-flight row {id} not delivered"
        );
    }
    let dead = outbox.dead_letters().unwrap();
    assert!(
        !dead.is_empty(),
        "the bound was exceeded, something must have been dropped"
    );
    for d in &dead {
        assert!(
            !delivered.contains(&d.id),
            "message {} was both delivered and dropped",
            d.id
        );
    }
    let c = &outbox.inner.counters;
    let dropped = c.dropped_overflow.load(Ordering::Relaxed);
    let notices = c.notices.load(Ordering::Relaxed);
    assert_eq!(dropped, dead.len() as u64);
    assert_eq!(
        c.delivered.load(Ordering::Relaxed),
        got.len() as u64,
        "every delivered row counted once"
    );
    assert_eq!(
        8 + notices,
        got.len() as u64 + dropped + outbox.pending_count(),
        "enqueued + notices = delivered + dropped + pending"
    );
    let announced: i64 = got
        .iter()
        .filter(|m| m.role == kiln_core::Role::System)
        .map(|m| super::group_commit::notice_count(&m.content) as i64)
        .sum();
    let dropped_messages = dead.iter().filter(|d| d.kind == "message").count() as i64;
    assert_eq!(
        announced, dropped_messages,
        "the notices announce exactly the dropped messages"
    );
}

#[tokio::test]
async fn reject_refuses_enqueues_when_full_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_size: 3,
        overflow: crate::Overflow::Reject,
        ..OutboxConfig::default()
    };
    let clock = ManualClock::starting_at_epoch();
    let outbox =
        Outbox::open_with_clock(dir.path().join("o.sqlite"), config, Arc::new(clock.clone()))
            .unwrap();
    let session = SessionId::new();
    outbox
        .enqueue(Route::single(), message(session, "1"))
        .await
        .unwrap();
    // A batch that does not fit is refused whole.
    let err = outbox
        .enqueue_batch(
            Route::single(),
            vec![
                message(session, "2"),
                message(session, "3"),
                message(session, "4"),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, crate::OutboxError::Full { max: 3 }), "{err}");
    assert!(err.is_retryable());
    assert_eq!(
        outbox.pending_count(),
        1,
        "nothing of the refused batch stored"
    );
    for i in 2..=3 {
        outbox
            .enqueue(Route::single(), message(session, &i.to_string()))
            .await
            .unwrap();
    }
    let err = outbox
        .enqueue(Route::single(), message(session, "4"))
        .await
        .unwrap_err();
    assert!(matches!(err, crate::OutboxError::Full { .. }), "{err}");
    assert_eq!(outbox.pending_count(), 3);
    assert!(outbox.dead_letters().unwrap().is_empty(), "nothing dropped");
    // Once delivered there is room again, and the seqs have no gap from the refusals.
    let sink = Arc::new(GateSink {
        entered: Mutex::new(None),
        release: tokio::sync::Mutex::new(None),
        got: Mutex::new(Vec::new()),
    });
    let mut flusher = Flusher::for_test(
        &outbox,
        Arc::new(SingleSink(sink.clone())),
        Arc::new(clock.clone()),
        1,
    );
    while flusher.step().await.unwrap() == Step::Worked {}
    let r = outbox
        .enqueue(Route::single(), message(session, "4"))
        .await
        .unwrap();
    assert_eq!(r.seq, 4);
    let got = sink.got.lock().unwrap();
    assert_eq!(
        got.iter().map(|m| m.seq.unwrap()).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let c = &outbox.inner.counters;
    assert_eq!(c.dropped_overflow.load(Ordering::Relaxed), 0);
    assert_eq!(c.notices.load(Ordering::Relaxed), 0);
}
