//! Reports workspace events to the control plane in order, retrying until accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kiln_core::protocol::{DeltaBatch, MessageDelta, WorkspaceEvent};
use tokio::sync::{mpsc, watch};

use crate::control::ControlPlaneClient;
use crate::error::NodeError;

/// Queues workspace events; a single task sends them one after the other, so the control
/// plane sees them in the order they happened. Transient failures are retried with backoff
/// (events are idempotent at the server); a `410 Gone` raises the node's stop signal.
#[derive(Debug, Clone)]
pub struct EventReporter {
    tx: mpsc::UnboundedSender<WorkspaceEvent>,
}

impl EventReporter {
    /// Starts the sender task.
    #[must_use]
    pub fn spawn(
        control: ControlPlaneClient,
        stop: watch::Sender<bool>,
        gone: Arc<AtomicBool>,
        retry_initial: Duration,
        retry_max: Duration,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<WorkspaceEvent>();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let mut delay = retry_initial;
                loop {
                    match control.event(&event).await {
                        Ok(()) => {
                            tracing::info!(?event, "workspace event reported");
                            break;
                        }
                        Err(NodeError::Stopped) => {
                            gone.store(true, Ordering::Relaxed);
                            stop.send_replace(true);
                            return;
                        }
                        Err(e @ NodeError::Rejected { .. }) => {
                            tracing::warn!(error = %e, ?event, "workspace event rejected; dropped");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reporting a workspace event failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(retry_max);
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// A reporter that just collects events (tests).
    #[must_use]
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<WorkspaceEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// Queues one event.
    pub fn report(&self, event: WorkspaceEvent) {
        if self.tx.send(event).is_err() {
            tracing::warn!("event reporter gone; event lost");
        }
    }
}

/// Forwards live text deltas in batches, best effort: a failed post is dropped.
pub fn spawn_delta_forwarder(
    control: ControlPlaneClient,
    capacity: usize,
) -> mpsc::Sender<MessageDelta> {
    let (tx, mut rx) = mpsc::channel::<MessageDelta>(capacity.max(1));
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut deltas = vec![first];
            while deltas.len() < 256 {
                match rx.try_recv() {
                    Ok(d) => deltas.push(d),
                    Err(_) => break,
                }
            }
            if let Err(e) = control.deltas(&DeltaBatch { deltas }).await {
                tracing::debug!(error = %e, "deltas dropped");
            }
        }
    });
    tx
}
