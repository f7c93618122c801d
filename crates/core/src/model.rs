//! The domain: projects, tasks, chat sessions and messages, nodes and workspaces.
//!
//! All types serialize with camelCase field names, as the HTTP API and the node protocol
//! send them.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{MessageId, NodeId, ProjectId, SessionId, TaskId, UserId, WorkspaceId};
use crate::node::NodeState;
use crate::task::TaskStatus;

/// An error parsing one of the domain's string-valued enums.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}; expected one of: {expected}")]
pub struct ParseEnumError {
    /// Which enum was parsed.
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
    /// The accepted values, comma separated.
    pub expected: &'static str,
}

/// Declares a string-valued enum with `as_str`, `Display`, `FromStr` and serde in snake_case.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire form.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = crate::model::ParseEnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(crate::model::ParseEnumError {
                        kind: $kind,
                        value: s.to_owned(),
                        // ", a, b, c" without its leading ", ".
                        expected: &concat!($(", ", $text),+)[2..],
                    }),
                }
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(
    /// The size of the machine a task runs on. The platform default is [`VmSize::Small`];
    /// a project sets its own default and a task may override it.
    #[derive(Default, PartialOrd, Ord)]
    VmSize, "VM size" {
        /// 2 vCPU class machine (the platform default).
        #[default]
        Small => "small",
        /// 4 vCPU class machine.
        Medium => "medium",
        /// 8+ vCPU class machine.
        Large => "large",
    }
);

string_enum!(
    /// Who wrote a chat message.
    Role, "role" {
        /// The user (or the task description sent as the first prompt).
        User => "user",
        /// The agent's answer text.
        Assistant => "assistant",
        /// Kiln itself or the agent's plan and thoughts: notices, plans, drop reports.
        System => "system",
        /// A tool call by the agent and its progress.
        Tool => "tool",
    }
);

string_enum!(
    /// The state of a chat session.
    SessionStatus, "session status" {
        /// Created, no agent attached yet.
        Pending => "pending",
        /// An agent is working in it, or ready for the next prompt.
        Active => "active",
        /// Its agent finished; the conversation is read-only.
        Completed => "completed",
        /// Its run failed or was cancelled; the workspace may still be there for inspection.
        Stopped => "stopped",
        /// Closed by the user (a chat without a task); its workspace is gone.
        Closed => "closed",
    }
);

string_enum!(
    /// The state of a workspace on a node.
    WorkspaceStatus, "workspace status" {
        /// Asked for; the node is checking out the repository.
        Creating => "creating",
        /// The agent runs (or waits for the next prompt) in it.
        Running => "running",
        /// The agent stopped (failure or cancel); kept on the node for inspection.
        Stopped => "stopped",
        /// Being removed from the node.
        Destroying => "destroying",
        /// Removed from the node.
        Destroyed => "destroyed",
    }
);

/// A user of Kiln. Every project, node and credential belongs to one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// Display name (unique).
    pub name: String,
    /// When it was created.
    pub created_at: Timestamp,
}

/// A project: a repository and how its tasks run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    /// Its id.
    pub id: ProjectId,
    /// The user it belongs to.
    pub owner: UserId,
    /// Display name.
    pub name: String,
    /// The repository workspaces check out: a local path or any URL git accepts.
    pub repository_url: String,
    /// The VM size of its tasks unless a task overrides it.
    pub default_vm_size: VmSize,
    /// The node provider its tasks run on (`local`, `hetzner`, …); the server's default
    /// when the project was created without one.
    pub provider: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// A unit of work for an agent, with the outcome of its latest run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// The project it belongs to.
    pub project_id: ProjectId,
    /// The project's owner (denormalized so every read can filter by owner).
    pub owner: UserId,
    /// Short title.
    pub title: String,
    /// What the agent is asked to do; sent as the first prompt.
    pub description: String,
    /// Higher runs first and sorts first on the board.
    pub priority: i32,
    /// Where the task is in its run.
    pub status: TaskStatus,
    /// What is happening within the status right now (`provisioning node…` while a cold
    /// node boots); cleared whenever the status changes.
    #[serde(default)]
    pub status_detail: Option<String>,
    /// When `status` last changed (for the stuck-in-a-transient-state timeout).
    pub status_changed_at: Timestamp,
    /// The branch the work was committed to.
    pub output_branch: Option<String>,
    /// The pull request the agent opened, if any.
    pub pr_url: Option<String>,
    /// The agent's last answer on a clean finish.
    pub summary: Option<String>,
    /// Why the run failed.
    pub error_message: Option<String>,
    /// The chat session of the run.
    pub session_id: Option<SessionId>,
    /// The workspace of the current or last run.
    pub workspace_id: Option<WorkspaceId>,
    /// The node of the current or last run.
    pub node_id: Option<NodeId>,
    /// Overrides the project's default VM size.
    pub vm_size_override: Option<VmSize>,
    /// A hint on which agent to use (free text passed to the node).
    pub agent_hint: Option<String>,
    /// How many times the task has been started (1 on the first run).
    pub attempt: u32,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

impl Task {
    /// The VM size this task runs on: its override, else the project's default.
    #[must_use]
    pub fn effective_vm_size(&self, project: &Project) -> VmSize {
        self.vm_size_override.unwrap_or(project.default_vm_size)
    }

    /// The branch name the control plane asks for: `task/<id>`. The node appends `-2`,
    /// `-3`… when that branch already exists and reports the name it used.
    #[must_use]
    pub fn branch_name(&self) -> String {
        format!("task/{}", self.id)
    }
}

/// A conversation with an agent: the messages of one task run, or a chat without a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatSession {
    /// Its id.
    pub id: SessionId,
    /// The project it belongs to.
    pub project_id: ProjectId,
    /// The project's owner.
    pub owner: UserId,
    /// The task it belongs to, if any.
    pub task_id: Option<TaskId>,
    /// The workspace whose agent writes to it, if one is attached.
    pub workspace_id: Option<WorkspaceId>,
    /// Short topic for the sidebar; taken from the first user message when unset.
    pub topic: Option<String>,
    /// Where it is in its life.
    pub status: SessionStatus,
    /// For a chat without a task: the agent the user asked for, kept so a chat resumed after
    /// a restart (or given a new workspace) runs the same agent. `None`: the default agent.
    #[serde(default)]
    pub agent_hint: Option<String>,
    /// For a chat without a task: the VM size the user asked for, kept like `agent_hint`.
    /// `None`: the project's default size.
    #[serde(default)]
    pub vm_size: Option<VmSize>,
    /// How many messages it holds.
    pub message_count: i64,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed (a message arrived, its status changed).
    pub updated_at: Timestamp,
}

/// What a tool call did, for compact cards in the UI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolMeta {
    /// The tool's name or kind (`edit`, `read`, `execute`, …).
    pub tool: String,
    /// What it acted on: a path or a command.
    pub target: Option<String>,
    /// `pending`, `in_progress`, `completed` or `failed`.
    pub status: Option<String>,
}

/// One chat message, as produced by a node (or the control plane) and sent for storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    /// Its id, generated once by its producer; the store deduplicates on it.
    pub id: MessageId,
    /// The session it belongs to.
    pub session_id: SessionId,
    /// Who wrote it.
    pub role: Role,
    /// Its text (Markdown for assistant messages).
    pub content: String,
    /// Tool call details for `tool` messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolMeta>,
    /// The producer's per-session sequence number (the outbox's), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// When it was produced.
    pub created_at: Timestamp,
}

/// A message as the store holds it: with its position in the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    /// Position in its session, 1-based and contiguous in arrival order; the pagination cursor.
    pub cursor: i64,
    /// The message.
    #[serde(flatten)]
    pub message: ChatMessage,
}

/// A machine that hosts workspaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Its id (also its label at the provider).
    pub id: NodeId,
    /// The user it belongs to; nodes are never shared between users.
    pub owner: UserId,
    /// Its machine size.
    pub size: VmSize,
    /// Provider location (data center), if the provider has locations.
    pub location: Option<String>,
    /// Which provider made it (`local`, `hetzner`, …).
    pub provider: String,
    /// The provider's id for it, once created there.
    pub provider_id: Option<String>,
    /// Where it is in its lifecycle.
    pub state: NodeState,
    /// While warm: when it expires.
    pub warm_until: Option<Timestamp>,
    /// While active for a task: that task.
    pub claimed_by: Option<TaskId>,
    /// Provisioned by Kiln on demand (only those go warm and expire).
    pub auto_provisioned: bool,
    /// The last heartbeat received from its agent host.
    pub last_heartbeat_at: Option<Timestamp>,
    /// Why it failed, if it did.
    pub error_message: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// A checkout of a project's repository on a node, with one agent session in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    /// Its id (the callback token's scope).
    pub id: WorkspaceId,
    /// The node it runs on.
    pub node_id: NodeId,
    /// The owner of the node and project.
    pub owner: UserId,
    /// The project whose repository it checks out (none: the workspace persists nothing).
    pub project_id: Option<ProjectId>,
    /// The task it runs, if any (none for a chat without a task).
    pub task_id: Option<TaskId>,
    /// The chat session its messages go to.
    pub session_id: Option<SessionId>,
    /// The branch it works on, as the node reported it (may carry a `-2` suffix).
    pub branch: Option<String>,
    /// Where it is in its life.
    pub status: WorkspaceStatus,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// The longest topic a session gets from its first user message, in characters.
pub const TOPIC_MAX_CHARS: usize = 80;

/// The sidebar topic for a session whose first user message is `content`: its first
/// non-empty line, trimmed, cut to [`TOPIC_MAX_CHARS`] characters with an ellipsis.
/// Every store uses this, so all backends show the same topic.
#[must_use]
pub fn topic_from_message(content: &str) -> String {
    let line = content
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if line.chars().count() <= TOPIC_MAX_CHARS {
        return line.to_owned();
    }
    let mut topic: String = line.chars().take(TOPIC_MAX_CHARS - 1).collect();
    topic.push('…');
    topic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_and_reject_unknown_values() {
        for size in VmSize::ALL {
            assert_eq!(size.as_str().parse::<VmSize>().unwrap(), *size);
            assert_eq!(serde_json::to_string(size).unwrap(), format!("\"{size}\""));
        }
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), *role);
        }
        let err = "huge".parse::<VmSize>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid VM size \"huge\"; expected one of: small, medium, large"
        );
        assert!(serde_json::from_str::<Role>("\"robot\"").is_err());
    }

    #[test]
    fn platform_default_vm_size_is_small() {
        assert_eq!(VmSize::default(), VmSize::Small);
    }

    #[test]
    fn chat_message_json_uses_camel_case_and_omits_empty_fields() {
        let msg = ChatMessage {
            id: MessageId::new(),
            session_id: SessionId::new(),
            role: Role::Assistant,
            content: "hi".into(),
            tool: None,
            seq: None,
            created_at: crate::ManualClock::starting_at_epoch().now(),
        };
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["sessionId"], serde_json::json!(msg.session_id));
        assert_eq!(json["createdAt"], "2026-01-01T00:00:00Z");
        assert!(json.get("tool").is_none() && json.get("seq").is_none());
        let back: ChatMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back, msg);
    }
    use crate::LifecycleClock;

    #[test]
    fn topics_are_the_first_line_cut_to_length() {
        assert_eq!(
            topic_from_message("\n  Fix the login bug  \nDetails follow"),
            "Fix the login bug"
        );
        let long = "é".repeat(200);
        let topic = topic_from_message(&long);
        assert_eq!(topic.chars().count(), TOPIC_MAX_CHARS);
        assert!(topic.ends_with('…'));
        assert_eq!(topic_from_message(""), "");
    }
}
