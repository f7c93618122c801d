//! # kiln-core
//!
//! The heart of Kiln's SDK: the domain (projects, tasks, chat sessions and messages, nodes,
//! workspaces), the task-run and node-lifecycle state machines as pure functions, and the
//! four traits every backend implements:
//!
//! | trait | what it abstracts | implementations |
//! |---|---|---|
//! | [`MessageSink`] | where a node's chat messages are delivered | HTTP (kiln-outbox), a store, test sinks |
//! | [`NodeProvider`] | where nodes come from | Hetzner, local processes, [`memory::MemoryProvider`] |
//! | [`SessionStore`] (+ [`TaskStore`], [`NodeStore`], [`UserStore`], [`SecretStore`]) | persistence | SQLite, PostgreSQL (kiln-backends), [`memory::MemoryStore`] |
//! | [`LifecycleClock`] | time | [`SystemClock`], [`ManualClock`] |
//!
//! Library code never reads the wall clock and never decides an outcome outside the state
//! machines: a runner asks [`task::transition`] or [`node::transition`] what to do and does it.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use kiln_core::memory::MemoryStore;
//! use kiln_core::{LifecycleClock, ManualClock, NodeStore, VmSize, UserId, TaskId};
//!
//! let store = MemoryStore::new();
//! let clock = ManualClock::starting_at_epoch();
//! // No warm node yet: the claim finds nothing, so a pool would provision one.
//! let claimed = store
//!     .claim_warm_node(UserId::new(), VmSize::Small, "local", None, TaskId::new(), clock.now())
//!     .await?;
//! assert!(claimed.is_none());
//! # Ok::<(), kiln_core::StoreError>(())
//! # }).unwrap();
//! ```
//!
//! ## Features
//!
//! - `test-support`: the [conformance suites](conformance) every backend runs against itself.

pub mod clock;
pub mod ids;
pub mod memory;
pub mod model;
pub mod node;
pub mod protocol;
pub mod provider;
pub mod secret;
pub mod secret_store;
pub mod sink;
pub mod store;
pub mod task;

#[cfg(feature = "test-support")]
pub mod conformance;

pub use clock::{LifecycleClock, ManualClock, SystemClock, Timestamp};
pub use ids::{MessageId, NodeId, ProjectId, SessionId, TaskId, UserId, WorkspaceId};
pub use model::{
    ChatMessage, ChatSession, Node, ParseEnumError, Project, Role, SessionStatus, StoredMessage,
    Task, ToolMeta, User, VmSize, Workspace, WorkspaceStatus,
};
pub use node::NodeState;
pub use provider::{
    NodeBootstrap, NodeProvider, NodeSpec, ProviderError, ProviderNodeStatus, ProvisionedNode,
};
pub use secret_store::{SecretKey, SecretKind, SecretStore, SecretStoreExt, StoredSecret};
pub use sink::{DeliveryReport, MessageSink, SinkError};
pub use store::{
    ApiToken, Change, DestroyGuard, InsertOutcome, MessagePage, NodeQuery, NodeStore, SessionPatch,
    SessionQuery, SessionStore, Store, StoreError, StoreEvent, TaskQuery, TaskStore, UserStore,
    WorkspaceQuery,
};
pub use task::TaskStatus;
