//! In-memory helpers for tests, simulations and embedding without nodes: a fake
//! [`WorkspaceController`] and a simulator of node boots.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kiln_core::protocol::Prompt;
use kiln_core::{Change, NodeId, NodeQuery, NodeState, WorkspaceId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::WarmPool;
use crate::controller::{ControllerError, DestroyProgress, WorkspaceController, WorkspaceRequest};

/// A [`WorkspaceController`] that records what it is asked, with failure injection.
///
/// Each first request for a workspace id is recorded once (a repeated request is accepted
/// and ignored, as a node does) and sent to the receiver from
/// [`take_requests`](Self::take_requests), so a test can play the node's part.
#[derive(Debug)]
pub struct MemoryWorkspaces {
    state: Mutex<FakeState>,
    requests_tx: mpsc::UnboundedSender<WorkspaceRequest>,
    requests_rx: Mutex<Option<mpsc::UnboundedReceiver<WorkspaceRequest>>>,
}

#[derive(Debug)]
struct FakeState {
    created: Vec<WorkspaceRequest>,
    prompts: Vec<(WorkspaceId, Prompt)>,
    stopped: Vec<WorkspaceId>,
    destroyed: Vec<WorkspaceId>,
    create_failures: VecDeque<ControllerError>,
    destroy_progress: DestroyProgress,
}

impl Default for MemoryWorkspaces {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryWorkspaces {
    /// A fake whose destroys complete at once ([`DestroyProgress::Destroyed`]).
    #[must_use]
    pub fn new() -> Self {
        let (requests_tx, rx) = mpsc::unbounded_channel();
        Self {
            state: Mutex::new(FakeState {
                created: Vec::new(),
                prompts: Vec::new(),
                stopped: Vec::new(),
                destroyed: Vec::new(),
                create_failures: VecDeque::new(),
                destroy_progress: DestroyProgress::Destroyed,
            }),
            requests_tx,
            requests_rx: Mutex::new(Some(rx)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes destroys answer `progress` (with [`DestroyProgress::Requested`] the test reports
    /// the removal itself).
    pub fn set_destroy_progress(&self, progress: DestroyProgress) {
        self.lock().destroy_progress = progress;
    }

    /// Makes the next `create_workspace` fail with `error`.
    pub fn fail_next_create(&self, error: ControllerError) {
        self.lock().create_failures.push_back(error);
    }

    /// The receiver of every accepted create request (once; `None` after the first call).
    pub fn take_requests(&self) -> Option<mpsc::UnboundedReceiver<WorkspaceRequest>> {
        self.requests_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Every accepted create request, in order.
    #[must_use]
    pub fn created(&self) -> Vec<WorkspaceRequest> {
        self.lock().created.clone()
    }

    /// Every prompt sent with [`send_prompt`](WorkspaceController::send_prompt), in order
    /// (each call, repeats included: the node is the one that drops a repeated message id).
    #[must_use]
    pub fn prompts(&self) -> Vec<(WorkspaceId, Prompt)> {
        self.lock().prompts.clone()
    }

    /// Workspaces whose agent was asked to stop.
    #[must_use]
    pub fn stopped(&self) -> Vec<WorkspaceId> {
        self.lock().stopped.clone()
    }

    /// Workspaces asked to be destroyed.
    #[must_use]
    pub fn destroyed(&self) -> Vec<WorkspaceId> {
        self.lock().destroyed.clone()
    }
}

#[async_trait]
impl WorkspaceController for MemoryWorkspaces {
    async fn create_workspace(&self, request: &WorkspaceRequest) -> Result<(), ControllerError> {
        let mut s = self.lock();
        if let Some(error) = s.create_failures.pop_front() {
            return Err(error);
        }
        if s.created
            .iter()
            .any(|r| r.workspace_id == request.workspace_id)
        {
            return Ok(());
        }
        s.created.push(request.clone());
        // No receiver (dropped) is fine: nobody plays the node.
        let _ = self.requests_tx.send(request.clone());
        Ok(())
    }

    async fn send_prompt(
        &self,
        _node: NodeId,
        workspace: WorkspaceId,
        prompt: &Prompt,
    ) -> Result<(), ControllerError> {
        self.lock().prompts.push((workspace, prompt.clone()));
        Ok(())
    }

    async fn stop_agent(
        &self,
        _node: NodeId,
        workspace: WorkspaceId,
    ) -> Result<(), ControllerError> {
        self.lock().stopped.push(workspace);
        Ok(())
    }

    async fn destroy_workspace(
        &self,
        _node: NodeId,
        workspace: WorkspaceId,
    ) -> Result<DestroyProgress, ControllerError> {
        let mut s = self.lock();
        s.destroyed.push(workspace);
        Ok(s.destroy_progress)
    }
}

/// Plays the part of booting nodes: every node the pool provisions reports ready
/// `boot_time` later on the pool's clock (through [`WarmPool::node_ready`]), as a node's
/// agent host saying hello would. Stops when the returned handle is aborted or the store's
/// change feed ends.
pub async fn simulate_node_boots(pool: Arc<WarmPool>, boot_time: Duration) -> JoinHandle<()> {
    let feed = pool.store().subscribe().await;
    let booting: Arc<Mutex<HashSet<NodeId>>> = Arc::default();
    let boot = move |pool: Arc<WarmPool>, id: NodeId| {
        let first = booting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
        if first {
            tokio::spawn(async move {
                pool.clock().sleep(boot_time).await;
                if let Err(e) = pool.node_ready(id).await {
                    tracing::debug!(node = %id, error = %e, "simulated boot: node not made ready");
                }
            });
        }
    };
    let already = pool
        .store()
        .list_nodes(&NodeQuery {
            states: vec![NodeState::Provisioning],
            ..NodeQuery::default()
        })
        .await
        .unwrap_or_default();
    for node in already.into_iter().filter(|n| n.provider_id.is_some()) {
        boot(pool.clone(), node.id);
    }
    tokio::spawn(async move {
        let Ok(mut feed) = feed else {
            tracing::warn!("simulated boots need the store's change feed");
            return;
        };
        while let Some(event) = feed.next().await {
            let Change::Node { node_id } = event.change else {
                continue;
            };
            let Ok(Some(node)) = pool.store().get_node(node_id).await else {
                continue;
            };
            if node.state == NodeState::Provisioning && node.provider_id.is_some() {
                boot(pool.clone(), node_id);
            }
        }
    })
}
