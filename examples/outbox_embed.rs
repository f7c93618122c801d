//! Embedding `kiln-outbox` in another program with its own `MessageSink`.
//!
//! The program writes chat messages to a crash-safe SQLite outbox; a flusher delivers them
//! to a sink of its own: here a flaky in-process "archive" that is down for its first two
//! calls and rejects one message on its merits. The outbox retries the outage (nothing is
//! lost), drops only the rejected message (with a visible notice for its session), and the
//! program shuts the flusher down with a deadline.
//!
//! Run: `cargo run --example outbox_embed`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_core::{
    ChatMessage, DeliveryReport, LifecycleClock, MessageId, MessageSink, Role, SessionId,
    SinkError, SystemClock,
};
use kiln_outbox::{Outbox, OutboxConfig, Route};

/// The host program's own receiver: an archive keyed by message id.
#[derive(Debug, Default)]
struct Archive {
    calls: AtomicUsize,
    stored: Mutex<Vec<ChatMessage>>,
}

#[async_trait]
impl MessageSink for Archive {
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < 2 {
            return Err(SinkError::Unavailable {
                message: "archive warming up".into(),
                retry_after: None,
            });
        }
        let bad: Vec<MessageId> = batch
            .iter()
            .filter(|m| m.content.contains("forbidden"))
            .map(|m| m.id)
            .collect();
        if !bad.is_empty() {
            return Err(SinkError::Rejected {
                message: "content policy".into(),
                message_ids: bad,
            });
        }
        let mut stored = self.stored.lock().unwrap();
        let mut report = DeliveryReport::default();
        for m in batch {
            if stored.iter().any(|s| s.id == m.id) {
                report.duplicates += 1;
            } else {
                stored.push(m.clone());
                report.persisted += 1;
            }
        }
        Ok(report)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = OutboxConfig {
        // Short retries so the example finishes in well under a second.
        retry_initial_interval: Duration::from_millis(20),
        retry_max_interval: Duration::from_millis(100),
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open(dir.path().join("outbox.sqlite"), config)?;
    let clock = Arc::new(SystemClock);
    let archive = Arc::new(Archive::default());
    let flusher = outbox.spawn_flusher(archive.clone(), clock.clone());

    let session = SessionId::new();
    for text in ["hello", "this one is forbidden", "world", "goodbye"] {
        let receipt = outbox
            .enqueue(
                Route::single(),
                ChatMessage {
                    id: MessageId::new(),
                    session_id: session,
                    role: Role::User,
                    content: text.into(),
                    tool: None,
                    seq: None,
                    created_at: clock.now(),
                },
            )
            .await?;
        println!("enqueued seq {} (durable now): {text}", receipt.seq);
    }

    let waited = std::time::Instant::now();
    while outbox.pending_count() > 0 {
        if waited.elapsed() > Duration::from_secs(10) {
            return Err("the outbox did not drain".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = flusher.metrics();
    let report = flusher
        .shutdown(kiln_core::clock::add_duration(
            clock.now(),
            Duration::from_secs(1),
        ))
        .await;

    let stored = archive.stored.lock().unwrap();
    for m in stored.iter() {
        println!("archived seq {:?} [{}] {}", m.seq, m.role, m.content);
    }
    println!(
        "delivered {}, retried {}, dropped {:?}, left on disk {}",
        metrics.delivered, metrics.retried, metrics.dropped, report.pending
    );
    assert_eq!(stored.len(), 4, "3 messages and 1 drop notice");
    assert!(stored.iter().all(|m| !m.content.contains("forbidden")));
    assert!(
        stored
            .iter()
            .any(|m| m.role == Role::System && m.content.starts_with("1 message was dropped"))
    );
    assert_eq!(metrics.dropped.rejected, 1);
    assert!(metrics.retried >= 2);
    Ok(())
}
