//! Crash points inside a delivery: before the send, after the receiver stored the batch but
//! its answer was lost, and after the acknowledgement but before the local delete. Each
//! "crash" stops the flusher dead and drops the outbox (only the file survives, as after a
//! kill); a new outbox on the same file then delivers again. Delivery is at-least-once: no
//! message is lost, a resent batch is recognised by the receiver by id, and the receiver
//! ends up with every message exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_core::{
    ChatMessage, DeliveryReport, ManualClock, MessageId, MessageSink, SessionId, SinkError,
};

use super::message;
use crate::flusher::{CrashPoint, Flusher, Step};
use crate::{Outbox, OutboxConfig, Route, SingleSink};

/// A receiver that deduplicates by id, as the control plane does.
#[derive(Debug, Default)]
struct IdempotentReceiver {
    stored: Mutex<HashMap<MessageId, ChatMessage>>,
    duplicates: AtomicU64,
    /// Store the next batch, then lose the answer (as a connection reset after commit).
    lose_next_answer: AtomicBool,
}

#[async_trait]
impl MessageSink for IdempotentReceiver {
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
        let mut report = DeliveryReport {
            persisted: 0,
            duplicates: 0,
        };
        {
            let mut stored = self.stored.lock().unwrap();
            for m in batch {
                if stored.insert(m.id, m.clone()).is_some() {
                    report.duplicates += 1;
                } else {
                    report.persisted += 1;
                }
            }
        }
        self.duplicates
            .fetch_add(report.duplicates, Ordering::Relaxed);
        if self.lose_next_answer.swap(false, Ordering::SeqCst) {
            return Err(SinkError::Unavailable {
                message: "connection reset after the receiver committed".into(),
                retry_after: None,
            });
        }
        Ok(report)
    }
}

#[derive(Debug, Clone, Copy)]
enum Point {
    Injected(CrashPoint),
    AnswerLost,
}

async fn crash_then_recover(point: Point) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.sqlite");
    let clock = ManualClock::starting_at_epoch();
    let receiver = Arc::new(IdempotentReceiver::default());
    let sessions = [SessionId::new(), SessionId::new()];
    let mut sent = Vec::new();
    {
        let outbox =
            Outbox::open_with_clock(&path, OutboxConfig::default(), Arc::new(clock.clone()))
                .unwrap();
        for i in 0..10 {
            let m = message(sessions[i % 2], &format!("m{i}"));
            sent.push(m.id);
            outbox.enqueue(Route::single(), m).await.unwrap();
        }
        let mut flusher = Flusher::for_test(
            &outbox,
            Arc::new(SingleSink(receiver.clone())),
            Arc::new(clock.clone()),
            1,
        );
        match point {
            Point::Injected(at) => {
                flusher.crash_at = Some(at);
                let err = flusher.step().await.unwrap_err();
                assert!(err.to_string().contains("injected crash"), "{err}");
            }
            Point::AnswerLost => {
                receiver.lose_next_answer.store(true, Ordering::SeqCst);
                assert_eq!(flusher.step().await.unwrap(), Step::Worked);
            }
        }
        assert_eq!(outbox.pending_count(), 10, "{point:?}: nothing deleted yet");
    } // the "crash": every handle is gone, only the file is left
    let after_crash = receiver.stored.lock().unwrap().len();
    match point {
        Point::Injected(CrashPoint::BeforeSend) => assert_eq!(after_crash, 0),
        _ => assert_eq!(after_crash, 10, "{point:?}: the receiver had the batch"),
    }
    clock.advance(Duration::from_secs(120)); // past any backoff the lost answer caused
    let outbox =
        Outbox::open_with_clock(&path, OutboxConfig::default(), Arc::new(clock.clone())).unwrap();
    let mut flusher = Flusher::for_test(
        &outbox,
        Arc::new(SingleSink(receiver.clone())),
        Arc::new(clock.clone()),
        2,
    );
    for _ in 0..20 {
        if let Step::Idle { .. } = flusher.step().await.unwrap() {
            break;
        }
    }
    assert_eq!(outbox.pending_count(), 0, "{point:?}: all delivered");
    assert!(outbox.dead_letters().unwrap().is_empty());
    let stored = receiver.stored.lock().unwrap();
    assert_eq!(
        stored.len(),
        10,
        "{point:?}: every message, exactly once by id"
    );
    for id in &sent {
        assert!(stored.contains_key(id), "{point:?}: {id} lost");
    }
    for s in sessions {
        let mut seqs: Vec<i64> = stored
            .values()
            .filter(|m| m.session_id == s)
            .map(|m| m.seq.unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            [1, 2, 3, 4, 5],
            "{point:?}: the same seqs on the resend"
        );
    }
    let duplicates = receiver.duplicates.load(Ordering::Relaxed);
    match point {
        Point::Injected(CrashPoint::BeforeSend) => assert_eq!(duplicates, 0),
        _ => assert_eq!(duplicates, 10, "{point:?}: the batch was resent once"),
    }
}

#[tokio::test]
async fn a_crash_before_the_send_loses_nothing() {
    crash_then_recover(Point::Injected(CrashPoint::BeforeSend)).await;
}

#[tokio::test]
async fn a_lost_answer_after_the_receiver_committed_resends_and_the_receiver_dedups() {
    crash_then_recover(Point::AnswerLost).await;
}

#[tokio::test]
async fn a_crash_between_the_ack_and_the_delete_resends_and_the_receiver_dedups() {
    crash_then_recover(Point::Injected(CrashPoint::AfterAck)).await;
}
