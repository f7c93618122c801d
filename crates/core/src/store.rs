//! Persistence: the [`SessionStore`], [`TaskStore`] and [`NodeStore`] traits, and [`Store`],
//! all three at once.
//!
//! Every method takes `now` from the caller's [`LifecycleClock`](crate::LifecycleClock);
//! no store reads its own clock. Guarded transitions check what they change and return
//! [`StoreError::Conflict`] when the row was not in the expected state.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{NodeId, ProjectId, SessionId, TaskId, UserId, WorkspaceId};
use crate::model::{
    ChatMessage, ChatSession, Node, Project, SessionStatus, StoredMessage, Task, User, VmSize,
    Workspace, WorkspaceStatus,
};
use crate::node::NodeState;
use crate::secret_store::SecretStore;
use crate::task::TaskStatus;

/// A store failure, classified once at the store's boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row does not exist.
    #[error("{entity} {id} not found")]
    NotFound {
        /// What kind of row.
        entity: &'static str,
        /// Its id.
        id: String,
    },
    /// The row exists but not in the state the change requires (a guarded transition lost
    /// a race), or a unique key is taken.
    #[error("conflict: {message}")]
    Conflict {
        /// What conflicted.
        message: String,
    },
    /// The input cannot be stored as given.
    #[error("invalid input: {message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
    /// The database cannot be reached right now (connection loss, pool timeout): retryable.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
    },
    /// The store does not implement this operation.
    #[error("unsupported by this store: {message}")]
    Unsupported {
        /// Which operation.
        message: String,
    },
    /// Any other database failure.
    #[error("store error: {message}")]
    Backend {
        /// What the database said.
        message: String,
    },
}

impl StoreError {
    /// Whether the same call may succeed if retried.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// A [`StoreError::NotFound`] for `entity` with this id.
    pub fn not_found(entity: &'static str, id: impl fmt::Display) -> Self {
        Self::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    /// A [`StoreError::Conflict`] with this message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict {
            message: message.into(),
        }
    }
}

/// The result of an idempotent message insert.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsertOutcome {
    /// How many messages were new and are now stored.
    pub persisted: u64,
    /// How many were already stored (same message id) and were skipped.
    pub duplicates: u64,
    /// The newly stored messages, in the order they were stored, for live broadcast.
    pub stored: Vec<StoredMessage>,
}

/// Which page of a session's messages to read. Pages come back oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessagePage {
    /// The newest `limit` messages.
    Latest {
        /// Page size.
        limit: u32,
    },
    /// The newest `limit` messages with a cursor below `cursor` (scrolling back).
    Before {
        /// Exclusive upper bound.
        cursor: i64,
        /// Page size.
        limit: u32,
    },
    /// The oldest `limit` messages with a cursor above `cursor` (catch-up after reconnect).
    After {
        /// Exclusive lower bound.
        cursor: i64,
        /// Page size.
        limit: u32,
    },
}

/// Filters for listing chat sessions (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionQuery {
    /// Only this task's sessions.
    pub task_id: Option<TaskId>,
    /// At most this many (no limit when `None`).
    pub limit: Option<u32>,
}

/// A partial update of a chat session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionPatch {
    /// New status.
    pub status: Option<SessionStatus>,
    /// Attach (`Some(Some)`) or detach (`Some(None)`) a workspace.
    pub workspace_id: Option<Option<WorkspaceId>>,
    /// Set (`Some(Some)`) or clear the topic.
    pub topic: Option<Option<String>>,
}

/// Filters for listing tasks (priority high to low, then oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskQuery {
    /// Only these statuses (all when empty).
    pub statuses: Vec<TaskStatus>,
}

/// Filters for listing workspaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkspaceQuery {
    /// Only this owner's.
    pub owner: Option<UserId>,
    /// Only on this node.
    pub node_id: Option<NodeId>,
    /// Only this task's.
    pub task_id: Option<TaskId>,
    /// Only in these statuses (all when empty).
    pub statuses: Vec<WorkspaceStatus>,
}

/// Filters for listing nodes (oldest first). All given filters must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeQuery {
    /// Only this owner's.
    pub owner: Option<UserId>,
    /// Only in these states (all when empty).
    pub states: Vec<NodeState>,
    /// Only warm nodes whose deadline is at or before this time.
    pub warm_until_at_or_before: Option<Timestamp>,
    /// Only nodes created at or before this time.
    pub created_at_or_before: Option<Timestamp>,
    /// Only nodes whose state last changed at or before this time.
    pub updated_at_or_before: Option<Timestamp>,
    /// Only nodes whose last heartbeat (or creation, when none) is at or before this time.
    pub heartbeat_at_or_before: Option<Timestamp>,
    /// Only this provider's.
    pub provider: Option<String>,
}

/// The guard of [`NodeStore::begin_destroy_node`]: when may the node start destroying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyGuard {
    /// Warm expiry: only a node still warm whose deadline is at or before `now`.
    ExpiredWarm,
    /// Sweep or request: any node that exists and is not claimed by a task.
    Unclaimed,
    /// Lost node: any node that exists, claimed or not.
    Any,
}

/// A change any replica should hear of, for live updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreEvent {
    /// The owner of what changed (who may see it).
    pub owner: UserId,
    /// The project it belongs to, when it belongs to one.
    pub project_id: Option<ProjectId>,
    /// What changed.
    pub change: Change,
}

/// What changed, by id: listeners read the current row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Change {
    /// Messages were stored with cursors `first..=last` in the session.
    MessagesStored {
        /// The session.
        session_id: SessionId,
        /// First new cursor.
        first: i64,
        /// Last new cursor.
        last: i64,
    },
    /// A task changed.
    Task {
        /// The task.
        task_id: TaskId,
    },
    /// A chat session changed.
    Session {
        /// The session.
        session_id: SessionId,
    },
    /// A node changed.
    Node {
        /// The node.
        node_id: NodeId,
    },
    /// A workspace changed.
    Workspace {
        /// The workspace.
        workspace_id: WorkspaceId,
    },
    /// A command for a node's agent host, relayed to every replica so the one the node polls
    /// delivers it. Never shown to viewers (it carries the workspace's callback token). A
    /// prompt too large for the feed travels with empty text; receivers read it back from the
    /// store (the task's description, or the stored user message with the prompt's id).
    NodeCommand {
        /// The node.
        node_id: NodeId,
        /// The command (boxed: it is much larger than the other changes).
        command: Box<crate::protocol::NodeCommand>,
    },
    /// Text an agent is streaming right now, relayed from the replica its node talks to so
    /// viewers of every replica see it grow. Ephemeral: never stored, dropped under load.
    LiveText {
        /// The replica that received it from the node (it ignores its own copy).
        replica: uuid::Uuid,
        /// The workspace streaming.
        workspace_id: WorkspaceId,
        /// The session.
        session_id: SessionId,
        /// The message the text will be stored as.
        segment_id: crate::ids::MessageId,
        /// The text added.
        text: String,
    },
}

/// Projects, chat sessions and their messages, and the change feed.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug + 'static {
    /// Stores a new project.
    async fn create_project(&self, project: &Project) -> Result<(), StoreError>;
    /// Reads a project.
    async fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError>;
    /// An owner's projects, oldest first.
    async fn list_projects(&self, owner: UserId) -> Result<Vec<Project>, StoreError>;
    /// Replaces a project's editable fields (name, repository, default VM size, provider,
    /// updated_at).
    async fn update_project(&self, project: &Project) -> Result<(), StoreError>;
    /// Deletes a project with its tasks, sessions and messages. `false` if it did not exist.
    async fn delete_project(&self, id: ProjectId) -> Result<bool, StoreError>;

    /// Stores a new chat session.
    async fn create_session(&self, session: &ChatSession) -> Result<(), StoreError>;
    /// Reads a chat session.
    async fn get_session(&self, id: SessionId) -> Result<Option<ChatSession>, StoreError>;
    /// A project's sessions, newest first.
    async fn list_sessions(
        &self,
        project: ProjectId,
        query: &SessionQuery,
    ) -> Result<Vec<ChatSession>, StoreError>;
    /// Chat sessions without a task, of every project and owner, whose status is one of
    /// `statuses`, oldest first: the task runner's scan for chats a stopped process left
    /// starting. The default answers [`StoreError::Unsupported`]; every Kiln store
    /// implements it.
    async fn list_chats_by_status(
        &self,
        statuses: &[SessionStatus],
    ) -> Result<Vec<ChatSession>, StoreError> {
        let _ = statuses;
        Err(StoreError::Unsupported {
            message: "list_chats_by_status".to_owned(),
        })
    }
    /// Changes a session's status, workspace or topic; returns the updated session.
    async fn update_session(
        &self,
        id: SessionId,
        patch: &SessionPatch,
        now: Timestamp,
    ) -> Result<ChatSession, StoreError>;

    /// Stores messages idempotently by message id; each message's session must exist
    /// ([`StoreError::NotFound`] otherwise, and nothing is stored). New messages get the next
    /// cursors of their session in input order; the session's message count and `updated_at`
    /// move with them, and its topic is taken from its first user message when unset.
    async fn insert_messages(
        &self,
        messages: &[ChatMessage],
        now: Timestamp,
    ) -> Result<InsertOutcome, StoreError>;
    /// Reads a page of a session's messages, oldest first.
    async fn list_messages(
        &self,
        session: SessionId,
        page: MessagePage,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// Replaces a stored message's text (the prompt of a draft task that was edited).
    async fn update_message_content(
        &self,
        id: crate::ids::MessageId,
        content: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Announces a change to every subscriber, in this process and (for a shared database)
    /// in other server replicas. Stores announce stored messages themselves.
    async fn publish(&self, event: &StoreEvent) -> Result<(), StoreError>;
    /// Every change announced from now on, across replicas sharing the database.
    async fn subscribe(&self) -> Result<BoxStream<'static, StoreEvent>, StoreError>;
}

/// Tasks and workspaces.
#[async_trait]
pub trait TaskStore: Send + Sync + fmt::Debug + 'static {
    /// Stores a new task.
    async fn create_task(&self, task: &Task) -> Result<(), StoreError>;
    /// Reads a task.
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError>;
    /// A project's tasks, highest priority first, then oldest first.
    async fn list_tasks(
        &self,
        project: ProjectId,
        query: &TaskQuery,
    ) -> Result<Vec<Task>, StoreError>;
    /// Writes `task` only if its stored status is still `expected` (compare-and-set), so two
    /// writers can never both move one task. [`StoreError::Conflict`] otherwise.
    async fn update_task(&self, task: &Task, expected: TaskStatus) -> Result<(), StoreError>;
    /// Deletes a task (not its session). `false` if it did not exist.
    async fn delete_task(&self, id: TaskId) -> Result<bool, StoreError>;
    /// Tasks of every project and owner whose status is one of `statuses`, oldest status
    /// change first: the task runner's scan for tasks held too long in a transient state.
    /// The default answers [`StoreError::Unsupported`]; every Kiln store implements it.
    async fn list_tasks_by_status(&self, statuses: &[TaskStatus]) -> Result<Vec<Task>, StoreError> {
        let _ = statuses;
        Err(StoreError::Unsupported {
            message: "list_tasks_by_status".to_owned(),
        })
    }

    /// Stores a new workspace.
    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError>;
    /// Reads a workspace.
    async fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>, StoreError>;
    /// Replaces a workspace's branch, status and updated_at.
    async fn update_workspace(&self, workspace: &Workspace) -> Result<(), StoreError>;
    /// Workspaces matching the query, oldest first.
    async fn list_workspaces(&self, query: &WorkspaceQuery) -> Result<Vec<Workspace>, StoreError>;
}

/// Nodes, with the atomic claim and the guarded lifecycle transitions.
#[async_trait]
pub trait NodeStore: Send + Sync + fmt::Debug + 'static {
    /// Stores a new node.
    async fn insert_node(&self, node: &Node) -> Result<(), StoreError>;
    /// Reads a node.
    async fn get_node(&self, id: NodeId) -> Result<Option<Node>, StoreError>;
    /// Nodes matching the query, oldest first.
    async fn list_nodes(&self, query: &NodeQuery) -> Result<Vec<Node>, StoreError>;

    /// Atomically claims the oldest-warm node of `owner`, `size` and `provider` (and
    /// `location`, when given) whose deadline is after `now`: marks it active and claimed by `task`. Never
    /// hands one node to two claimers, even across server replicas.
    async fn claim_warm_node(
        &self,
        owner: UserId,
        size: VmSize,
        provider: &str,
        location: Option<&str>,
        task: TaskId,
        now: Timestamp,
    ) -> Result<Option<Node>, StoreError>;
    /// Records the provider's id for a node.
    async fn set_node_provider_id(
        &self,
        id: NodeId,
        provider_id: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Provisioning → active (its agent host reported ready). Idempotent when already active.
    async fn mark_node_ready(&self, id: NodeId, now: Timestamp) -> Result<Node, StoreError>;
    /// Active → warm until `warm_until`, unclaimed.
    async fn release_node(
        &self,
        id: NodeId,
        warm_until: Timestamp,
        now: Timestamp,
    ) -> Result<Node, StoreError>;
    /// Starts destroying a node if `guard` holds; returns the node as it was before.
    /// Calling it on a node already destroying succeeds (a retry of the provider delete).
    async fn begin_destroy_node(
        &self,
        id: NodeId,
        guard: DestroyGuard,
        now: Timestamp,
    ) -> Result<Node, StoreError>;
    /// Destroying → destroyed (the provider confirmed the delete).
    async fn mark_node_destroyed(&self, id: NodeId, now: Timestamp) -> Result<(), StoreError>;
    /// Provisioning, active or warm → failed with `reason`; returns the node as it was before
    /// (so the caller can fail the task that had claimed it).
    async fn mark_node_failed(
        &self,
        id: NodeId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Node, StoreError>;
    /// Records a heartbeat from the node's agent host.
    async fn record_heartbeat(&self, id: NodeId, now: Timestamp) -> Result<(), StoreError>;
}

/// A bearer credential of a user: an API token or a browser session. Only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiToken {
    /// Its id (shown in listings, used to revoke it).
    pub id: uuid::Uuid,
    /// Whose it is.
    pub user_id: UserId,
    /// SHA-256 of the secret, hex. The secret itself is shown once and never stored.
    pub token_hash: String,
    /// What it is for (`cli`, `browser`, `first-run`…).
    pub name: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
}

/// Users and their tokens.
#[async_trait]
pub trait UserStore: Send + Sync + fmt::Debug + 'static {
    /// Stores a new user; [`StoreError::Conflict`] if the name is taken.
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;
    /// Reads a user.
    async fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Reads a user by name.
    async fn get_user_by_name(&self, name: &str) -> Result<Option<User>, StoreError>;
    /// Stores a new token.
    async fn create_api_token(&self, token: &ApiToken) -> Result<(), StoreError>;
    /// Finds a token by the hash of its secret.
    async fn find_api_token(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError>;
    /// Revokes a token. `false` if it did not exist.
    async fn delete_api_token(&self, id: uuid::Uuid) -> Result<bool, StoreError>;
    /// A user's tokens, newest first.
    async fn list_api_tokens(&self, user: UserId) -> Result<Vec<ApiToken>, StoreError>;
}

/// Everything a control plane stores: [`SessionStore`] + [`TaskStore`] + [`NodeStore`] +
/// [`UserStore`] + [`SecretStore`].
pub trait Store: SessionStore + TaskStore + NodeStore + UserStore + SecretStore {}
impl<T: SessionStore + TaskStore + NodeStore + UserStore + SecretStore + ?Sized> Store for T {}

macro_rules! forward {
    ($($trait:ident { $(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* })*) => {
        $(
            #[async_trait]
            impl<T: $trait + ?Sized> $trait for Arc<T> {
                $(
                    async fn $name(&self $(, $arg: $ty)*) -> $ret {
                        (**self).$name($($arg),*).await
                    }
                )*
            }
        )*
    };
}

forward! {
    SessionStore {
        fn create_project(&self, project: &Project) -> Result<(), StoreError>;
        fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError>;
        fn list_projects(&self, owner: UserId) -> Result<Vec<Project>, StoreError>;
        fn update_project(&self, project: &Project) -> Result<(), StoreError>;
        fn delete_project(&self, id: ProjectId) -> Result<bool, StoreError>;
        fn create_session(&self, session: &ChatSession) -> Result<(), StoreError>;
        fn get_session(&self, id: SessionId) -> Result<Option<ChatSession>, StoreError>;
        fn list_sessions(&self, project: ProjectId, query: &SessionQuery) -> Result<Vec<ChatSession>, StoreError>;
        fn list_chats_by_status(&self, statuses: &[SessionStatus]) -> Result<Vec<ChatSession>, StoreError>;
        fn update_session(&self, id: SessionId, patch: &SessionPatch, now: Timestamp) -> Result<ChatSession, StoreError>;
        fn insert_messages(&self, messages: &[ChatMessage], now: Timestamp) -> Result<InsertOutcome, StoreError>;
        fn list_messages(&self, session: SessionId, page: MessagePage) -> Result<Vec<StoredMessage>, StoreError>;
        fn update_message_content(&self, id: crate::ids::MessageId, content: &str, now: Timestamp) -> Result<(), StoreError>;
        fn publish(&self, event: &StoreEvent) -> Result<(), StoreError>;
        fn subscribe(&self) -> Result<BoxStream<'static, StoreEvent>, StoreError>;
    }
    TaskStore {
        fn create_task(&self, task: &Task) -> Result<(), StoreError>;
        fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError>;
        fn list_tasks(&self, project: ProjectId, query: &TaskQuery) -> Result<Vec<Task>, StoreError>;
        fn update_task(&self, task: &Task, expected: TaskStatus) -> Result<(), StoreError>;
        fn delete_task(&self, id: TaskId) -> Result<bool, StoreError>;
        fn list_tasks_by_status(&self, statuses: &[TaskStatus]) -> Result<Vec<Task>, StoreError>;
        fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError>;
        fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>, StoreError>;
        fn update_workspace(&self, workspace: &Workspace) -> Result<(), StoreError>;
        fn list_workspaces(&self, query: &WorkspaceQuery) -> Result<Vec<Workspace>, StoreError>;
    }
    UserStore {
        fn create_user(&self, user: &User) -> Result<(), StoreError>;
        fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError>;
        fn get_user_by_name(&self, name: &str) -> Result<Option<User>, StoreError>;
        fn create_api_token(&self, token: &ApiToken) -> Result<(), StoreError>;
        fn find_api_token(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError>;
        fn delete_api_token(&self, id: uuid::Uuid) -> Result<bool, StoreError>;
        fn list_api_tokens(&self, user: UserId) -> Result<Vec<ApiToken>, StoreError>;
    }
    NodeStore {
        fn insert_node(&self, node: &Node) -> Result<(), StoreError>;
        fn get_node(&self, id: NodeId) -> Result<Option<Node>, StoreError>;
        fn list_nodes(&self, query: &NodeQuery) -> Result<Vec<Node>, StoreError>;
        fn claim_warm_node(&self, owner: UserId, size: VmSize, provider: &str, location: Option<&str>, task: TaskId, now: Timestamp) -> Result<Option<Node>, StoreError>;
        fn set_node_provider_id(&self, id: NodeId, provider_id: &str, now: Timestamp) -> Result<(), StoreError>;
        fn mark_node_ready(&self, id: NodeId, now: Timestamp) -> Result<Node, StoreError>;
        fn release_node(&self, id: NodeId, warm_until: Timestamp, now: Timestamp) -> Result<Node, StoreError>;
        fn begin_destroy_node(&self, id: NodeId, guard: DestroyGuard, now: Timestamp) -> Result<Node, StoreError>;
        fn mark_node_destroyed(&self, id: NodeId, now: Timestamp) -> Result<(), StoreError>;
        fn mark_node_failed(&self, id: NodeId, reason: &str, now: Timestamp) -> Result<Node, StoreError>;
        fn record_heartbeat(&self, id: NodeId, now: Timestamp) -> Result<(), StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_traits_are_object_safe() {
        fn takes(
            _: Option<Arc<dyn Store>>,
            _: Option<Arc<dyn SessionStore>>,
            _: Option<Arc<dyn TaskStore>>,
            _: Option<Arc<dyn NodeStore>>,
            _: Option<Arc<dyn UserStore>>,
        ) {
        }
        takes(None, None, None, None, None);
    }
}
