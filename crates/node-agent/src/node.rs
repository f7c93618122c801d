//! The node's main loop: hello, heartbeats, the command long-poll, reconnects.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kiln_core::protocol::{Heartbeat, NodeCommand, NodeHello};
use kiln_core::{LifecycleClock, SystemClock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::control::ControlPlaneClient;
use crate::error::{NodeError, Result};
use crate::events::{EventReporter, spawn_delta_forwarder};
use crate::recorder::DeltaSender;
use crate::routes::MessageRoutes;
use crate::workspace::record::write_private_json;
use crate::workspace::{NodeShared, Workspaces};

/// What the node remembers across restarts besides its workspaces.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeState {
    /// The highest command `seq` executed (acknowledged with the next poll).
    last_seq: u64,
}

/// Why [`Node::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeExit {
    /// The control plane answered `410 Gone`.
    Stopped,
    /// A `shutdown` command arrived.
    Shutdown {
        /// Its reason.
        reason: String,
    },
    /// [`Node::stop_handle`] was used.
    Requested,
    /// The data directory was removed (the node was destroyed while its control plane was
    /// unreachable, e.g. by the local provider or a test cleaning up): nothing left to serve.
    DataDirRemoved,
}

/// The agent host of one node.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    control: ControlPlaneClient,
    routes: Arc<dyn MessageRoutes>,
    workspaces: Arc<Workspaces>,
    stop: watch::Sender<bool>,
    gone: Arc<AtomicBool>,
    state_path: PathBuf,
    state: NodeState,
}

impl Node {
    /// Prepares the node: data directory, state, control-plane client, event reporter and
    /// delta forwarder, and the workspaces a previous run left (their routes reopen at once,
    /// so undelivered messages go out).
    ///
    /// # Errors
    /// The data directory cannot be created or the HTTP client cannot be built.
    pub async fn start(config: NodeConfig, routes: Arc<dyn MessageRoutes>) -> Result<Self> {
        Self::start_with_clock(config, routes, Arc::new(SystemClock)).await
    }

    /// [`start`](Self::start) with an explicit clock for message timestamps.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_with_clock(
        config: NodeConfig,
        routes: Arc<dyn MessageRoutes>,
        clock: Arc<dyn LifecycleClock>,
    ) -> Result<Self> {
        std::fs::create_dir_all(config.workspaces_dir())
            .map_err(|e| NodeError::io(format!("creating {}", config.data_dir.display()), e))?;
        let control = ControlPlaneClient::new(
            &config.control_plane_url,
            config.node_id,
            &config.callback_token,
        )?;
        let state_path = config.data_dir.join("node-state.json");
        let state: NodeState = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let (stop, _) = watch::channel(false);
        let gone = Arc::new(AtomicBool::new(false));
        let events = EventReporter::spawn(
            control.clone(),
            stop.clone(),
            gone.clone(),
            config.reconnect_initial,
            config.reconnect_max,
        );
        let deltas = DeltaSender::new(spawn_delta_forwarder(control.clone(), 4096));
        let shared = Arc::new(NodeShared {
            config: config.clone(),
            events,
            deltas: Some(deltas),
            clock,
            routes: routes.clone(),
            control: control.clone(),
        });
        let workspaces = Arc::new(Workspaces::new(shared));
        let resumed = workspaces.resume().await;
        if resumed > 0 {
            tracing::info!(resumed, "workspaces found from a previous run");
        }
        Ok(Self {
            config,
            control,
            routes,
            workspaces,
            stop,
            gone,
            state_path,
            state,
        })
    }

    /// A handle that stops [`run`](Self::run) when set to `true`.
    #[must_use]
    pub fn stop_handle(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// The node's workspaces.
    #[must_use]
    pub fn workspaces(&self) -> Arc<Workspaces> {
        self.workspaces.clone()
    }

    /// Registers, heartbeats and executes commands until the control plane stops the node
    /// (410), a shutdown command arrives or the stop handle is used. While the control
    /// plane is unreachable it retries with exponential backoff and says hello again.
    /// On return every agent is stopped; workspaces stay on disk.
    ///
    /// # Errors
    /// Only for local failures that make running impossible.
    pub async fn run(mut self) -> Result<NodeExit> {
        let mut stop_rx = self.stop.subscribe();
        let heartbeat = self.spawn_heartbeat();
        let mut backoff = self.config.reconnect_initial;
        let exit = 'outer: loop {
            if *stop_rx.borrow() {
                break self.stop_reason();
            }
            if !self.config.data_dir.exists() {
                break NodeExit::DataDirRemoved;
            }
            let hello = NodeHello {
                node_id: self.config.node_id,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                workspaces: self.workspaces.reports().await,
            };
            let answer = tokio::select! {
                r = self.control.hello(&hello) => r,
                _ = stop_rx.changed() => break self.stop_reason(),
            };
            match answer {
                Ok(()) => {
                    tracing::info!(node = %self.config.node_id, workspaces = hello.workspaces.len(), "registered with the control plane");
                    backoff = self.config.reconnect_initial;
                }
                Err(NodeError::Stopped) => break NodeExit::Stopped,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "control plane unreachable");
                    if wait_or_stop(&mut stop_rx, backoff).await {
                        break self.stop_reason();
                    }
                    backoff = next_backoff(backoff, self.config.reconnect_max);
                    continue;
                }
            }
            loop {
                if !self.config.data_dir.exists() {
                    break 'outer NodeExit::DataDirRemoved;
                }
                let poll = self
                    .control
                    .commands(self.state.last_seq, self.config.poll_wait);
                let batch = tokio::select! {
                    r = poll => r,
                    _ = stop_rx.changed() => break 'outer self.stop_reason(),
                };
                match batch {
                    Ok(batch) => {
                        for sequenced in batch.commands {
                            if sequenced.seq <= self.state.last_seq {
                                continue;
                            }
                            tracing::info!(seq = sequenced.seq, command = ?redacted(&sequenced.command), "command");
                            if let NodeCommand::Shutdown { reason } = sequenced.command {
                                self.acknowledge(sequenced.seq);
                                // Acknowledge it before leaving, so a restart does not repeat it.
                                let _ = self
                                    .control
                                    .commands(self.state.last_seq, Duration::ZERO)
                                    .await;
                                break 'outer NodeExit::Shutdown { reason };
                            }
                            // Acknowledged only once executed: a prompt is on disk by then.
                            self.workspaces
                                .execute(sequenced.seq, sequenced.command)
                                .await;
                            self.acknowledge(sequenced.seq);
                        }
                    }
                    Err(NodeError::Stopped) => break 'outer NodeExit::Stopped,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "command poll failed; reconnecting");
                        if wait_or_stop(&mut stop_rx, backoff).await {
                            break 'outer self.stop_reason();
                        }
                        backoff = next_backoff(backoff, self.config.reconnect_max);
                        continue 'outer;
                    }
                }
            }
        };
        heartbeat.abort();
        let _ = heartbeat.await;
        tracing::info!(?exit, "node stopping");
        self.workspaces.shutdown().await;
        Ok(exit)
    }

    /// Why the stop signal was raised: a 410 seen by the heartbeat or the event reporter,
    /// or the stop handle.
    fn stop_reason(&self) -> NodeExit {
        if self.gone.load(Ordering::Relaxed) {
            NodeExit::Stopped
        } else {
            NodeExit::Requested
        }
    }

    fn acknowledge(&mut self, seq: u64) {
        self.state.last_seq = seq;
        if let Err(e) = write_private_json(&self.state_path, &self.state) {
            tracing::error!(error = %e, "node state not saved");
        }
    }

    fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let control = self.control.clone();
        let routes = self.routes.clone();
        let workspaces = self.workspaces.clone();
        let stop = self.stop.clone();
        let gone = self.gone.clone();
        let node_id = self.config.node_id;
        let interval = self.config.heartbeat_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let heartbeat = Heartbeat {
                    node_id,
                    outbox: routes.report().await,
                    workspaces: workspaces.reports().await,
                };
                match control.heartbeat(&heartbeat).await {
                    Ok(()) => tracing::debug!(?heartbeat, "heartbeat"),
                    Err(NodeError::Stopped) => {
                        gone.store(true, Ordering::Relaxed);
                        stop.send_replace(true);
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
                }
            }
        })
    }
}

/// A command for logging: tokens and prompt texts left out.
fn redacted(command: &NodeCommand) -> String {
    match command {
        NodeCommand::CreateWorkspace {
            workspace_id,
            task_id,
            branch,
            ..
        } => format!("create_workspace {workspace_id} task={task_id:?} branch={branch:?}"),
        NodeCommand::Prompt { workspace_id, .. } => format!("prompt {workspace_id}"),
        NodeCommand::Cancel { workspace_id } => format!("cancel {workspace_id}"),
        NodeCommand::DestroyWorkspace { workspace_id } => format!("destroy {workspace_id}"),
        NodeCommand::Shutdown { reason } => format!("shutdown ({reason})"),
    }
}

fn next_backoff(current: Duration, max: Duration) -> Duration {
    (current * 2).min(max)
}

/// Sleeps `delay`; `true` when the stop signal came first.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
