//! Typed identifiers. Every id is a UUID; those whose creation order matters (everything
//! Kiln creates at run time) are UUIDv7, so sorting by id sorts by creation time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) id.
            #[must_use]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            #[must_use]
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(value: Uuid) -> Self {
                Self(value)
            }
        }
    };
}

define_id!(
    /// A user (the owner of projects, nodes and credentials).
    UserId
);
define_id!(
    /// A project: a repository plus its settings.
    ProjectId
);
define_id!(
    /// A task: one unit of work an agent runs.
    TaskId
);
define_id!(
    /// A chat session: the conversation with an agent (linked to a task or not).
    SessionId
);
define_id!(
    /// One chat message. Generated once by whoever creates the message and never changed,
    /// so every path that reports the message deduplicates to one row.
    MessageId
);
define_id!(
    /// A node: a machine (cloud server or local process) that hosts workspaces.
    NodeId
);
define_id!(
    /// A workspace: a checkout of the project's repository on a node, running one agent.
    WorkspaceId
);

/// Namespace for ids derived from other ids (UUIDv5), fixed forever.
const DERIVED_NAMESPACE: Uuid = Uuid::from_u128(0x6b69_6c6e_2d64_6572_6976_6564_2d69_6473);

impl MessageId {
    /// The id of a task's prompt message: derived from the task id, so the control plane
    /// (which stores the prompt when the task is created) and the node (which captures the
    /// prompt when it sends it to the agent) produce the same id and the prompt is stored once.
    #[must_use]
    pub fn for_task_prompt(task: TaskId) -> Self {
        Self(Uuid::new_v5(
            &DERIVED_NAMESPACE,
            format!("task-prompt:{}", task.0).as_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings_and_json() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<TaskId>(&json).unwrap(), id);
        assert!("not-a-uuid".parse::<TaskId>().is_err());
    }

    #[test]
    fn new_ids_sort_by_creation() {
        let ids: Vec<MessageId> = (0..100).map(|_| MessageId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn task_prompt_id_is_stable_and_distinct_per_task() {
        let a = TaskId::new();
        let b = TaskId::new();
        assert_eq!(MessageId::for_task_prompt(a), MessageId::for_task_prompt(a));
        assert_ne!(MessageId::for_task_prompt(a), MessageId::for_task_prompt(b));
    }
}
