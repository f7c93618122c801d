//! Settings of the local provider.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How local nodes are run. [`LocalConfig::from_env`] reads:
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `KILN_LOCAL_NODES_DIR` | where each node gets its directory (`<dir>/<node id>/`) | `./kiln-local-nodes` |
/// | `KILN_NODE_BIN` | the `kiln-node` binary | `kiln-node` next to the current executable (or one directory up, for cargo's `deps/`), else `kiln-node` on `PATH` |
/// | `KILN_LOCAL_STOP_GRACE_MS` | how long `destroy` waits after `SIGTERM` before `SIGKILL` | `5000` |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// The base directory holding one directory per node.
    pub base_dir: PathBuf,
    /// The `kiln-node` binary.
    pub node_binary: PathBuf,
    /// Grace period between `SIGTERM` and `SIGKILL`.
    pub stop_grace: Duration,
    /// Environment added to every node (before the node spec's own bootstrap env).
    pub env: BTreeMap<String, String>,
}

impl LocalConfig {
    /// Nodes under `base_dir`, the default binary and grace period.
    #[must_use]
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Self {
            base_dir: base_dir.into(),
            node_binary: default_node_binary(),
            stop_grace: Duration::from_millis(5_000),
            env: BTreeMap::new(),
        }
    }

    /// The settings from the environment (see the table above).
    #[must_use]
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// The settings from `vars`.
    #[must_use]
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let mut config = Self::new(
            vars.get("KILN_LOCAL_NODES_DIR")
                .filter(|v| !v.trim().is_empty())
                .map_or_else(|| PathBuf::from("kiln-local-nodes"), PathBuf::from),
        );
        if let Some(bin) = vars.get("KILN_NODE_BIN").filter(|v| !v.trim().is_empty()) {
            config.node_binary = PathBuf::from(bin);
        }
        if let Some(ms) = vars
            .get("KILN_LOCAL_STOP_GRACE_MS")
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            config.stop_grace = Duration::from_millis(ms);
        }
        config
    }
}

/// `kiln-node` next to the current executable, or one directory up (test binaries live in
/// `target/<profile>/deps`), else the bare name (looked up on `PATH`).
#[must_use]
pub fn default_node_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let dir = exe.parent()?.to_path_buf();
            [Some(dir.clone()), dir.parent().map(PathBuf::from)]
                .into_iter()
                .flatten()
                .map(|d| d.join("kiln-node"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("kiln-node"))
}
