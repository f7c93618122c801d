//! `enqueue_in`: messages committed atomically with the host's own writes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_core::{ChatMessage, DeliveryReport, ManualClock, MessageSink, SessionId, SinkError};

use super::message;
use crate::flusher::{Flusher, Step};
use crate::{Outbox, OutboxConfig, OutboxError, Route, SingleSink};

#[derive(Debug, Default)]
struct Keep(Mutex<Vec<ChatMessage>>);

#[async_trait]
impl MessageSink for Keep {
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
        self.0.lock().unwrap().extend_from_slice(batch);
        Ok(DeliveryReport {
            persisted: batch.len() as u64,
            duplicates: 0,
        })
    }
}

fn host_connection(outbox: &Outbox) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(outbox.path()).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, note TEXT)")
        .unwrap();
    conn
}

#[tokio::test]
async fn enqueue_in_commits_and_rolls_back_with_the_hosts_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at_epoch();
    let outbox = Outbox::open_with_clock(
        dir.path().join("o.sqlite"),
        OutboxConfig::default(),
        Arc::new(clock.clone()),
    )
    .unwrap();
    let session = SessionId::new();
    let mut host = host_connection(&outbox);
    let mut seqs = Vec::new();

    // The writer has this session cached at seq 2 before the host writes behind its back.
    for text in ["w1", "w2"] {
        seqs.push(
            outbox
                .enqueue(Route::single(), message(session, text))
                .await
                .unwrap()
                .seq,
        );
    }
    {
        let tx = host.transaction().unwrap();
        tx.execute("INSERT INTO orders (note) VALUES ('paid')", [])
            .unwrap();
        let receipts = outbox
            .enqueue_in(
                &tx,
                Route::single(),
                vec![message(session, "h1"), message(session, "h2")],
            )
            .unwrap();
        seqs.extend(receipts.iter().map(|r| r.seq));
        assert_eq!(outbox.pending_count(), 2, "not committed yet");
        tx.commit().unwrap();
    }
    // Counted as soon as the host commits, before the writer has seen them.
    assert_eq!(outbox.pending_count(), 4);
    // Rolled back: neither the order nor the message exists, and no seq is used up.
    {
        let tx = host.transaction().unwrap();
        tx.execute("INSERT INTO orders (note) VALUES ('abandoned')", [])
            .unwrap();
        outbox
            .enqueue_in(&tx, Route::single(), vec![message(session, "never")])
            .unwrap();
        tx.rollback().unwrap();
    }
    assert_eq!(outbox.pending_count(), 4);
    // The writer continues after the host's rows, not over them.
    seqs.push(
        outbox
            .enqueue(Route::single(), message(session, "w3"))
            .await
            .unwrap()
            .seq,
    );
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    // Another file is refused.
    let other = rusqlite::Connection::open(dir.path().join("other.sqlite")).unwrap();
    let mut other = other;
    let tx = other.transaction().unwrap();
    let err = outbox
        .enqueue_in(&tx, Route::single(), vec![message(session, "x")])
        .unwrap_err();
    assert!(matches!(err, OutboxError::InvalidConfig(_)), "{err}");
    drop(tx);

    let orders: Vec<String> = host
        .prepare("SELECT note FROM orders ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(orders, ["paid"]);
    let sink = Arc::new(Keep::default());
    let mut flusher = Flusher::for_test(
        &outbox,
        Arc::new(SingleSink(sink.clone())),
        Arc::new(clock.clone()),
        1,
    );
    while flusher.step().await.unwrap() == Step::Worked {}
    let got = sink.0.lock().unwrap();
    assert_eq!(
        got.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        ["w1", "w2", "h1", "h2", "w3"]
    );
    assert_eq!(
        got.iter().map(|m| m.seq.unwrap()).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(outbox.pending_count(), 0);
}
