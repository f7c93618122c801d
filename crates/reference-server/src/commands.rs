//! Per-node command queues for the long-poll `GET /api/nodes/{id}/commands`.
//!
//! Commands wait in memory until the node acknowledges them (by polling with
//! `after` ≥ their `seq`). A command may be issued on any replica (the runner of whichever
//! replica handled the user's request) while the node polls another, so [`dispatch`] sends it
//! through the store's change feed ([`Change::NodeCommand`]) and every replica's `relay`
//! queues it; the replica the node polls delivers it (the node applies each command once per
//! workspace, so a copy delivered after a switch of replica does no harm). After a server
//! restart the queue starts empty, and a node polling with an `after` beyond the new queue's
//! numbers moves the numbering past it, so new commands are never mistaken for acknowledged
//! ones. Commands not yet delivered when a server stops are lost; the runner's transient-state
//! limits then fail the task with a reason.
//!
//! A project's git token is never queued nor relayed: [`attach_git_tokens`] adds it to a
//! `create_workspace` command as the poll answers the node, and [`project_git_token`] opens
//! it again for a restarted node that asks for it (`GET
//! /api/nodes/{nodeId}/workspaces/{workspaceId}/git-token`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kiln_core::protocol::{NodeCommand, Prompt, SequencedCommand};
use kiln_core::{Change, MessagePage, NodeId, NodeState, SessionId, Store, StoreError, StoreEvent};
use tokio::sync::watch;

/// The most commands kept for one node; older undelivered ones are dropped (a replica keeps
/// copies for nodes that poll another replica, so the bound keeps those copies small).
const MAX_QUEUED: usize = 1000;
/// Serialized commands above this size travel through the feed without their prompt text.
const MAX_FEED_COMMAND_BYTES: usize = 6000;

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
#[derive(Debug)]
pub struct CommandQueues {
    queues: Mutex<HashMap<NodeId, Queue>>,
    /// Set when the server shuts down: waiting polls return at once.
    closed: watch::Sender<bool>,
}

impl Default for CommandQueues {
    fn default() -> Self {
        Self {
            queues: Mutex::default(),
            closed: watch::channel(false).0,
        }
    }
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
        while queue.pending.len() > MAX_QUEUED {
            queue.pending.pop_front();
        }
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
        let mut closed = self.closed.subscribe();
        if !*closed.borrow() {
            let _ = tokio::time::timeout(wait, async {
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = closed.wait_for(|c| *c) => {}
                }
            })
            .await;
        }
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

    /// Ends every waiting poll now and makes later polls return at once (shutdown: the
    /// nodes reconnect to whichever server comes next).
    pub fn close(&self) {
        self.closed.send_replace(true);
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

/// Sends `command` to `node` through every replica's `relay` (the change feed). When the
/// feed cannot take it, it is queued on this replica only.
pub async fn dispatch(
    store: &Arc<dyn Store>,
    queues: &CommandQueues,
    node: NodeId,
    command: NodeCommand,
) -> Result<(), StoreError> {
    let owner = store
        .get_node(node)
        .await?
        .ok_or_else(|| StoreError::not_found("node", node))?
        .owner;
    let mut relayed = command.clone();
    if let NodeCommand::CreateWorkspace { git_token, .. } = &mut relayed {
        // The feed (PostgreSQL NOTIFY between replicas) never carries a secret: the token
        // is added when the command goes out to the node ([`attach_git_tokens`]).
        *git_token = None;
    }
    if serde_json::to_vec(&relayed).map_or(0, |v| v.len()) > MAX_FEED_COMMAND_BYTES {
        match &mut relayed {
            NodeCommand::CreateWorkspace {
                prompt: Some(p), ..
            }
            | NodeCommand::Prompt { prompt: p, .. } => p.text.clear(),
            _ => {}
        }
    }
    let event = StoreEvent {
        owner,
        project_id: None,
        change: Change::NodeCommand {
            node_id: node,
            command: Box::new(relayed),
        },
    };
    if let Err(err) = store.publish(&event).await {
        tracing::warn!(%node, %err, "the change feed refused a node command; queueing it here only");
        queues.push(node, command);
    }
    Ok(())
}

/// Adds each project's git token (its own, else its owner's default, from the secret store)
/// to the `create_workspace` commands of a poll's answer, opened with the server's vault just
/// before they go to the node. Queues and the change feed never hold the token, so it only
/// travels on the node's authenticated command channel. A token the vault cannot open (its
/// key is gone) is logged and left out: the clone or push then fails for authentication.
///
/// # Errors
/// The store failed (the poll should fail, and the node poll again).
pub async fn attach_git_tokens(
    store: &Arc<dyn Store>,
    credentials: &crate::credentials::Credentials,
    commands: &mut [SequencedCommand],
) -> Result<(), StoreError> {
    for sequenced in commands {
        let NodeCommand::CreateWorkspace {
            workspace_id,
            project_id: Some(project_id),
            git_token,
            ..
        } = &mut sequenced.command
        else {
            continue;
        };
        match project_git_token(store, credentials, *project_id).await? {
            ProjectGitToken::Opened(token) => *git_token = Some(token),
            ProjectGitToken::None => {}
            ProjectGitToken::Unopenable(err) => tracing::warn!(
                workspace = %workspace_id,
                project = %project_id,
                %err,
                "the project's git token cannot be opened (vault key changed?); the workspace gets none"
            ),
        }
    }
    Ok(())
}

/// What [`project_git_token`] found.
#[derive(Debug)]
pub enum ProjectGitToken {
    /// The token, opened.
    Opened(kiln_core::secret::Secret),
    /// The project (or its owner, as a default) has none, or the project is gone.
    None,
    /// A token is stored but the vault cannot open it (its key changed).
    Unopenable(kiln_backends::vault::VaultError),
}

/// The git token of `project` (its own, else its owner's default), opened with the vault:
/// what [`attach_git_tokens`] adds to a `create_workspace` command, and what a restarted
/// node asks for again (`GET /api/nodes/{nodeId}/workspaces/{workspaceId}/git-token`).
///
/// # Errors
/// The store failed.
pub async fn project_git_token(
    store: &Arc<dyn Store>,
    credentials: &crate::credentials::Credentials,
    project: kiln_core::ProjectId,
) -> Result<ProjectGitToken, StoreError> {
    use kiln_core::SecretStoreExt as _;
    let Some(project) = store.get_project(project).await? else {
        return Ok(ProjectGitToken::None);
    };
    let Some(stored) = store
        .effective_secret(
            project.owner,
            Some(project.id),
            kiln_core::SecretKind::GitToken,
        )
        .await?
    else {
        return Ok(ProjectGitToken::None);
    };
    Ok(match credentials.open(&stored) {
        Ok(token) => ProjectGitToken::Opened(kiln_core::secret::Secret::new(token)),
        Err(err) => ProjectGitToken::Unopenable(err),
    })
}

/// Reads back a prompt text left out of a relayed command.
async fn refill(store: &Arc<dyn Store>, command: &mut NodeCommand) -> Result<(), StoreError> {
    match command {
        NodeCommand::CreateWorkspace {
            task_id: Some(task),
            prompt: Some(p),
            ..
        } if p.text.is_empty() => {
            if let Some(t) = store.get_task(*task).await? {
                p.text = t.description;
            }
        }
        // A chat's first prompt: stored in its session.
        NodeCommand::CreateWorkspace {
            task_id: None,
            session_id: Some(session),
            prompt: Some(p),
            ..
        } if p.text.is_empty() => refill_from_session(store, *session, p).await?,
        NodeCommand::Prompt {
            workspace_id,
            prompt: p,
        } if p.text.is_empty() => {
            let session = store
                .get_workspace(*workspace_id)
                .await?
                .and_then(|w| w.session_id);
            if let Some(session) = session {
                refill_from_session(store, session, p).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads a prompt's text back from the recent messages of its session.
async fn refill_from_session(
    store: &Arc<dyn Store>,
    session: SessionId,
    prompt: &mut Prompt,
) -> Result<(), StoreError> {
    let recent = store
        .list_messages(session, MessagePage::Latest { limit: 500 })
        .await?;
    if let Some(m) = recent.iter().find(|m| m.message.id == prompt.message_id) {
        prompt.text.clone_from(&m.message.content);
    }
    Ok(())
}

/// Subscribes to the change feed, then spawns the task that queues every command relayed
/// through it on this replica and forgets the queues of nodes that are gone (until the feed
/// ends). Subscribing before returning means no command dispatched afterwards is missed.
pub async fn spawn_relay(
    store: Arc<dyn Store>,
    queues: Arc<CommandQueues>,
) -> Result<tokio::task::JoinHandle<()>, StoreError> {
    let feed = store.subscribe().await?;
    Ok(tokio::spawn(relay(store, queues, feed)))
}

async fn relay(
    store: Arc<dyn Store>,
    queues: Arc<CommandQueues>,
    mut feed: futures::stream::BoxStream<'static, StoreEvent>,
) {
    while let Some(event) = feed.next().await {
        match event.change {
            Change::NodeCommand {
                node_id,
                mut command,
            } => {
                if let Err(err) = refill(&store, &mut command).await {
                    tracing::warn!(node = %node_id, %err, "could not read back a relayed prompt");
                }
                queues.push(node_id, *command);
            }
            Change::Node { node_id } => {
                if let Ok(Some(node)) = store.get_node(node_id).await
                    && matches!(node.state, NodeState::Destroyed | NodeState::Failed)
                {
                    queues.remove(node_id);
                }
            }
            _ => {}
        }
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
    async fn closing_ends_waiting_polls() {
        let q = Arc::new(CommandQueues::new());
        let node = NodeId::new();
        let poller = tokio::spawn({
            let q = q.clone();
            async move { q.poll(node, 0, Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.close();
        let got = tokio::time::timeout(Duration::from_secs(2), poller)
            .await
            .expect("the poll ended at close")
            .unwrap();
        assert!(got.is_empty());
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
