//! The crate's error type.

use std::time::Duration;

use kiln_core::task::TransitionError;
use kiln_core::{NodeId, ProviderError, SessionId, StoreError, TaskId, WorkspaceId};

use crate::controller::ControllerError;

/// What went wrong in the pool or the runner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The provider refused to create a node; carries the provider's own message.
    #[error("provisioning node {node} failed: {source}")]
    Provisioning {
        /// The node row that was created for it (now failed).
        node: NodeId,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
    /// A new node did not report ready in time (it is failed and destroyed).
    #[error("node {node} did not report ready within {} s", .waited.as_secs())]
    ProvisioningTimedOut {
        /// The node.
        node: NodeId,
        /// How long the pool waited.
        waited: Duration,
    },
    /// A node being waited for left provisioning without becoming ready.
    #[error("node {node} failed while starting: {reason}")]
    NodeFailed {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The provider failed on a call other than create.
    #[error("provider error{}: {source}", .node.map(|n| format!(" on node {n}")).unwrap_or_default())]
    Provider {
        /// The node, when the call was about one.
        node: Option<NodeId>,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
    /// No provider of this name is configured (a project or node names one the pool does
    /// not know).
    #[error("no node provider named {name:?} is configured")]
    UnknownProvider {
        /// The name asked for.
        name: String,
    },
    /// The workspace controller failed.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The task cannot take this action in its current state.
    #[error("task {task}: {source}")]
    InvalidTransition {
        /// The task.
        task: TaskId,
        /// The refusal.
        #[source]
        source: TransitionError,
    },
    /// A row the action needs does not exist.
    #[error("{entity} {id} not found")]
    NotFound {
        /// What kind of row.
        entity: &'static str,
        /// Its id.
        id: String,
    },
    /// The session belongs to a task: it is not a chat the user can close (cancel the task).
    #[error("session {session} belongs to a task; cancel the task instead of closing its session")]
    NotAChat {
        /// The session.
        session: SessionId,
    },
    /// The workspace is not a kept one that can be discarded: its task still runs in it
    /// (cancel the task first), or it belongs to a chat (close the chat instead).
    #[error("workspace {workspace} cannot be discarded: {reason}")]
    WorkspaceInUse {
        /// The workspace.
        workspace: WorkspaceId,
        /// Why, for the user.
        reason: String,
    },
    /// Another writer kept moving the task; the action was not applied.
    #[error("task {task} kept changing under a concurrent writer")]
    Contended {
        /// The task.
        task: TaskId,
    },
}

impl Error {
    /// Whether trying the same call again may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Provisioning { source, .. } | Self::Provider { source, .. } => {
                source.is_retryable()
            }
            Self::Controller(e) => e.is_retryable(),
            Self::Contended { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn not_found(entity: &'static str, id: impl std::fmt::Display) -> Self {
        Self::NotFound {
            entity,
            id: id.to_string(),
        }
    }
}
