//! Where captured chat messages go: the [`MessageRecorder`] seam between the ACP host and
//! the durable outbox, and the best-effort [`DeltaSender`] for live text.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kiln_core::ChatMessage;
use kiln_core::protocol::MessageDelta;
use tokio::sync::mpsc;

use crate::error::Result;

/// Records chat messages durably. `record` returns only once the message survives a crash
/// of the agent host (for the outbox: the SQLite transaction committed).
#[async_trait]
pub trait MessageRecorder: Send + Sync + fmt::Debug + 'static {
    /// Records one message.
    async fn record(&self, message: ChatMessage) -> Result<()>;
}

#[async_trait]
impl<T: MessageRecorder + ?Sized> MessageRecorder for Arc<T> {
    async fn record(&self, message: ChatMessage) -> Result<()> {
        (**self).record(message).await
    }
}

/// Keeps messages in memory (tests and embedding).
#[derive(Debug, Default, Clone)]
pub struct MemoryRecorder {
    messages: Arc<Mutex<Vec<ChatMessage>>>,
}

impl MemoryRecorder {
    /// An empty recorder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message recorded so far, in order.
    #[must_use]
    pub fn messages(&self) -> Vec<ChatMessage> {
        self.messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl MessageRecorder for MemoryRecorder {
    async fn record(&self, message: ChatMessage) -> Result<()> {
        self.messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(message);
        Ok(())
    }
}

/// Hands live text deltas to the node's delta forwarder without ever waiting: when the
/// forwarder is behind, deltas are dropped (the stored message follows anyway).
#[derive(Debug, Clone)]
pub struct DeltaSender {
    tx: mpsc::Sender<MessageDelta>,
}

impl DeltaSender {
    /// A sender feeding `tx`.
    #[must_use]
    pub fn new(tx: mpsc::Sender<MessageDelta>) -> Self {
        Self { tx }
    }

    /// Offers one delta; drops it when the queue is full or closed.
    pub fn offer(&self, delta: MessageDelta) {
        if self.tx.try_send(delta).is_err() {
            tracing::trace!("delta dropped (forwarder busy or gone)");
        }
    }
}
