//! The [`WarmPool`]: claim or provision, release warm, expire, destroy with retries, and the
//! background loop that drives expiry, retries, pre-warming and the sweep.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use kiln_core::clock::{add_duration, duration_between};
use kiln_core::node::{self, NodeEvent, NodeLifecycle};
use kiln_core::{
    Change, DestroyGuard, LifecycleClock, Node, NodeBootstrap, NodeId, NodeProvider, NodeQuery,
    NodeSpec, NodeState, Store, StoreError, StoreEvent, TaskId, Timestamp, UserId, VmSize,
    WorkspaceQuery, WorkspaceStatus,
};
use tokio::sync::watch;

use crate::error::Error;
use crate::settings::Settings;
use crate::sweep::Phase;

mod expiry;

/// Makes the bootstrap (control-plane URL, callback token) a new node starts with.
pub trait NodeBootstrapper: Send + Sync + fmt::Debug + 'static {
    /// The bootstrap for `node` (already stored, provisioning).
    fn bootstrap(&self, node: &Node) -> NodeBootstrap;
}

/// The same bootstrap for every node (tests, local setups without per-node tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticBootstrap(pub NodeBootstrap);

impl Default for StaticBootstrap {
    fn default() -> Self {
        Self(NodeBootstrap {
            control_plane_url: "http://127.0.0.1:0".into(),
            callback_token: String::new(),
            env: BTreeMap::new(),
        })
    }
}

impl NodeBootstrapper for StaticBootstrap {
    fn bootstrap(&self, _node: &Node) -> NodeBootstrap {
        self.0.clone()
    }
}

/// How [`WarmPool::acquire`] got its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireSource {
    /// A warm node was claimed.
    Warm,
    /// A new node was provisioned (a cold start).
    Provisioned,
}

/// A node acquired for a task: active and claimed by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// The node.
    pub node: Node,
    /// Claimed warm or provisioned.
    pub source: AcquireSource,
    /// How long the acquire took on the pool's clock.
    pub waited: Duration,
}

/// What [`WarmPool::release`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The node is warm until this deadline.
    Warm {
        /// Its deadline.
        until: Timestamp,
    },
    /// Workspaces are still on it; it stays active.
    Busy {
        /// How many.
        workspaces: usize,
    },
    /// Not provisioned by Kiln: such nodes never go warm (nor expire).
    NotAutoProvisioned,
    /// It is not active (already warm, destroying…): nothing to do.
    NotActive(NodeState),
}

#[derive(Debug, Clone)]
struct DestroyRetry {
    attempt: u32,
    next_at: Timestamp,
    provider_id: String,
    owner: UserId,
    phase: Phase,
    provider: String,
}

/// The warm node pool over a [`Store`], [`NodeProvider`]s and a [`LifecycleClock`].
///
/// A pool has a default provider and may know more ([`with_provider`](Self::with_provider)):
/// each node row names its provider, every later call about the node (delete, orphan
/// listing) goes to that one, and a claim only takes a warm node of the provider asked for.
///
/// Every node state change goes through the store's guarded methods, so several pools
/// (server replicas) over one database never hand a node to two tasks nor destroy a node a
/// task just claimed. Deadlines live in the store; the pool keeps only the retry schedule of
/// failed provider deletes in memory (after a restart, the sweep retries those nodes).
pub struct WarmPool {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) provider: Arc<dyn NodeProvider>,
    providers: BTreeMap<String, Arc<dyn NodeProvider>>,
    pub(crate) clock: Arc<dyn LifecycleClock>,
    settings: RwLock<Settings>,
    bootstrap: Arc<dyn NodeBootstrapper>,
    signals: Arc<watch::Sender<u64>>,
    feed: tokio::sync::OnceCell<()>,
    retries: Mutex<BTreeMap<NodeId, DestroyRetry>>,
    pub(crate) first_seen: Mutex<HashMap<String, Timestamp>>,
    pub(crate) prewarm_backoff: Mutex<HashMap<PrewarmKey, Timestamp>>,
}

/// A pre-warm target's identity: owner, size, location.
pub(crate) type PrewarmKey = (UserId, VmSize, Option<String>);

impl fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmPool")
            .field("provider", &self.provider.name())
            .field("settings", &self.settings())
            .finish_non_exhaustive()
    }
}

pub(crate) fn lifecycle(node: &Node) -> NodeLifecycle {
    NodeLifecycle {
        state: node.state,
        warm_until: node.warm_until,
        claimed_by: node.claimed_by,
    }
}

pub(crate) fn live_workspace_statuses() -> Vec<WorkspaceStatus> {
    vec![
        WorkspaceStatus::Creating,
        WorkspaceStatus::Running,
        WorkspaceStatus::Stopped,
        WorkspaceStatus::Destroying,
    ]
}

impl WarmPool {
    /// A pool with `settings`, handing new nodes a [`StaticBootstrap::default`].
    pub fn new(
        store: Arc<dyn Store>,
        provider: Arc<dyn NodeProvider>,
        clock: Arc<dyn LifecycleClock>,
        settings: Settings,
    ) -> Self {
        Self {
            store,
            providers: BTreeMap::from([(provider.name().to_owned(), provider.clone())]),
            provider,
            clock,
            settings: RwLock::new(settings),
            bootstrap: Arc::new(StaticBootstrap::default()),
            signals: Arc::new(watch::Sender::new(0)),
            feed: tokio::sync::OnceCell::new(),
            retries: Mutex::default(),
            first_seen: Mutex::default(),
            prewarm_backoff: Mutex::default(),
        }
    }

    /// Also provisions nodes from `provider` (under its [`name`](NodeProvider::name)) when an
    /// acquire asks for it; replaces a provider of the same name.
    #[must_use]
    pub fn with_provider(mut self, provider: Arc<dyn NodeProvider>) -> Self {
        if provider.name() == self.provider.name() {
            self.provider = provider.clone();
        }
        self.providers.insert(provider.name().to_owned(), provider);
        self
    }

    /// The default provider's name (the one [`acquire`](Self::acquire) and pre-warming use).
    #[must_use]
    pub fn default_provider(&self) -> &str {
        self.provider.name()
    }

    /// Every provider this pool knows, by name.
    #[must_use]
    pub fn providers(&self) -> Vec<Arc<dyn NodeProvider>> {
        self.providers.values().cloned().collect()
    }

    /// The provider named `name`.
    pub(crate) fn provider_named(&self, name: &str) -> Result<&Arc<dyn NodeProvider>, Error> {
        self.providers
            .get(name)
            .ok_or_else(|| Error::UnknownProvider {
                name: name.to_owned(),
            })
    }

    /// Uses `bootstrap` to make each new node's bootstrap (URL and callback token).
    #[must_use]
    pub fn with_bootstrap(mut self, bootstrap: Arc<dyn NodeBootstrapper>) -> Self {
        self.bootstrap = bootstrap;
        self
    }

    /// The settings in force.
    #[must_use]
    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes the settings at run time. A changed warm timeout applies to nodes released
    /// from now on; nodes already warm keep their stored deadline.
    pub fn update_settings(&self, change: impl FnOnce(&mut Settings)) {
        change(
            &mut self
                .settings
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.signal();
    }

    /// The store the pool works on.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The pool's clock.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn LifecycleClock> {
        &self.clock
    }

    fn signal(&self) {
        self.signals.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Announces a node change to every replica (best effort: the change itself is stored).
    pub(crate) async fn announce(&self, owner: UserId, node_id: NodeId) {
        let event = StoreEvent {
            owner,
            project_id: None,
            change: Change::Node { node_id },
        };
        if let Err(e) = self.store.publish(&event).await {
            tracing::warn!(node = %node_id, error = %e, "could not publish a node change");
        }
        self.signal();
    }

    /// Listens to the store's change feed once per pool, so a node marked ready by another
    /// replica wakes this pool's waiters at once (polling covers a feed that is down).
    async fn ensure_feed(&self) {
        self.feed
            .get_or_init(|| async {
                match self.store.subscribe().await {
                    Ok(mut feed) => {
                        let signals: Weak<watch::Sender<u64>> = Arc::downgrade(&self.signals);
                        tokio::spawn(async move {
                            while let Some(event) = feed.next().await {
                                if !matches!(event.change, Change::Node { .. }) {
                                    continue;
                                }
                                let Some(signals) = signals.upgrade() else {
                                    return;
                                };
                                signals.send_modify(|n| *n = n.wrapping_add(1));
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no store change feed; the pool polls instead");
                    }
                }
            })
            .await;
    }

    /// Gets an active node for `task`: claims a warm node of `owner` and `size` (and
    /// `location`) atomically, or provisions one and waits until it reports ready (at most
    /// [`Settings::provisioning_timeout`]). A provider refusal is
    /// [`Error::Provisioning`] with the provider's message.
    pub async fn acquire(
        &self,
        owner: UserId,
        size: VmSize,
        location: Option<&str>,
        task: TaskId,
    ) -> Result<Acquired, Error> {
        let provider = self.default_provider().to_owned();
        if let Some(acquired) = self
            .claim_warm(&provider, owner, size, location, task)
            .await?
        {
            return Ok(acquired);
        }
        self.provision_for(&provider, owner, size, location, task)
            .await
    }

    /// Claims a warm node of `provider`, `owner` and `size` (and `location`) for `task`
    /// atomically, if there is one.
    pub async fn claim_warm(
        &self,
        provider: &str,
        owner: UserId,
        size: VmSize,
        location: Option<&str>,
        task: TaskId,
    ) -> Result<Option<Acquired>, Error> {
        let now = self.clock.now();
        let Some(node) = self
            .store
            .claim_warm_node(owner, size, provider, location, task, now)
            .await?
        else {
            return Ok(None);
        };
        tracing::info!(node = %node.id, %task, provider, "claimed a warm node");
        self.announce(node.owner, node.id).await;
        Ok(Some(Acquired {
            node,
            source: AcquireSource::Warm,
            waited: Duration::ZERO,
        }))
    }

    /// Provisions a node of `provider` for `task` (a cold start) and waits until it reports
    /// ready (at most [`Settings::provisioning_timeout`]).
    pub async fn provision_for(
        &self,
        provider: &str,
        owner: UserId,
        size: VmSize,
        location: Option<&str>,
        task: TaskId,
    ) -> Result<Acquired, Error> {
        let started = self.clock.now();
        self.ensure_feed().await;
        let changes = self.signals.subscribe();
        let node = self
            .provision(provider, owner, size, location, Some(task))
            .await?;
        tracing::info!(node = %node.id, %task, "provisioning a node (no warm node to claim)");
        self.await_ready(&node, task, started, changes).await
    }

    /// The node `claim` already holds, if any: one a stopped process claimed or provisioned
    /// for it before it could use it. An active node is returned as is; a provisioning one
    /// (asked of its provider) is waited for like [`provision_for`](Self::provision_for)
    /// waits. `None` when the claim holds no usable node, so the caller acquires one as
    /// usual and no second node is provisioned for a claim that already has one.
    pub async fn claimed_for(
        &self,
        owner: UserId,
        claim: TaskId,
    ) -> Result<Option<Acquired>, Error> {
        let started = self.clock.now();
        self.ensure_feed().await;
        let changes = self.signals.subscribe();
        let held = self
            .store
            .list_nodes(&NodeQuery {
                owner: Some(owner),
                states: vec![NodeState::Active, NodeState::Provisioning],
                ..NodeQuery::default()
            })
            .await?
            .into_iter()
            .filter(|n| n.claimed_by == Some(claim))
            // Active first; a provisioning row the provider never heard of will not boot.
            .filter(|n| n.state == NodeState::Active || n.provider_id.is_some())
            .min_by_key(|n| n.state != NodeState::Active);
        let Some(node) = held else {
            return Ok(None);
        };
        if node.state == NodeState::Active {
            tracing::info!(node = %node.id, %claim, "reusing the node already claimed");
            return Ok(Some(Acquired {
                node,
                source: AcquireSource::Warm,
                waited: Duration::ZERO,
            }));
        }
        tracing::info!(node = %node.id, %claim, "waiting for the node already provisioning for the claim");
        self.await_ready(&node, claim, started, changes)
            .await
            .map(Some)
    }

    /// Waits until the provisioning `node` reports ready (at most
    /// [`Settings::provisioning_timeout`] from `started`).
    async fn await_ready(
        &self,
        node: &Node,
        task: TaskId,
        started: Timestamp,
        mut changes: watch::Receiver<u64>,
    ) -> Result<Acquired, Error> {
        let timeout = self.settings().provisioning_timeout;
        let deadline = add_duration(started, timeout);
        loop {
            let current = self
                .store
                .get_node(node.id)
                .await?
                .ok_or_else(|| Error::not_found("node", node.id))?;
            match current.state {
                NodeState::Active => {
                    let waited = duration_between(started, self.clock.now());
                    tracing::info!(node = %node.id, %task, waited_ms = waited.as_millis() as u64, "new node is ready");
                    return Ok(Acquired {
                        node: current,
                        source: AcquireSource::Provisioned,
                        waited,
                    });
                }
                NodeState::Provisioning => {}
                other => {
                    return Err(Error::NodeFailed {
                        node: node.id,
                        reason: current
                            .error_message
                            .unwrap_or_else(|| format!("it became {other}")),
                    });
                }
            }
            let now = self.clock.now();
            if now >= deadline {
                return Err(self.provisioning_timed_out(&current, timeout).await);
            }
            let poll = add_duration(now, self.settings().ready_poll_interval);
            tokio::select! {
                _ = changes.changed() => {}
                () = self.clock.sleep_until(deadline.min(poll)) => {}
            }
        }
    }

    async fn provisioning_timed_out(&self, node: &Node, waited: Duration) -> Error {
        let reason = format!("did not report ready within {} s", waited.as_secs());
        tracing::warn!(node = %node.id, %reason, "provisioning timed out; destroying the node");
        let now = self.clock.now();
        match self.store.mark_node_failed(node.id, &reason, now).await {
            Ok(_) => {
                self.announce(node.owner, node.id).await;
                if let Err(e) = self
                    .destroy_node(node.id, DestroyGuard::Unclaimed, Phase::ProvisioningTimeout)
                    .await
                {
                    tracing::warn!(node = %node.id, error = %e, "destroy after timeout failed; left to the sweep");
                }
            }
            Err(e) => tracing::warn!(node = %node.id, error = %e, "could not fail the late node"),
        }
        Error::ProvisioningTimedOut {
            node: node.id,
            waited,
        }
    }

    /// Stores a provisioning node (claimed by `task`, if any) and asks the provider for it.
    pub(crate) async fn provision(
        &self,
        provider: &str,
        owner: UserId,
        size: VmSize,
        location: Option<&str>,
        task: Option<TaskId>,
    ) -> Result<Node, Error> {
        let provider = self.provider_named(provider)?.clone();
        let now = self.clock.now();
        let mut node = Node {
            id: NodeId::new(),
            owner,
            size,
            location: location.map(str::to_owned),
            provider: provider.name().to_owned(),
            provider_id: None,
            state: NodeState::Provisioning,
            warm_until: None,
            claimed_by: task,
            auto_provisioned: true,
            last_heartbeat_at: None,
            error_message: None,
            created_at: now,
            updated_at: now,
        };
        // The row comes first: a server at the provider whose node the store does not know
        // is an orphan, so no server may exist without its row.
        self.store.insert_node(&node).await?;
        self.announce(owner, node.id).await;
        let spec = NodeSpec {
            node_id: node.id,
            owner,
            size,
            location: node.location.clone(),
            bootstrap: self.bootstrap.bootstrap(&node),
        };
        match self
            .create_at_provider(provider.as_ref(), &spec, task.is_some())
            .await
        {
            Ok(server) => {
                let now = self.clock.now();
                self.store
                    .set_node_provider_id(node.id, &server.provider_id, now)
                    .await?;
                node.provider_id = Some(server.provider_id);
                node.updated_at = now;
                self.announce(owner, node.id).await;
                Ok(node)
            }
            Err(source) => {
                tracing::warn!(node = %node.id, error = %source, "the provider refused to create a node");
                let now = self.clock.now();
                if let Err(e) = self
                    .store
                    .mark_node_failed(node.id, &source.to_string(), now)
                    .await
                {
                    tracing::warn!(node = %node.id, error = %e, "could not mark the node failed");
                }
                self.announce(owner, node.id).await;
                Err(Error::Provisioning {
                    node: node.id,
                    source,
                })
            }
        }
    }

    /// Asks the provider for the server. For a task (`patient`), a retryable refusal (rate
    /// limit, outage) is retried with the destroy-retry backoff (or the provider's
    /// `retry_after`) while the provisioning timeout allows; create is idempotent per node id.
    async fn create_at_provider(
        &self,
        provider: &dyn NodeProvider,
        spec: &NodeSpec,
        patient: bool,
    ) -> Result<kiln_core::ProvisionedNode, kiln_core::ProviderError> {
        let settings = self.settings();
        let deadline = add_duration(self.clock.now(), settings.provisioning_timeout);
        let mut attempt: u32 = 1;
        loop {
            let error = match provider.create(spec).await {
                Ok(server) => return Ok(server),
                Err(error) if patient && error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            let wait = match &error {
                kiln_core::ProviderError::RateLimited {
                    retry_after: Some(after),
                } => *after,
                _ => settings
                    .destroy_retry_interval
                    .saturating_mul(1 << (attempt - 1).min(16)),
            };
            let at = add_duration(self.clock.now(), wait);
            if at >= deadline {
                return Err(error);
            }
            tracing::warn!(node = %spec.node_id, attempt, %error, retry_at = %at, "provider create failed; will retry");
            self.clock.sleep_until(at).await;
            attempt += 1;
        }
    }

    /// The node's agent host reported ready: provisioning → active. A node nobody claimed
    /// (pre-warming) goes warm at once. Idempotent. The control plane calls this when a node
    /// says hello.
    pub async fn node_ready(&self, node_id: NodeId) -> Result<Node, Error> {
        let node = self
            .store
            .mark_node_ready(node_id, self.clock.now())
            .await?;
        self.announce(node.owner, node.id).await;
        if node.claimed_by.is_none() && node.auto_provisioned {
            self.release(node.id).await?;
        }
        Ok(node)
    }

    /// Returns a node whose last workspace is gone to the pool: an auto-provisioned node goes
    /// warm until now + [`Settings::warm_timeout`] (the value in force now), or longer while
    /// it is needed for a pre-warm minimum, but never past its
    /// [`max lifetime`](Settings::max_auto_node_lifetime). Idempotent.
    pub async fn release(&self, node_id: NodeId) -> Result<ReleaseOutcome, Error> {
        let node = self
            .store
            .get_node(node_id)
            .await?
            .ok_or_else(|| Error::not_found("node", node_id))?;
        if node.state != NodeState::Active {
            return Ok(ReleaseOutcome::NotActive(node.state));
        }
        if !node.auto_provisioned {
            return Ok(ReleaseOutcome::NotAutoProvisioned);
        }
        let workspaces = self
            .store
            .list_workspaces(&WorkspaceQuery {
                node_id: Some(node_id),
                statuses: live_workspace_statuses(),
                ..WorkspaceQuery::default()
            })
            .await?;
        if !workspaces.is_empty() {
            return Ok(ReleaseOutcome::Busy {
                workspaces: workspaces.len(),
            });
        }
        let settings = self.settings();
        let now = self.clock.now();
        let end_of_life = add_duration(node.created_at, settings.max_auto_node_lifetime);
        let min = settings.prewarm_min(node.owner, node.size, node.location.as_deref());
        let held = min > 0
            && self
                .idle_warm(node.owner, node.size, node.location.as_deref(), now)
                .await?
                < min as usize;
        let wanted = if held {
            end_of_life
        } else {
            add_duration(now, settings.warm_timeout).min(end_of_life)
        };
        let event = NodeEvent::Release {
            warm_timeout: duration_between(now, wanted),
        };
        let until = match node::transition(lifecycle(&node), &event, now) {
            Ok((after, _)) => after.warm_until.unwrap_or(wanted),
            Err(e) => {
                return Err(Error::Store(StoreError::conflict(e.to_string())));
            }
        };
        let node = match self.store.release_node(node_id, until, now).await {
            Ok(node) => node,
            Err(StoreError::Conflict { .. }) => {
                let state = self
                    .store
                    .get_node(node_id)
                    .await?
                    .map_or(NodeState::Destroyed, |n| n.state);
                return Ok(ReleaseOutcome::NotActive(state));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(node = %node.id, warm_until = %until, prewarm_hold = held, "node released warm");
        self.announce(node.owner, node.id).await;
        Ok(ReleaseOutcome::Warm { until })
    }

    /// Warm, claimable nodes of this owner, size and location.
    pub(crate) async fn idle_warm(
        &self,
        owner: UserId,
        size: VmSize,
        location: Option<&str>,
        now: Timestamp,
    ) -> Result<usize, Error> {
        let nodes = self
            .store
            .list_nodes(&NodeQuery {
                owner: Some(owner),
                states: vec![NodeState::Warm],
                ..NodeQuery::default()
            })
            .await?;
        Ok(nodes
            .iter()
            .filter(|n| {
                n.size == size
                    && location.is_none_or(|l| n.location.as_deref() == Some(l))
                    && n.warm_until.is_some_and(|w| w > now)
            })
            .count())
    }
}
