//! The reconciliation sweep and pre-warming: the safety net behind the expiry loop.
//!
//! Each phase runs even if another one errors, and every action is logged and reported.
//! The sweep never reaps a node claimed by a running task, nor an orphan or idle node
//! younger than the boot grace period, and never decides a task's outcome.

use std::collections::{HashMap, HashSet};

use kiln_core::clock::{add_duration, duration_between};
use kiln_core::node::{self, DestroyReason, NodeEvent};
use kiln_core::{
    DestroyGuard, Node, NodeId, NodeQuery, NodeState, Timestamp, WorkspaceQuery, WorkspaceStatus,
};

use crate::error::Error;
use crate::pool::{WarmPool, lifecycle, live_workspace_statuses};

/// Which part of the pool acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// A warm node reached its deadline.
    Expiry,
    /// A retry of a failed provider delete.
    DestroyRetry,
    /// A new node did not report ready in time.
    ProvisioningTimeout,
    /// Sweep: a warm node past its deadline plus the cleanup grace period.
    StaleWarm,
    /// Sweep: a node past its max lifetime that runs no workspace.
    MaxLifetime,
    /// Sweep: a node provisioning for longer than the provisioning timeout plus boot grace.
    StuckProvisioning,
    /// Sweep: a failed node, or one whose provider delete never got confirmed.
    StuckDestroying,
    /// Sweep: a Kiln-labelled server the store does not know (or knows as destroyed).
    Orphan,
    /// Sweep: an active node no running task holds and no workspace uses, released warm.
    Stranded,
    /// Pre-warming: a node provisioned to keep the idle minimum.
    Prewarm,
    /// Runner tick: a node whose agent host stopped sending heartbeats.
    Lost,
}

/// What came of one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionResult {
    /// The provider confirmed the delete.
    Destroyed,
    /// The provider delete failed; it is retried at `at`.
    RetryScheduled {
        /// The attempt that failed.
        attempt: u32,
        /// When the next one runs.
        at: Timestamp,
        /// The provider's error.
        error: String,
    },
    /// The provider delete failed `attempts` times; the node stays `destroying` for the sweep.
    LeftToSweep {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// The node went warm.
    Released,
    /// A new node was asked of the provider.
    Provisioned,
    /// Nothing was done, and why (a guard refused, too young…).
    Skipped(String),
    /// The action failed.
    Failed(String),
}

/// One thing the pool did (or chose not to do) to a node or a provider server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAction {
    /// Which part of the pool acted.
    pub phase: Phase,
    /// The node, when the store knows it.
    pub node_id: Option<NodeId>,
    /// The provider's server id, when known.
    pub provider_id: Option<String>,
    /// What came of it.
    pub result: ActionResult,
}

impl NodeAction {
    pub(crate) fn new(phase: Phase, node: &Node, result: ActionResult) -> Self {
        Self {
            phase,
            node_id: Some(node.id),
            provider_id: node.provider_id.clone(),
            result,
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// When it ran (pool clock).
    pub at: Timestamp,
    /// Every action, phase by phase.
    pub actions: Vec<NodeAction>,
    /// Phases that failed, with the error (the other phases still ran).
    pub errors: Vec<(Phase, String)>,
}

impl SweepReport {
    /// The actions of one phase.
    pub fn phase(&self, phase: Phase) -> impl Iterator<Item = &NodeAction> {
        self.actions.iter().filter(move |a| a.phase == phase)
    }

    /// How many nodes or servers were destroyed.
    #[must_use]
    pub fn destroyed(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| a.result == ActionResult::Destroyed)
            .count()
    }
}

impl WarmPool {
    /// Runs every sweep phase once: stale warm nodes, max lifetime, stuck provisioning,
    /// failed and stuck-destroying nodes, orphans at the provider, stranded active nodes.
    pub async fn sweep(&self) -> SweepReport {
        let at = self.clock.now();
        let mut report = SweepReport {
            at,
            actions: Vec::new(),
            errors: Vec::new(),
        };
        let phases = [
            (Phase::StaleWarm, self.sweep_stale_warm().await),
            (Phase::MaxLifetime, self.sweep_max_lifetime().await),
            (
                Phase::StuckProvisioning,
                self.sweep_stuck_provisioning().await,
            ),
            (Phase::StuckDestroying, self.sweep_stuck_destroying().await),
            (Phase::Orphan, self.sweep_orphans().await),
            (Phase::Stranded, self.sweep_stranded().await),
        ];
        for (phase, outcome) in phases {
            match outcome {
                Ok(actions) => report.actions.extend(actions),
                Err(e) => {
                    tracing::warn!(?phase, error = %e, "sweep phase failed");
                    report.errors.push((phase, e.to_string()));
                }
            }
        }
        for action in &report.actions {
            match &action.result {
                ActionResult::Skipped(why) => {
                    tracing::debug!(phase = ?action.phase, node = ?action.node_id, provider_id = ?action.provider_id, %why, "sweep skipped");
                }
                result => {
                    tracing::info!(phase = ?action.phase, node = ?action.node_id, provider_id = ?action.provider_id, ?result, "sweep action");
                }
            }
        }
        report
    }

    async fn destroy_each(
        &self,
        phase: Phase,
        nodes: Vec<Node>,
        guard: DestroyGuard,
    ) -> Vec<NodeAction> {
        let mut actions = Vec::new();
        for node in nodes {
            let result = self
                .destroy_node(node.id, guard, phase)
                .await
                .unwrap_or_else(|e| ActionResult::Failed(e.to_string()));
            actions.push(NodeAction::new(phase, &node, result));
        }
        actions
    }

    async fn sweep_stale_warm(&self) -> Result<Vec<NodeAction>, Error> {
        let now = self.clock.now();
        let grace = self.settings().cleanup_grace;
        let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let stale = self
            .store
            .list_nodes(&NodeQuery {
                states: vec![NodeState::Warm],
                warm_until_at_or_before: Some(cutoff),
                ..NodeQuery::default()
            })
            .await?;
        Ok(self
            .destroy_each(Phase::StaleWarm, stale, DestroyGuard::ExpiredWarm)
            .await)
    }

    /// Whether `node`'s claim belongs to a task that is still running on it.
    pub(crate) async fn held_by_running_task(&self, node: &Node) -> Result<bool, Error> {
        let Some(task) = node.claimed_by else {
            return Ok(false);
        };
        Ok(self
            .store
            .get_task(task)
            .await?
            .is_some_and(|t| t.status.is_running() && t.node_id.is_none_or(|n| n == node.id)))
    }

    async fn workspaces_on(
        &self,
        node: NodeId,
        statuses: Vec<WorkspaceStatus>,
    ) -> Result<usize, Error> {
        Ok(self
            .store
            .list_workspaces(&WorkspaceQuery {
                node_id: Some(node),
                statuses,
                ..WorkspaceQuery::default()
            })
            .await?
            .len())
    }

    async fn sweep_max_lifetime(&self) -> Result<Vec<NodeAction>, Error> {
        let now = self.clock.now();
        let lifetime = self.settings().max_auto_node_lifetime;
        let born_before =
            now - chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::MAX);
        let old = self
            .store
            .list_nodes(&NodeQuery {
                states: vec![NodeState::Active, NodeState::Warm],
                created_at_or_before: Some(born_before),
                ..NodeQuery::default()
            })
            .await?;
        let mut actions = Vec::new();
        for node in old.into_iter().filter(|n| n.auto_provisioned) {
            let running = self
                .workspaces_on(
                    node.id,
                    vec![WorkspaceStatus::Creating, WorkspaceStatus::Running],
                )
                .await?;
            if running > 0 || self.held_by_running_task(&node).await? {
                actions.push(NodeAction::new(
                    Phase::MaxLifetime,
                    &node,
                    ActionResult::Skipped("it runs a workspace".into()),
                ));
                continue;
            }
            // A claim by a task that has ended is stale: the machine sees the node unclaimed.
            let mut seen = lifecycle(&node);
            seen.claimed_by = None;
            if node::transition(seen, &NodeEvent::Destroy(DestroyReason::Sweep), now).is_err() {
                continue;
            }
            let guard = if node.claimed_by.is_some() {
                DestroyGuard::Any
            } else {
                DestroyGuard::Unclaimed
            };
            let result = self
                .destroy_node(node.id, guard, Phase::MaxLifetime)
                .await
                .unwrap_or_else(|e| ActionResult::Failed(e.to_string()));
            actions.push(NodeAction::new(Phase::MaxLifetime, &node, result));
        }
        Ok(actions)
    }

    async fn sweep_stuck_provisioning(&self) -> Result<Vec<NodeAction>, Error> {
        let now = self.clock.now();
        let s = self.settings();
        let limit = s.provisioning_timeout.saturating_add(s.boot_grace);
        let born_before = now - chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
        let stuck = self
            .store
            .list_nodes(&NodeQuery {
                states: vec![NodeState::Provisioning],
                created_at_or_before: Some(born_before),
                ..NodeQuery::default()
            })
            .await?;
        let mut actions = Vec::new();
        for node in stuck {
            let reason = format!(
                "still provisioning after {} s",
                duration_between(node.created_at, now).as_secs()
            );
            if let Err(e) = self.store.mark_node_failed(node.id, &reason, now).await {
                actions.push(NodeAction::new(
                    Phase::StuckProvisioning,
                    &node,
                    ActionResult::Skipped(e.to_string()),
                ));
                continue;
            }
            self.announce(node.owner, node.id).await;
            let result = self
                .destroy_node(node.id, DestroyGuard::Unclaimed, Phase::StuckProvisioning)
                .await
                .unwrap_or_else(|e| ActionResult::Failed(e.to_string()));
            actions.push(NodeAction::new(Phase::StuckProvisioning, &node, result));
        }
        Ok(actions)
    }

    async fn sweep_stuck_destroying(&self) -> Result<Vec<NodeAction>, Error> {
        let now = self.clock.now();
        let settled = now
            - chrono::Duration::from_std(self.settings().destroy_retry_interval)
                .unwrap_or(chrono::Duration::MAX);
        let failed = self
            .store
            .list_nodes(&NodeQuery {
                states: vec![NodeState::Failed],
                ..NodeQuery::default()
            })
            .await?;
        let destroying = self
            .store
            .list_nodes(&NodeQuery {
                states: vec![NodeState::Destroying],
                updated_at_or_before: Some(settled),
                ..NodeQuery::default()
            })
            .await?
            .into_iter()
            .filter(|n| !self.is_retrying(n.id))
            .collect();
        let mut actions = self
            .destroy_each(Phase::StuckDestroying, failed, DestroyGuard::Unclaimed)
            .await;
        actions.extend(
            self.destroy_each(Phase::StuckDestroying, destroying, DestroyGuard::Unclaimed)
                .await,
        );
        Ok(actions)
    }

    async fn sweep_orphans(&self) -> Result<Vec<NodeAction>, Error> {
        let mut actions = Vec::new();
        let mut first_error = None;
        for provider in self.providers() {
            match self.sweep_orphans_of(provider.as_ref()).await {
                Ok(done) => actions.extend(done),
                Err(e) => {
                    tracing::warn!(provider = provider.name(), error = %e, "orphan sweep failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if actions.is_empty() => Err(e),
            _ => Ok(actions),
        }
    }

    async fn sweep_orphans_of(
        &self,
        provider: &dyn kiln_core::NodeProvider,
    ) -> Result<Vec<NodeAction>, Error> {
        let now = self.clock.now();
        let grace = self.settings().boot_grace;
        let servers = provider
            .list()
            .await
            .map_err(|source| Error::Provider { node: None, source })?;
        let known = self
            .store
            .list_nodes(&NodeQuery {
                provider: Some(provider.name().to_owned()),
                ..NodeQuery::default()
            })
            .await?;
        let live_ids: HashSet<NodeId> = known
            .iter()
            .filter(|n| !n.state.is_gone())
            .map(|n| n.id)
            .collect();
        let live_servers: HashSet<&str> = known
            .iter()
            .filter(|n| !n.state.is_gone())
            .filter_map(|n| n.provider_id.as_deref())
            .collect();
        let mut actions = Vec::new();
        let mut listed = HashSet::new();
        for server in servers {
            listed.insert(server.provider_id.clone());
            let known_live = server.node_id.is_some_and(|id| live_ids.contains(&id))
                || live_servers.contains(server.provider_id.as_str());
            if known_live {
                continue;
            }
            let born = match server.created_at {
                Some(t) => t,
                // The provider does not say: count from when this pool first saw it.
                None => *self
                    .first_seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(server.provider_id.clone())
                    .or_insert(now),
            };
            let action = |result| NodeAction {
                phase: Phase::Orphan,
                node_id: server.node_id,
                provider_id: Some(server.provider_id.clone()),
                result,
            };
            if add_duration(born, grace) > now {
                actions.push(action(ActionResult::Skipped(
                    "younger than the boot grace period".into(),
                )));
                continue;
            }
            let result = match provider.destroy(&server.provider_id).await {
                Ok(()) => ActionResult::Destroyed,
                Err(e) => ActionResult::Failed(e.to_string()),
            };
            actions.push(action(result));
        }
        self.first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id, _| listed.contains(id));
        Ok(actions)
    }

    async fn sweep_stranded(&self) -> Result<Vec<NodeAction>, Error> {
        let now = self.clock.now();
        let settled = now
            - chrono::Duration::from_std(self.settings().boot_grace)
                .unwrap_or(chrono::Duration::MAX);
        let active = self
            .store
            .list_nodes(&NodeQuery {
                states: vec![NodeState::Active],
                updated_at_or_before: Some(settled),
                ..NodeQuery::default()
            })
            .await?;
        let mut actions = Vec::new();
        for node in active.into_iter().filter(|n| n.auto_provisioned) {
            if self.held_by_running_task(&node).await?
                || self
                    .workspaces_on(node.id, live_workspace_statuses())
                    .await?
                    > 0
            {
                continue;
            }
            let result = match self.release(node.id).await {
                Ok(crate::ReleaseOutcome::Warm { .. }) => ActionResult::Released,
                Ok(other) => ActionResult::Skipped(format!("{other:?}")),
                Err(e) => ActionResult::Failed(e.to_string()),
            };
            actions.push(NodeAction::new(Phase::Stranded, &node, result));
        }
        Ok(actions)
    }

    /// Provisions nodes so each [pre-warm target](crate::PrewarmTarget) has its minimum of
    /// idle warm nodes (counting those already provisioning for it). They go warm when they
    /// report ready ([`node_ready`](Self::node_ready)).
    pub async fn maintain_prewarm(&self) -> Result<Vec<NodeAction>, Error> {
        let settings = self.settings();
        let now = self.clock.now();
        let mut actions = Vec::new();
        let mut wanted: HashMap<_, u32> = HashMap::new();
        for t in &settings.prewarm {
            let key = (t.owner, t.size, t.location.clone());
            let min = wanted.entry(key).or_default();
            *min = (*min).max(t.min_idle);
        }
        for ((owner, size, location), min) in wanted {
            let key = (owner, size, location.clone());
            let backing_off = self
                .prewarm_backoff
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&key)
                .is_some_and(|until| *until > now);
            if min == 0 || backing_off {
                continue;
            }
            let nodes = self
                .store
                .list_nodes(&NodeQuery {
                    owner: Some(owner),
                    states: vec![NodeState::Warm, NodeState::Provisioning],
                    ..NodeQuery::default()
                })
                .await?;
            let ready_or_coming = nodes
                .iter()
                .filter(|n| {
                    n.size == size
                        && location
                            .as_deref()
                            .is_none_or(|l| n.location.as_deref() == Some(l))
                })
                .filter(|n| match n.state {
                    NodeState::Warm => n.warm_until.is_some_and(|w| w > now),
                    _ => n.claimed_by.is_none(),
                })
                .count();
            let location = location.as_deref().or(settings.location.as_deref());
            for _ in ready_or_coming..min as usize {
                let provider = self.default_provider().to_owned();
                let result = match self.provision(&provider, owner, size, location, None).await {
                    Ok(node) => NodeAction::new(Phase::Prewarm, &node, ActionResult::Provisioned),
                    Err(e) => {
                        // Do not hammer a refusing provider: try this target again later.
                        let until = add_duration(now, settings.destroy_retry_interval);
                        self.prewarm_backoff
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(key.clone(), until);
                        NodeAction {
                            phase: Phase::Prewarm,
                            node_id: None,
                            provider_id: None,
                            result: ActionResult::Failed(e.to_string()),
                        }
                    }
                };
                let failed = matches!(result.result, ActionResult::Failed(_));
                tracing::info!(%owner, %size, result = ?result.result, "pre-warming a node");
                actions.push(result);
                if failed {
                    break;
                }
            }
        }
        Ok(actions)
    }
}
