//! Per-node command queues for the long-poll `GET /api/nodes/{id}/commands`.
//!
//! Commands wait in memory until the node acknowledges them (by polling with
//! `after` ≥ their `seq`). A node talks to the replica that provisioned it, whose
//! runner queues its commands; after a server restart the queue starts empty, and a node
//! polling with an `after` beyond the new queue's numbers moves the numbering past it, so
//! new commands are never mistaken for acknowledged ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use kiln_core::NodeId;
use kiln_core::protocol::{NodeCommand, SequencedCommand};
use tokio::sync::watch;

#[derive(Debug)]
struct Queue {
    /// The seq the next command gets.
    next_seq: u64,
    /// Unacknowledged commands, oldest first.
    pending: VecDeque<SequencedCommand>,
    /// Bumped on every push, to wake pollers.
    changed: watch::Sender<u64>,
}

impl Queue {
    fn new() -> Self {
        Self {
            next_seq: 1,
            pending: VecDeque::new(),
            changed: watch::channel(0).0,
        }
    }
}

/// The command queues of every node this replica talks to.
#[derive(Debug, Default)]
pub struct CommandQueues {
    queues: Mutex<HashMap<NodeId, Queue>>,
}

impl CommandQueues {
    /// Empty queues.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Queue>> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `command` for `node`; returns its seq.
    pub fn push(&self, node: NodeId, command: NodeCommand) -> u64 {
        let mut queues = self.lock();
        let queue = queues.entry(node).or_insert_with(Queue::new);
        let seq = queue.next_seq;
        queue.next_seq += 1;
        queue.pending.push_back(SequencedCommand { seq, command });
        queue.changed.send_modify(|v| *v += 1);
        seq
    }

    /// Acknowledges every command up to `after` and returns the rest, waiting up to `wait`
    /// for one to arrive when there is none.
    pub async fn poll(&self, node: NodeId, after: u64, wait: Duration) -> Vec<SequencedCommand> {
        let mut changed = {
            let mut queues = self.lock();
            let queue = queues.entry(node).or_insert_with(Queue::new);
            Self::ack(queue, after);
            if !queue.pending.is_empty() {
                return queue.pending.iter().cloned().collect();
            }
            queue.changed.subscribe()
        };
        let _ = tokio::time::timeout(wait, changed.changed()).await;
        let mut queues = self.lock();
        let queue = queues.entry(node).or_insert_with(Queue::new);
        Self::ack(queue, after);
        queue.pending.iter().cloned().collect()
    }

    fn ack(queue: &mut Queue, after: u64) {
        if after >= queue.next_seq {
            // The node acknowledged numbers this queue never issued (the server restarted):
            // renumber what waits so it comes after them.
            let mut seq = after + 1;
            for cmd in &mut queue.pending {
                cmd.seq = seq;
                seq += 1;
            }
            queue.next_seq = seq;
            return;
        }
        while queue.pending.front().is_some_and(|c| c.seq <= after) {
            queue.pending.pop_front();
        }
    }

    /// Forgets a node's queue (it is gone).
    pub fn remove(&self, node: NodeId) {
        self.lock().remove(&node);
    }

    /// Commands waiting for `node`, for tests and diagnostics.
    #[must_use]
    pub fn pending(&self, node: NodeId) -> Vec<SequencedCommand> {
        self.lock()
            .get(&node)
            .map(|q| q.pending.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::WorkspaceId;
    use std::sync::Arc;

    fn cancel() -> NodeCommand {
        NodeCommand::Cancel {
            workspace_id: WorkspaceId::new(),
        }
    }

    #[tokio::test]
    async fn commands_stay_until_acknowledged() {
        let q = CommandQueues::new();
        let node = NodeId::new();
        assert_eq!(q.push(node, cancel()), 1);
        assert_eq!(q.push(node, cancel()), 2);
        let got = q.poll(node, 0, Duration::ZERO).await;
        assert_eq!(got.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![1, 2]);
        let got = q.poll(node, 1, Duration::ZERO).await;
        assert_eq!(got.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![2]);
        assert!(q.poll(node, 2, Duration::from_millis(10)).await.is_empty());
        // Another node's queue is separate.
        assert!(q.poll(NodeId::new(), 0, Duration::ZERO).await.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_poll_wakes_on_push() {
        let q = Arc::new(CommandQueues::new());
        let node = NodeId::new();
        let poller = tokio::spawn({
            let q = q.clone();
            async move { q.poll(node, 0, Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.push(node, cancel());
        let got = tokio::time::timeout(Duration::from_secs(2), poller)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn an_ack_beyond_the_queue_renumbers_after_a_restart() {
        let q = CommandQueues::new();
        let node = NodeId::new();
        q.push(node, cancel());
        let got = q.poll(node, 57, Duration::ZERO).await;
        assert_eq!(got[0].seq, 58);
        assert_eq!(q.push(node, cancel()), 59);
    }
}
