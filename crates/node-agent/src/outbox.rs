//! [`MessageRoutes`] backed by the [`kiln_outbox`] SQLite outbox: one outbox file per node
//! (`<data>/outbox.sqlite`), one route and one [`HttpMessageSink`] per workspace (posting to
//! `POST /api/workspaces/{id}/messages` with the workspace's token), one flusher.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kiln_core::protocol::OutboxReport;
use kiln_core::{ChatMessage, LifecycleClock, SessionId, SystemClock, WorkspaceId};
use kiln_outbox::{
    FlusherHandle, FlusherOptions, HttpMessageSink, Outbox, OutboxConfig, OutboxMetrics, Route,
    SinkMap,
};

use crate::config::NodeConfig;
use crate::error::{NodeError, Result};
use crate::recorder::MessageRecorder;
use crate::routes::{MessageRoutes, RouteSpec};

/// The node's outbox with its flusher.
#[derive(Debug)]
pub struct OutboxRoutes {
    outbox: Outbox,
    sinks: Arc<SinkMap>,
    flusher: FlusherHandle,
    control_plane_url: String,
    config: OutboxConfig,
    clock: Arc<dyn LifecycleClock>,
    sessions: Mutex<HashMap<WorkspaceId, SessionId>>,
}

impl OutboxRoutes {
    /// Opens (or reopens) the outbox at `path` and starts its flusher. Messages left by a
    /// previous run are delivered as soon as their workspace's route is opened again.
    ///
    /// # Errors
    /// [`NodeError::Outbox`] when the file cannot be opened.
    pub fn open(
        path: &Path,
        config: OutboxConfig,
        control_plane_url: &str,
        clock: Arc<dyn LifecycleClock>,
    ) -> Result<Self> {
        let outbox =
            Outbox::open(path, config.clone()).map_err(|e| NodeError::Outbox(e.to_string()))?;
        let sinks = Arc::new(SinkMap::new());
        let flusher =
            outbox.spawn_flusher_routed(sinks.clone(), clock.clone(), FlusherOptions::default());
        Ok(Self {
            outbox,
            sinks,
            flusher,
            control_plane_url: control_plane_url.to_owned(),
            config,
            clock,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Opens `<data dir>/outbox.sqlite` with the `MSG_*` settings from the environment.
    ///
    /// # Errors
    /// [`NodeError::InvalidConfig`] for a malformed `MSG_*` variable, [`NodeError::Outbox`]
    /// when the file cannot be opened.
    pub async fn open_from_env(config: &NodeConfig) -> Result<Self> {
        let outbox_config =
            OutboxConfig::from_env().map_err(|e| NodeError::InvalidConfig(e.to_string()))?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| NodeError::io(format!("creating {}", config.data_dir.display()), e))?;
        Self::open(
            &config.data_dir.join("outbox.sqlite"),
            outbox_config,
            &config.control_plane_url,
            Arc::new(SystemClock),
        )
    }

    /// The flusher's counters and conditions.
    #[must_use]
    pub fn metrics(&self) -> OutboxMetrics {
        self.flusher.metrics()
    }

    /// Waits until every pending message is delivered or `timeout` passes; returns how
    /// many are still pending (they stay on disk for the next start).
    pub async fn drain(&self, timeout: std::time::Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        self.flusher.wake();
        loop {
            let pending = self.outbox.pending_count();
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The underlying outbox.
    #[must_use]
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}

#[derive(Debug)]
struct OutboxRecorder {
    outbox: Outbox,
    route: Route,
}

#[async_trait]
impl MessageRecorder for OutboxRecorder {
    async fn record(&self, message: ChatMessage) -> Result<()> {
        let session = message.session_id;
        let receipt = self
            .outbox
            .enqueue(self.route, message)
            .await
            .map_err(|e| NodeError::Outbox(e.to_string()))?;
        // The acknowledged enqueue, for audits (the chaos soak counts these as produced).
        tracing::debug!(target: "kiln_node::produced", id = %receipt.id, %session, seq = receipt.seq, duplicate = receipt.duplicate, "message enqueued");
        Ok(())
    }
}

#[async_trait]
impl MessageRoutes for OutboxRoutes {
    async fn open_route(&self, route: &RouteSpec) -> Result<Arc<dyn MessageRecorder>> {
        let sink = HttpMessageSink::new(
            &self.control_plane_url,
            route.workspace_id,
            route.callback_token.clone(),
            &self.config,
            self.clock.clone(),
        )
        .map_err(|e| NodeError::InvalidConfig(e.to_string()))?;
        self.sinks.insert(route.workspace_id, Arc::new(sink));
        if let Some(session) = route.session_id {
            self.sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(route.workspace_id, session);
        }
        self.flusher.wake();
        Ok(Arc::new(OutboxRecorder {
            outbox: self.outbox.clone(),
            route: Route::new(route.workspace_id, route.project_id),
        }))
    }

    async fn pending(&self, workspace: WorkspaceId) -> u64 {
        let session = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&workspace)
            .copied();
        let Some(session) = session else {
            return 0;
        };
        if self.outbox.pending_count() == 0 {
            return 0;
        }
        match self.outbox.pending_messages() {
            Ok(messages) => messages.iter().filter(|m| m.session_id == session).count() as u64,
            Err(e) => {
                tracing::warn!(error = %e, "outbox unreadable");
                0
            }
        }
    }

    async fn close_route(&self, workspace: WorkspaceId) {
        self.sinks.remove(workspace);
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&workspace);
    }

    async fn report(&self) -> OutboxReport {
        let m = self.flusher.metrics();
        OutboxReport {
            pending: m.pending,
            oldest_pending_ms: m
                .oldest_pending_age
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            delivered: m.delivered,
            dropped: m.dropped.total(),
            last_error: m.last_error,
        }
    }
}
