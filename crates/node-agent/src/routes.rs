//! The seam between the agent host and the durable outbox: one message route per
//! workspace (its endpoint and its token), opened when the workspace is created.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kiln_core::protocol::OutboxReport;
use kiln_core::{ProjectId, WorkspaceId};

use crate::error::Result;
use crate::recorder::{MemoryRecorder, MessageRecorder};

/// Where one workspace's messages go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// The workspace (its messages go to `POST /api/workspaces/{id}/messages`).
    pub workspace_id: WorkspaceId,
    /// Its project, if any.
    pub project_id: Option<ProjectId>,
    /// Its chat session.
    pub session_id: Option<kiln_core::SessionId>,
    /// The workspace's callback token for those deliveries.
    pub callback_token: String,
}

/// Durable message routes for the node's workspaces.
#[async_trait]
pub trait MessageRoutes: Send + Sync + fmt::Debug + 'static {
    /// Opens (or reopens, after a restart) the route of a workspace and returns the
    /// recorder its agent's messages are written to.
    async fn open_route(&self, route: &RouteSpec) -> Result<Arc<dyn MessageRecorder>>;

    /// Messages of `workspace` not yet delivered.
    async fn pending(&self, workspace: WorkspaceId) -> u64;

    /// Forgets a destroyed workspace's route once its messages are delivered: a route
    /// closed with messages still pending keeps delivering them (across restarts) first.
    async fn close_route(&self, workspace: WorkspaceId);

    /// The state of the outbox, for heartbeats.
    async fn report(&self) -> OutboxReport;
}

/// Routes that keep messages in memory, delivered at once (tests and embedding).
#[derive(Debug, Default, Clone)]
pub struct MemoryRoutes {
    routes: Arc<Mutex<HashMap<WorkspaceId, MemoryRecorder>>>,
}

impl MemoryRoutes {
    /// No routes yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages recorded for `workspace`, in order.
    #[must_use]
    pub fn messages(&self, workspace: WorkspaceId) -> Vec<kiln_core::ChatMessage> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&workspace)
            .map(MemoryRecorder::messages)
            .unwrap_or_default()
    }
}

#[async_trait]
impl MessageRoutes for MemoryRoutes {
    async fn open_route(&self, route: &RouteSpec) -> Result<Arc<dyn MessageRecorder>> {
        let recorder = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(route.workspace_id)
            .or_default()
            .clone();
        Ok(Arc::new(recorder))
    }

    async fn pending(&self, _workspace: WorkspaceId) -> u64 {
        0
    }

    async fn close_route(&self, _workspace: WorkspaceId) {}

    async fn report(&self) -> OutboxReport {
        OutboxReport::default()
    }
}
