//! The node protocol: what the control plane and a node's agent host (`kiln-node`) say to
//! each other. The node opens the connection (so it needs no inbound port) and authenticates
//! with its callback token; both sides share these types.

//!
//! ## Endpoints (all with `Authorization: Bearer <node callback token>`)
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /api/nodes/{nodeId}/hello` | [`NodeHello`] | `200 {}`; the node is ready |
//! | `POST /api/nodes/{nodeId}/heartbeat` | [`Heartbeat`] | `200 {}` |
//! | `GET /api/nodes/{nodeId}/commands?after={seq}&waitMs={ms}` | — | `200` [`CommandBatch`] (long poll: waits up to `waitMs` for a command with `seq > after`) |
//! | `POST /api/nodes/{nodeId}/events` | [`WorkspaceEvent`] | `200 {}` (idempotent) |
//! | `POST /api/nodes/{nodeId}/deltas` | [`DeltaBatch`] | `202 {}` (ephemeral, may be dropped) |
//! | `POST /api/workspaces/{workspaceId}/messages` | `{"messages": [ChatMessage…]}` with the *workspace's* token | `200 {"persisted", "duplicates"}` |
//!
//! Any of the node endpoints may answer `410 Gone` (`{"error": "node_stopped"}`): the node
//! was declared lost or destroyed and must stop everything; nothing runs twice. Passing
//! `after` = the highest `seq` processed acknowledges every command up to it.

use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, NodeId, ProjectId, SessionId, TaskId, WorkspaceId};
use crate::secret::Secret;

/// How a node's outbox is doing, carried in heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxReport {
    /// Messages waiting to be delivered.
    pub pending: u64,
    /// Age of the oldest waiting message, in milliseconds.
    pub oldest_pending_ms: u64,
    /// Messages delivered since the agent host started.
    pub delivered: u64,
    /// Messages dropped since the agent host started (rejected or overflowed).
    pub dropped: u64,
    /// The last delivery error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// A workspace as its node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceReport {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Whether its agent process is running.
    pub agent_running: bool,
}

/// Node → control plane: the agent host started (or restarted) and is ready for commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHello {
    /// The node.
    pub node_id: NodeId,
    /// The agent host's version.
    pub version: String,
    /// The workspaces it still has (after a restart they carry on).
    pub workspaces: Vec<WorkspaceReport>,
}

/// Node → control plane, periodically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// The node.
    pub node_id: NodeId,
    /// Its outbox.
    pub outbox: OutboxReport,
    /// Its workspaces.
    pub workspaces: Vec<WorkspaceReport>,
}

/// The first prompt of a workspace, with the id it must be stored under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prompt {
    /// The id of the user message that carries this prompt (for a task: derived from the
    /// task id, so the control plane's copy and the node's are one message).
    pub message_id: MessageId,
    /// The text.
    pub text: String,
}

/// Control plane → node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum NodeCommand {
    /// Check out the repository and start an agent in a new workspace.
    CreateWorkspace {
        /// The workspace.
        workspace_id: WorkspaceId,
        /// The project (none: the workspace persists nothing).
        project_id: Option<ProjectId>,
        /// The chat session its messages go to.
        session_id: Option<SessionId>,
        /// The task it runs, if any.
        task_id: Option<TaskId>,
        /// The repository to check out (a local path or any URL git accepts).
        repository_url: String,
        /// The branch to create (`task/<id>`); the node adds `-2`, `-3`… if it exists.
        branch: Option<String>,
        /// The first prompt, if the workspace starts with one.
        prompt: Option<Prompt>,
        /// The workspace's callback token, for its outbox's deliveries.
        callback_token: String,
        /// Which agent to run, if the task asked for one.
        agent_hint: Option<String>,
        /// The project's git token, if it has one: `kiln-node` hands it to git only through
        /// its credential helper, for clone and push. It travels only on this node's own
        /// command channel, never through the replicas' change feed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        git_token: Option<Secret>,
    },
    /// Send a follow-up prompt to the workspace's agent.
    Prompt {
        /// The workspace.
        workspace_id: WorkspaceId,
        /// The prompt.
        prompt: Prompt,
    },
    /// Cancel the agent's turn; the workspace is kept.
    Cancel {
        /// The workspace.
        workspace_id: WorkspaceId,
    },
    /// Stop the agent and remove the workspace.
    DestroyWorkspace {
        /// The workspace.
        workspace_id: WorkspaceId,
    },
    /// The node is no longer wanted (lost and replaced, or destroyed): stop everything.
    Shutdown {
        /// Why.
        reason: String,
    },
}

/// Node → control plane: what happened to a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum WorkspaceEvent {
    /// The checkout is done and the agent started.
    AgentStarted {
        /// The workspace.
        workspace_id: WorkspaceId,
        /// The branch it works on.
        branch: Option<String>,
    },
    /// The agent ended its turn cleanly; the work is committed (and pushed, unless `warning`).
    Completed {
        /// The workspace.
        workspace_id: WorkspaceId,
        /// The branch the work is on.
        branch: Option<String>,
        /// The pull request the agent reported.
        pr_url: Option<String>,
        /// The agent's last answer.
        summary: Option<String>,
        /// A non-fatal problem (for example the push failed).
        warning: Option<String>,
    },
    /// The agent failed, crashed or refused.
    Failed {
        /// The workspace.
        workspace_id: WorkspaceId,
        /// What went wrong.
        error: String,
    },
    /// The agent's turn was cancelled.
    Cancelled {
        /// The workspace.
        workspace_id: WorkspaceId,
    },
    /// The workspace was removed from the node.
    Destroyed {
        /// The workspace.
        workspace_id: WorkspaceId,
    },
}

/// Node → control plane, ephemeral: text an agent is streaming right now (not stored; the
/// stored message follows through the outbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDelta {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The session.
    pub session_id: SessionId,
    /// The message the text will be stored as.
    pub segment_id: MessageId,
    /// The text added since the previous delta.
    pub text: String,
}

/// A command with its position in the node's command queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequencedCommand {
    /// Position in the node's queue, increasing from 1.
    pub seq: u64,
    /// The command.
    pub command: NodeCommand,
}

/// The answer to a command poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandBatch {
    /// Commands after the acknowledged `seq`, oldest first (empty when the poll timed out).
    pub commands: Vec<SequencedCommand>,
}

/// A batch of live text deltas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaBatch {
    /// The deltas, in the order they were produced.
    pub deltas: Vec<MessageDelta>,
}

/// The error code a node endpoint answers (with `410 Gone`) to a node that must stop.
pub const NODE_STOPPED: &str = "node_stopped";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_tagged_by_type() {
        let cmd = NodeCommand::Cancel {
            workspace_id: WorkspaceId::new(),
        };
        let json = serde_json::to_value(&cmd).unwrap();
        assert_eq!(json["type"], "cancel");
        assert_eq!(serde_json::from_value::<NodeCommand>(json).unwrap(), cmd);
        assert!(serde_json::from_str::<NodeCommand>(r#"{"type":"format_disk"}"#).is_err());
    }
}
