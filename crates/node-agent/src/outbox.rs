//! [`MessageRoutes`] backed by the [`kiln_outbox`] SQLite outbox: one outbox file per node
//! (`<data>/outbox.sqlite`), one route and one [`HttpMessageSink`] per workspace (posting to
//! `POST /api/workspaces/{id}/messages` with the workspace's token), one flusher.
//!
//! A route closed while its workspace still has undelivered messages (the workspace was
//! destroyed during a network fault longer than the destroy drain) is not dropped: it is
//! written to `<data>/draining-routes/<workspace>.json` (mode 0600: it holds the workspace's
//! token) and keeps delivering until the last message is acknowledged, also after a
//! restart; then the file goes. Acknowledged messages are never stranded without a route.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_core::protocol::OutboxReport;
use kiln_core::{ChatMessage, LifecycleClock, SystemClock, WorkspaceId};
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
    routes: Arc<Mutex<HashMap<WorkspaceId, RouteSpec>>>,
    /// Routes closed with messages pending, one file each.
    draining_dir: PathBuf,
    /// Dropped with the routes: stops the draining watchers, which hold the outbox open.
    alive: tokio::sync::watch::Sender<()>,
}

/// How often a draining route checks whether its last message went out.
const DRAIN_POLL: Duration = Duration::from_millis(500);

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
        let routes = Self {
            outbox,
            sinks,
            flusher,
            control_plane_url: control_plane_url.to_owned(),
            config,
            clock,
            routes: Arc::default(),
            draining_dir: path.with_file_name("draining-routes"),
            alive: tokio::sync::watch::channel(()).0,
        };
        routes.reopen_draining();
        Ok(routes)
    }

    /// Reopens the routes a previous run closed with messages pending, so they drain.
    fn reopen_draining(&self) {
        let Ok(entries) = std::fs::read_dir(&self.draining_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let spec = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<RouteSpec>(&b).map_err(|e| e.to_string()));
            match spec {
                Ok(spec) => match self.install(&spec) {
                    Ok(()) => {
                        tracing::info!(workspace = %spec.workspace_id, "reopened a draining route");
                        self.close_when_drained(spec.workspace_id);
                    }
                    Err(e) => {
                        tracing::error!(workspace = %spec.workspace_id, error = %e, "draining route not reopened");
                    }
                },
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "unreadable draining route")
                }
            }
        }
    }

    /// Installs the route's sink and remembers it.
    fn install(&self, route: &RouteSpec) -> Result<()> {
        let sink = HttpMessageSink::new(
            &self.control_plane_url,
            route.workspace_id,
            route.callback_token.clone(),
            &self.config,
            self.clock.clone(),
        )
        .map_err(|e| NodeError::InvalidConfig(e.to_string()))?;
        self.sinks.insert(route.workspace_id, Arc::new(sink));
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(route.workspace_id, route.clone());
        self.flusher.wake();
        Ok(())
    }

    /// Removes `workspace`'s route once none of its messages is pending (checked every
    /// [`DRAIN_POLL`]), then its draining file.
    fn close_when_drained(&self, workspace: WorkspaceId) {
        let outbox = self.outbox.clone();
        let sinks = self.sinks.clone();
        let routes = self.routes.clone();
        let file = self.draining_dir.join(format!("{workspace}.json"));
        let mut alive = self.alive.subscribe();
        tokio::spawn(async move {
            loop {
                let session = routes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&workspace)
                    .and_then(|r| r.session_id);
                if pending_of(&outbox, session) == 0 {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(DRAIN_POLL) => {}
                    // The routes are gone (the host stops): the file stays for the next start.
                    Err(_) = alive.changed() => return,
                }
            }
            sinks.remove(workspace);
            routes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&workspace);
            if let Err(e) = std::fs::remove_file(&file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %file.display(), error = %e, "draining route file not removed");
            }
            tracing::info!(%workspace, "route closed: every message delivered");
        });
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

/// Pending messages of `session` (none without a session).
fn pending_of(outbox: &Outbox, session: Option<kiln_core::SessionId>) -> u64 {
    let Some(session) = session else {
        return 0;
    };
    if outbox.pending_count() == 0 {
        return 0;
    }
    match outbox.pending_messages() {
        Ok(messages) => messages.iter().filter(|m| m.session_id == session).count() as u64,
        Err(e) => {
            // Unknown counts as pending: a route is never dropped on a guess.
            tracing::warn!(error = %e, "outbox unreadable");
            1
        }
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
        self.install(route)?;
        Ok(Arc::new(OutboxRecorder {
            outbox: self.outbox.clone(),
            route: Route::new(route.workspace_id, route.project_id),
        }))
    }

    async fn pending(&self, workspace: WorkspaceId) -> u64 {
        let session = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&workspace)
            .and_then(|r| r.session_id);
        pending_of(&self.outbox, session)
    }

    async fn close_route(&self, workspace: WorkspaceId) {
        let spec = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&workspace)
            .cloned();
        let Some(spec) = spec else {
            self.sinks.remove(workspace);
            return;
        };
        let pending = pending_of(&self.outbox, spec.session_id);
        if pending == 0 {
            self.sinks.remove(workspace);
            self.routes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&workspace);
            return;
        }
        // Keep delivering; remember the route so a restart resumes it.
        let written = std::fs::create_dir_all(&self.draining_dir)
            .map_err(|e| NodeError::io(format!("creating {}", self.draining_dir.display()), e))
            .and_then(|()| {
                crate::workspace::record::write_private_json(
                    &self.draining_dir.join(format!("{workspace}.json")),
                    &spec,
                )
            });
        if let Err(e) = written {
            tracing::error!(%workspace, error = %e, "draining route not saved; a restart before it drains strands its messages");
        }
        tracing::warn!(%workspace, pending, "route closed with messages pending; delivering them first");
        self.close_when_drained(workspace);
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
