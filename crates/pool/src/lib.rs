//! # kiln-pool
//!
//! The warm node pool, the reconciliation sweep and the task runner: Kiln's run-time logic,
//! over any [`kiln_core::Store`], [`kiln_core::NodeProvider`] and
//! [`kiln_core::LifecycleClock`].
//!
//! - [`WarmPool`] hands tasks nodes: [`acquire`](WarmPool::acquire) claims a warm node
//!   atomically through the store, or provisions one and waits until its agent host reports
//!   ready ([`node_ready`](WarmPool::node_ready), called by the control plane when the node
//!   says hello). [`release`](WarmPool::release) keeps an emptied node warm until
//!   `now + NODE_WARM_TIMEOUT_MS`; [`expire_due`](WarmPool::expire_due) destroys nodes still
//!   warm at their deadline, retrying failed provider deletes with backoff;
//!   [`sweep`](WarmPool::sweep) is the safety net; [`maintain_prewarm`](WarmPool::maintain_prewarm)
//!   keeps pre-warm minimums; [`run_until`](WarmPool::run_until) drives all of it.
//! - [`TaskRunner`] drives tasks: run → queued → node acquired → delegated → workspace
//!   started on `task/<id>` → in progress → completed / failed / cancelled, with the effects
//!   executed against the store, the pool and a [`WorkspaceController`]. The node's reports
//!   come back as [`agent_started`](TaskRunner::agent_started),
//!   [`completed`](TaskRunner::completed), [`failed`](TaskRunner::failed),
//!   [`cancelled`](TaskRunner::cancelled) and
//!   [`workspace_destroyed`](TaskRunner::workspace_destroyed).
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kiln_core::memory::{MemoryProvider, MemoryStore};
//! use kiln_core::{LifecycleClock, ManualClock, NodeState, TaskStatus, TaskStore, NodeStore};
//! use kiln_pool::memory::{MemoryWorkspaces, simulate_node_boots};
//! use kiln_pool::{NewTask, Settings, TaskRunner, WarmPool};
//! # use kiln_core::{Project, ProjectId, SessionStore, UserId, VmSize};
//!
//! let store = Arc::new(MemoryStore::new());
//! let clock = ManualClock::starting_at_epoch();
//! let pool = Arc::new(WarmPool::new(
//!     store.clone(),
//!     Arc::new(MemoryProvider::new()),
//!     Arc::new(clock.clone()),
//!     Settings::default(),
//! ));
//! // Nodes "boot" instantly here; a cloud node takes minutes.
//! let _boots = simulate_node_boots(pool.clone(), Duration::ZERO).await;
//! let nodes = Arc::new(MemoryWorkspaces::new());
//! let runner = TaskRunner::new(pool.clone(), nodes.clone());
//! # let project = Project { id: ProjectId::new(), owner: UserId::new(), name: "demo".into(),
//! #     repository_url: "/srv/demo.git".into(), default_vm_size: VmSize::Small,
//! #     provider: "memory".into(),
//! #     created_at: clock.now(), updated_at: clock.now() };
//! # store.create_project(&project).await.unwrap();
//!
//! // Run Now: a cold start (no warm node yet), then the workspace starts on the node.
//! let task = runner.run_now(NewTask {
//!     project_id: project.id,
//!     title: "Fix the login bug".into(),
//!     description: "The login form rejects valid emails.".into(),
//!     priority: 0,
//!     vm_size_override: None,
//!     agent_hint: None,
//! }).await?;
//! let workspace = loop {
//!     if let Some(request) = nodes.created().first() { break request.workspace_id; }
//!     tokio::task::yield_now().await;
//! };
//! // The node reports back: the agent starts, then finishes cleanly.
//! runner.agent_started(workspace, Some(format!("task/{}", task.id))).await?;
//! runner.completed(workspace, None, None, Some("Fixed.".into())).await?;
//!
//! let task = store.get_task(task.id).await?.unwrap();
//! assert_eq!(task.status, TaskStatus::Completed);
//! // The node is warm for the next task, for 30 minutes by default…
//! let node = store.get_node(task.node_id.unwrap()).await?.unwrap();
//! assert_eq!(node.state, NodeState::Warm);
//! // …then expires.
//! clock.advance(Duration::from_secs(30 * 60));
//! pool.expire_due().await?;
//! assert_eq!(store.get_node(node.id).await?.unwrap().state, NodeState::Destroyed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## Settings
//!
//! [`Settings::from_env`] reads these variables; [`Settings::default`] holds the defaults.
//!
//! | variable | default | what it does |
//! |---|---|---|
//! | `NODE_WARM_TIMEOUT_MS` | 1800000 (30 min) | how long an emptied node stays warm; read at release, so a change applies to nodes emptied after it |
//! | `NODE_CLEANUP_GRACE_PERIOD_MS` | 2700000 (45 min) | how far past its deadline a warm node must be for the sweep to destroy it |
//! | `MAX_AUTO_NODE_LIFETIME_MS` | 14400000 (4 h) | the sweep destroys older auto-provisioned nodes that run no workspace; warm deadlines never pass it |
//! | `NODE_SWEEP_INTERVAL_MS` | 900000 (15 min) | how often the sweep runs (and once when the loop starts) |
//! | `NODE_DESTROY_RETRY_INTERVAL_MS` | 60000 (1 min) | wait before the first retry of a failed provider delete, doubling per retry; also paces retries of a retryable create and pre-warming after a refusal |
//! | `NODE_DESTROY_MAX_ATTEMPTS` | 6 | provider delete attempts before a node is left to the sweep |
//! | `NODE_PROVISIONING_TIMEOUT_MS` | 600000 (10 min) | how long an acquire waits for a new node to report ready (the node is then failed and destroyed) |
//! | `NODE_READY_POLL_INTERVAL_MS` | 5000 | while waiting for a node, re-read it at least this often |
//! | `NODE_BOOT_GRACE_PERIOD_MS` | 600000 (10 min) | orphans and idle nodes younger than this are left alone by the sweep |
//! | `NODE_HEARTBEAT_TIMEOUT_MS` | 90000 (90 s) | a node silent this long after its last heartbeat is lost: its task fails, the node is destroyed (runner tick) |
//! | `NODE_LOCATION` | (none) | the provider location new nodes are created in |
//! | `NODE_PREWARM` | (none) | pre-warm minimums: `<owner uuid>:<size>=<count>[@<location>]`, comma separated |
//! | `TASK_QUEUED_TIMEOUT_MS` | 900000 (15 min) | a task waiting this long for a node fails |
//! | `TASK_DELEGATED_TIMEOUT_MS` | 600000 (10 min) | a task whose agent has not started after this fails |
//! | `TASK_TICK_INTERVAL_MS` | 30000 | how often the runner's loop checks those limits |
//! | `KILN_KEPT_WORKSPACE_TTL_MS` | 86400000 (24 h; 0: forever) | a failed or cancelled task's kept workspace older than this is discarded by the runner's tick, releasing its node ([`TaskRunner::discard_expired_workspaces`]) |
//!
//! ## Design notes
//!
//! - **Decisions are the core state machines'.** The runner asks [`kiln_core::Task::apply`]
//!   and executes the effects it returns; the pool consults [`kiln_core::node::transition`]
//!   and changes nodes only through the store's guarded methods (`claim_warm_node`,
//!   `release_node`, `begin_destroy_node`, `mark_node_*`). Task writes are compare-and-set
//!   on the status the decision was made from, so exactly one of two concurrent writers
//!   executes the effects: a repeated run or callback never starts a second workspace or
//!   provisions a second node.
//! - **Time is the injected clock's.** Nothing here reads the wall clock, so a
//!   [`kiln_core::ManualClock`] drives 30-minute timeouts in a millisecond test.
//! - **Readiness.** `acquire` stores the node row (provisioning, claimed by the task) before
//!   asking the provider, so a server without a row is always an orphan. It then waits for
//!   the row to turn active, woken by the store's change feed (so a hello handled by another
//!   replica counts) and re-reading at least every `NODE_READY_POLL_INTERVAL_MS`.
//! - **Provider errors are classified once** ([`kiln_core::ProviderError::is_retryable`]): a
//!   retryable create for a task (rate limit, outage) is retried on the backoff schedule while
//!   the provisioning timeout allows (create is idempotent per node id); a permanent one
//!   (quota, credentials, invalid request) fails the task at once with the provider's
//!   message. Pre-warming does not wait: after a refusal it pauses that target for one retry
//!   interval.
//! - **Deadlines live in the store.** Warm deadlines are rows; a new pool over the same store
//!   expires what is due. Only the retry schedule of failed provider deletes is in memory: a
//!   restarted pool leaves those nodes in `destroying`, and the sweep deletes them.
//! - **Pre-warming** provisions unclaimed nodes for each target; they go warm when they
//!   report ready. While a target is below its minimum, a released node of that kind stays
//!   warm until its max lifetime instead of the warm timeout, so the minimum holds without
//!   churn.
//! - **The sweep** runs every phase even if another errors and reports each action: warm
//!   nodes past deadline + grace, nodes past max lifetime that run no workspace (a node whose
//!   claiming task has ended counts as unclaimed), nodes stuck provisioning, failed or
//!   stuck-destroying nodes, orphans at the provider (unknown or known as destroyed, and
//!   older than the boot grace; a server without a creation time is timed from when the pool
//!   first saw it), and active nodes no running task or workspace holds (released warm).
//!   It never touches a task: the runner's tick fails tasks held too long in `queued` or
//!   `delegated` with a reason, and reaps lost nodes (heartbeats stopped): the task on such a
//!   node fails with that reason (session and workspace follow), then the node is destroyed.
//! - **Events.** Every task, session, workspace and node change is published with
//!   [`kiln_core::SessionStore::publish`], so every replica's viewers hear of it.
//! - **Sessions.** A task has one chat session for all its attempts (its prompt's message id
//!   is derived from the task id); a re-run reopens it.
//! - A queued task whose run was interrupted by a restart is failed by the tick at its
//!   queued limit and can be re-run; `run` on a running task returns it unchanged.

mod controller;
mod error;
pub mod memory;
mod pool;
mod runner;
mod settings;
mod sweep;

pub use controller::{ControllerError, DestroyProgress, WorkspaceController, WorkspaceRequest};
pub use error::Error;
pub use pool::{
    AcquireSource, Acquired, NodeBootstrapper, ReleaseOutcome, StaticBootstrap, WarmPool,
};
pub use runner::{
    NewChat, NewTask, PROVISIONING_DETAIL, Reconciled, Resumed, TaskRunner, chat_claim,
};
pub use settings::{PrewarmTarget, Settings, SettingsError, parse_prewarm};
pub use sweep::{ActionResult, NodeAction, Phase, SweepReport};
