//! Settings of the agent host, each with a default and an environment variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_core::NodeId;

use crate::error::{NodeError, Result};

/// How `kiln-node` runs. [`NodeConfig::from_env`] reads it from the environment:
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `NODE_ID` | this node's id (UUID) | required |
/// | `CONTROL_PLANE_URL` | where the control plane listens | required |
/// | `CALLBACK_TOKEN` | the node's bearer token | required |
/// | `KILN_NODE_DATA_DIR` | workspaces, outboxes and state | `./kiln-node-data` |
/// | `KILN_AGENT_COMMAND` | the ACP agent to run (a command line) | `kiln-demo-agent` next to this executable |
/// | `KILN_AGENT_COMMAND_<HINT>` | the agent for tasks whose agent hint is `<hint>` (upper-cased, `-` → `_`) | unset: `KILN_AGENT_COMMAND` |
/// | `KILN_HEARTBEAT_INTERVAL_MS` | time between heartbeats | `15000` |
/// | `KILN_POLL_WAIT_MS` | how long one command long-poll may wait at the server | `25000` |
/// | `KILN_RECONNECT_INITIAL_MS` / `KILN_RECONNECT_MAX_MS` | backoff while the control plane is down | `500` / `30000` |
/// | `KILN_CANCEL_GRACE_MS` | how long an agent gets to end a cancelled turn before it is killed | `10000` |
/// | `KILN_DESTROY_DRAIN_MS` | how long destroying a workspace (or stopping the node) waits for undelivered messages | `10000` |
/// | `KILN_RESUME_INTERRUPTED_TURNS` | how many times one agent turn is continued after `kiln-node` restarted during it (the agent is started again in the same checkout), before the turn fails; `0`: fail at once | `2` |
/// | `KILN_NODE_EXE` | the `kiln-node` executable git runs as its credential helper ([`crate::credentials`]) | this executable when it is `kiln-node`, else `kiln-node` next to it, else from `PATH` |
///
/// Agent processes inherit the node's environment (without `CALLBACK_TOKEN`), so settings
/// such as an agent's API key or the demo agent's `KILN_DEMO_*` are set on the node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node.
    pub node_id: NodeId,
    /// The control plane's base URL (no trailing slash needed).
    pub control_plane_url: String,
    /// The node's callback token.
    pub callback_token: String,
    /// Where workspaces, outboxes and the node's state live.
    pub data_dir: PathBuf,
    /// The default agent command line.
    pub agent_command: String,
    /// Agent command lines by agent hint (lower-case hint → command).
    pub agent_commands_by_hint: BTreeMap<String, String>,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Long-poll wait asked of the server.
    pub poll_wait: Duration,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Grace period for a cancelled turn.
    pub cancel_grace: Duration,
    /// How long destroy waits for undelivered messages.
    pub destroy_drain: Duration,
    /// Extra environment for agent processes (embedding; the binary passes its own
    /// environment through inheritance).
    pub agent_env: BTreeMap<String, String>,
    /// The `kiln-node` executable git runs as its credential helper.
    pub git_credential_helper: PathBuf,
    /// How many times one turn interrupted by a restart of the node is continued (0: the
    /// turn fails, as a host crash always did).
    pub resume_interrupted_turns: u32,
}

impl NodeConfig {
    /// A configuration with every optional setting at its default.
    #[must_use]
    pub fn new(
        node_id: NodeId,
        control_plane_url: impl Into<String>,
        callback_token: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            node_id,
            control_plane_url: control_plane_url.into().trim_end_matches('/').to_owned(),
            callback_token: callback_token.into(),
            data_dir: data_dir.into(),
            agent_command: default_agent_command(),
            agent_commands_by_hint: BTreeMap::new(),
            heartbeat_interval: Duration::from_millis(15_000),
            poll_wait: Duration::from_millis(25_000),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_millis(30_000),
            cancel_grace: Duration::from_millis(10_000),
            destroy_drain: Duration::from_millis(10_000),
            agent_env: BTreeMap::new(),
            git_credential_helper: default_node_exe(),
            resume_interrupted_turns: 2,
        }
    }

    /// Reads the configuration from the process environment (see the table above).
    ///
    /// # Errors
    /// [`NodeError::InvalidConfig`] when a required variable is missing or a value is malformed.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the configuration from `vars` (what [`from_env`](Self::from_env) does, testable).
    ///
    /// # Errors
    /// [`NodeError::InvalidConfig`] when a required variable is missing or a value is malformed.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let required = |name: &str| {
            vars.get(name)
                .filter(|v| !v.trim().is_empty())
                .cloned()
                .ok_or_else(|| NodeError::InvalidConfig(format!("{name} is not set")))
        };
        let node_id = required("NODE_ID")?
            .parse::<NodeId>()
            .map_err(|e| NodeError::InvalidConfig(format!("NODE_ID: {e}")))?;
        let mut config = Self::new(
            node_id,
            required("CONTROL_PLANE_URL")?,
            required("CALLBACK_TOKEN")?,
            vars.get("KILN_NODE_DATA_DIR")
                .cloned()
                .unwrap_or_else(|| "kiln-node-data".into()),
        );
        if let Some(cmd) = vars
            .get("KILN_AGENT_COMMAND")
            .filter(|c| !c.trim().is_empty())
        {
            config.agent_command.clone_from(cmd);
        }
        for (name, value) in &vars {
            if let Some(hint) = name.strip_prefix("KILN_AGENT_COMMAND_") {
                config
                    .agent_commands_by_hint
                    .insert(hint.to_ascii_lowercase().replace('_', "-"), value.clone());
            }
        }
        let millis = |name: &str, into: &mut Duration| -> Result<()> {
            if let Some(v) = vars.get(name) {
                let ms: u64 = v
                    .trim()
                    .parse()
                    .map_err(|e| NodeError::InvalidConfig(format!("{name}={v:?}: {e}")))?;
                *into = Duration::from_millis(ms);
            }
            Ok(())
        };
        if let Some(exe) = vars.get("KILN_NODE_EXE").filter(|v| !v.trim().is_empty()) {
            config.git_credential_helper = PathBuf::from(exe.trim());
        }
        millis("KILN_HEARTBEAT_INTERVAL_MS", &mut config.heartbeat_interval)?;
        millis("KILN_POLL_WAIT_MS", &mut config.poll_wait)?;
        millis("KILN_RECONNECT_INITIAL_MS", &mut config.reconnect_initial)?;
        millis("KILN_RECONNECT_MAX_MS", &mut config.reconnect_max)?;
        millis("KILN_CANCEL_GRACE_MS", &mut config.cancel_grace)?;
        millis("KILN_DESTROY_DRAIN_MS", &mut config.destroy_drain)?;
        if let Some(v) = vars.get("KILN_RESUME_INTERRUPTED_TURNS") {
            config.resume_interrupted_turns = v.trim().parse().map_err(|e| {
                NodeError::InvalidConfig(format!("KILN_RESUME_INTERRUPTED_TURNS={v:?}: {e}"))
            })?;
        }
        Ok(config)
    }

    /// The agent command for a task with `hint` (falls back to the default command).
    #[must_use]
    pub fn agent_command_for(&self, hint: Option<&str>) -> &str {
        hint.map(|h| h.trim().to_ascii_lowercase().replace('_', "-"))
            .and_then(|h| self.agent_commands_by_hint.get(&h))
            .map_or(self.agent_command.as_str(), String::as_str)
    }

    /// Where workspaces live.
    #[must_use]
    pub fn workspaces_dir(&self) -> PathBuf {
        self.data_dir.join("workspaces")
    }

    /// Where the short-lived credential sockets live (mode 0700).
    #[must_use]
    pub fn runtime_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
}

/// This executable when it is `kiln-node`, else `kiln-node` next to it (or one directory
/// up), else plain `kiln-node` from `PATH`.
#[must_use]
pub fn default_node_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .filter(|exe| exe.file_stem().is_some_and(|s| s == "kiln-node"))
        .or_else(|| sibling_binary("kiln-node"))
        .unwrap_or_else(|| PathBuf::from("kiln-node"))
}

/// The `kiln-demo-agent` binary next to the current executable (or, for test binaries in
/// `target/*/deps`, one directory up), else plain `kiln-demo-agent` from `PATH`.
#[must_use]
pub fn default_agent_command() -> String {
    sibling_binary("kiln-demo-agent")
        .map_or_else(|| "kiln-demo-agent".to_owned(), |p| p.display().to_string())
}

/// Finds `name` next to the current executable or one directory up (cargo's `deps/`).
#[must_use]
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d: &Path| d.join(name))
        .find(|p| p.is_file())
}

/// Splits a command line into words: whitespace separates, single and double quotes group,
/// backslash escapes the next character outside single quotes.
///
/// ```
/// use kiln_node::config::split_command;
/// assert_eq!(
///     split_command(r#"npx -y "@zed-industries/claude-code-acp" --flag='a b'"#).unwrap(),
///     vec!["npx", "-y", "@zed-industries/claude-code-acp", "--flag=a b"],
/// );
/// assert!(split_command("unterminated 'quote").is_err());
/// ```
///
/// # Errors
/// [`NodeError::InvalidConfig`] for an unterminated quote or an empty command.
pub fn split_command(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => word.push(c),
            (_, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                    in_word = true;
                }
            }
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(NodeError::InvalidConfig(format!(
            "unterminated quote in command {line:?}"
        )));
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err(NodeError::InvalidConfig("empty agent command".into()));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn required_settings_are_checked_and_defaults_apply() {
        let err = NodeConfig::from_vars(vars(&[("CONTROL_PLANE_URL", "http://x")])).unwrap_err();
        assert!(err.to_string().contains("NODE_ID"), "{err}");
        let id = NodeId::new();
        let config = NodeConfig::from_vars(vars(&[
            ("NODE_ID", &id.to_string()),
            ("CONTROL_PLANE_URL", "http://127.0.0.1:8080/"),
            ("CALLBACK_TOKEN", "t"),
            ("KILN_HEARTBEAT_INTERVAL_MS", "250"),
            (
                "KILN_AGENT_COMMAND_CLAUDE_CODE",
                "npx @zed-industries/claude-code-acp",
            ),
        ]))
        .unwrap();
        assert_eq!(config.node_id, id);
        assert_eq!(config.control_plane_url, "http://127.0.0.1:8080");
        assert_eq!(config.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(config.poll_wait, Duration::from_millis(25_000));
        assert_eq!(config.resume_interrupted_turns, 2);
        assert_eq!(
            config.agent_command_for(Some("Claude-Code")),
            "npx @zed-industries/claude-code-acp"
        );
        assert_eq!(
            config.agent_command_for(Some("other")),
            config.agent_command
        );
        assert!(
            NodeConfig::from_vars(vars(&[
                ("NODE_ID", &id.to_string()),
                ("CONTROL_PLANE_URL", "http://x"),
                ("CALLBACK_TOKEN", "t"),
                ("KILN_POLL_WAIT_MS", "soon"),
            ]))
            .is_err()
        );
        let never = NodeConfig::from_vars(vars(&[
            ("NODE_ID", &id.to_string()),
            ("CONTROL_PLANE_URL", "http://x"),
            ("CALLBACK_TOKEN", "t"),
            ("KILN_RESUME_INTERRUPTED_TURNS", "0"),
        ]))
        .unwrap();
        assert_eq!(never.resume_interrupted_turns, 0);
        assert!(
            NodeConfig::from_vars(vars(&[
                ("NODE_ID", &id.to_string()),
                ("CONTROL_PLANE_URL", "http://x"),
                ("CALLBACK_TOKEN", "t"),
                ("KILN_RESUME_INTERRUPTED_TURNS", "-1"),
            ]))
            .is_err()
        );
    }
}
