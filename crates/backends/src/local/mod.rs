//! The `local` [`NodeProvider`]: a node is a `kiln-node` process on this machine.
//!
//! Each node gets a directory `<base>/<node id>/` holding `node.json` (its pid and labels,
//! so a restarted server finds it again), `data/` (the node's `KILN_NODE_DATA_DIR`) and
//! `node.log` (its stdout and stderr). The process runs in its own process group, so it
//! outlives a server restart and its agents are stopped with it: `destroy` sends `SIGTERM`
//! to the group, then `SIGKILL` after a grace period, and removes the directory.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kiln_core::ProviderError> {
//! use kiln_backends::local::{LocalConfig, LocalProvider};
//! use kiln_core::NodeProvider;
//! let provider = LocalProvider::new(LocalConfig::from_env());
//! for node in provider.list().await? {
//!     println!("{} {:?}", node.provider_id, node.status);
//! }
//! # Ok(()) }
//! ```

mod config;
mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::{
    LifecycleClock, NodeId, NodeProvider, NodeSpec, ProviderError, ProviderNodeStatus,
    ProvisionedNode, SystemClock, Timestamp, UserId,
};
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::sync::Mutex;

pub use config::{LocalConfig, default_node_binary};

/// The prefix of local provider ids (`local-<node id>`).
const ID_PREFIX: &str = "local-";

/// What `node.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeFile {
    node_id: NodeId,
    owner: UserId,
    pid: u32,
    created_at: Timestamp,
}

/// Nodes as local `kiln-node` processes.
#[derive(Debug)]
pub struct LocalProvider {
    config: LocalConfig,
    clock: Arc<dyn LifecycleClock>,
    /// Serializes create and destroy, so one node id never gets two processes.
    ops: Mutex<()>,
    /// Reapers of the processes this provider started, by node id.
    reapers: std::sync::Mutex<HashMap<NodeId, tokio::task::JoinHandle<()>>>,
}

impl LocalProvider {
    /// A provider with the given settings and the system clock.
    #[must_use]
    pub fn new(config: LocalConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A provider with an explicit clock (for `created_at`).
    #[must_use]
    pub fn with_clock(config: LocalConfig, clock: Arc<dyn LifecycleClock>) -> Self {
        Self {
            config,
            clock,
            ops: Mutex::new(()),
            reapers: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// The directory of node `node_id`.
    #[must_use]
    pub fn node_dir(&self, node_id: NodeId) -> PathBuf {
        self.config.base_dir.join(node_id.to_string())
    }

    fn provider_id(node_id: NodeId) -> String {
        format!("{ID_PREFIX}{node_id}")
    }

    fn parse_id(provider_id: &str) -> Option<NodeId> {
        provider_id.strip_prefix(ID_PREFIX)?.parse().ok()
    }

    async fn read_file(dir: &Path) -> Option<NodeFile> {
        let bytes = tokio::fs::read(dir.join("node.json")).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn describe(file: &NodeFile) -> ProvisionedNode {
        let running = process::is_node_alive(file.pid, file.node_id).await;
        ProvisionedNode {
            provider_id: Self::provider_id(file.node_id),
            node_id: Some(file.node_id),
            owner: Some(file.owner),
            status: if running {
                ProviderNodeStatus::Running
            } else {
                ProviderNodeStatus::Stopped
            },
            created_at: Some(file.created_at),
        }
    }

    async fn spawn(&self, spec: &NodeSpec, dir: &Path) -> Result<u32, ProviderError> {
        let data = dir.join("data");
        tokio::fs::create_dir_all(&data).await.map_err(io_error)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .map_err(io_error)?;
        let log_err = log.try_clone().map_err(io_error)?;
        let mut cmd = Command::new(&self.config.node_binary);
        cmd.envs(&self.config.env)
            .envs(&spec.bootstrap.env)
            .env("NODE_ID", spec.node_id.to_string())
            .env("CONTROL_PLANE_URL", &spec.bootstrap.control_plane_url)
            .env("CALLBACK_TOKEN", &spec.bootstrap.callback_token)
            .env("KILN_NODE_DATA_DIR", &data)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // Its own group: a Ctrl-C at the server does not reach it, and destroy stops
            // the node and its agents together.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ProviderError::Invalid {
                    code: "node_binary_not_found".into(),
                    message: format!(
                        "{}: {e} (set KILN_NODE_BIN)",
                        self.config.node_binary.display()
                    ),
                }
            } else {
                io_error(e)
            }
        })?;
        let pid = child.id().ok_or_else(|| ProviderError::Unavailable {
            message: "the node exited at once".into(),
        })?;
        // Reap it when it exits, so it never lingers as a zombie of the server.
        let reaper = tokio::spawn(async move {
            let _ = child.wait().await;
        });
        if let Some(old) = self
            .reapers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(spec.node_id, reaper)
        {
            old.abort();
        }
        Ok(pid)
    }
}

fn io_error(e: std::io::Error) -> ProviderError {
    ProviderError::Unavailable {
        message: e.to_string(),
    }
}

async fn write_file(dir: &Path, file: &NodeFile) -> Result<(), ProviderError> {
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| ProviderError::Unavailable {
        message: e.to_string(),
    })?;
    let tmp = dir.join("node.json.tmp");
    tokio::fs::write(&tmp, bytes).await.map_err(io_error)?;
    tokio::fs::rename(&tmp, dir.join("node.json"))
        .await
        .map_err(io_error)
}

#[async_trait]
impl NodeProvider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    async fn create(&self, spec: &NodeSpec) -> Result<ProvisionedNode, ProviderError> {
        let _guard = self.ops.lock().await;
        let dir = self.node_dir(spec.node_id);
        if let Some(existing) = Self::read_file(&dir).await {
            let described = Self::describe(&existing).await;
            if described.status == ProviderNodeStatus::Running {
                return Ok(described);
            }
            tracing::info!(node = %spec.node_id, "local node found stopped; starting it again");
        }
        tokio::fs::create_dir_all(&dir).await.map_err(io_error)?;
        let pid = self.spawn(spec, &dir).await?;
        let file = NodeFile {
            node_id: spec.node_id,
            owner: spec.owner,
            pid,
            created_at: self.clock.now(),
        };
        if let Err(e) = write_file(&dir, &file).await {
            process::stop_node(pid, spec.node_id, self.config.stop_grace).await;
            return Err(e);
        }
        tracing::info!(node = %spec.node_id, pid, dir = %dir.display(), "local node started");
        Ok(ProvisionedNode {
            provider_id: Self::provider_id(spec.node_id),
            node_id: Some(spec.node_id),
            owner: Some(spec.owner),
            status: ProviderNodeStatus::Running,
            created_at: Some(file.created_at),
        })
    }

    async fn get(&self, provider_id: &str) -> Result<Option<ProvisionedNode>, ProviderError> {
        let Some(node_id) = Self::parse_id(provider_id) else {
            return Ok(None);
        };
        match Self::read_file(&self.node_dir(node_id)).await {
            Some(file) => Ok(Some(Self::describe(&file).await)),
            None => Ok(None),
        }
    }

    async fn destroy(&self, provider_id: &str) -> Result<(), ProviderError> {
        let Some(node_id) = Self::parse_id(provider_id) else {
            return Ok(());
        };
        let _guard = self.ops.lock().await;
        let dir = self.node_dir(node_id);
        if let Some(file) = Self::read_file(&dir).await
            && process::is_node_alive(file.pid, node_id).await
        {
            process::stop_node(file.pid, node_id, self.config.stop_grace).await;
        }
        let reaper = self
            .reapers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&node_id);
        if let Some(reaper) = reaper {
            // The process is gone: collect it here, so it never lingers as a zombie (or is
            // left for init to reap when this process exits).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), reaper).await;
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {
                tracing::info!(node = %node_id, "local node destroyed");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn list(&self) -> Result<Vec<ProvisionedNode>, ProviderError> {
        let mut entries = match tokio::fs::read_dir(&self.config.base_dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(e)),
        };
        let mut nodes = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io_error)? {
            if let Some(file) = Self::read_file(&entry.path()).await {
                nodes.push(Self::describe(&file).await);
            }
        }
        nodes.sort_by(|a, b| a.provider_id.cmp(&b.provider_id));
        Ok(nodes)
    }
}
