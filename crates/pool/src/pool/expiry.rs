//! Expiry, provider deletes with retries, and the pool's background loop.

use std::future::Future;

use kiln_core::clock::add_duration;
use kiln_core::node::{self, NodeEvent};
use kiln_core::{DestroyGuard, NodeId, NodeQuery, NodeState, StoreError, Timestamp, UserId};

use super::{DestroyRetry, WarmPool, lifecycle};
use crate::error::Error;
use crate::sweep::{ActionResult, NodeAction, Phase};

impl WarmPool {
    /// Destroys every warm node whose deadline has passed (the deadlines are read from the
    /// store, so a restarted pool expires what is due). A node claimed a moment earlier is
    /// left alone: the store's guard lets only one of claim and expiry win.
    pub async fn expire_due(&self) -> Result<Vec<NodeAction>, Error> {
        let now = self.clock.now();
        let due = self
            .store
            .list_nodes(&NodeQuery {
                states: vec![NodeState::Warm],
                warm_until_at_or_before: Some(now),
                ..NodeQuery::default()
            })
            .await?;
        let mut actions = Vec::new();
        for node in due {
            if node::transition(lifecycle(&node), &NodeEvent::Expire, now).is_err() {
                continue;
            }
            let result = self
                .destroy_node(node.id, DestroyGuard::ExpiredWarm, Phase::Expiry)
                .await
                .unwrap_or_else(|e| ActionResult::Failed(e.to_string()));
            actions.push(NodeAction::new(Phase::Expiry, &node, result));
        }
        Ok(actions)
    }

    /// Starts destroying a node if `guard` holds, then deletes it at the provider; a failed
    /// delete is retried with backoff by [`retry_destroys`](Self::retry_destroys).
    pub(crate) async fn destroy_node(
        &self,
        node_id: NodeId,
        guard: DestroyGuard,
        phase: Phase,
    ) -> Result<ActionResult, Error> {
        let before = match self
            .store
            .begin_destroy_node(node_id, guard, self.clock.now())
            .await
        {
            Ok(before) => before,
            Err(StoreError::Conflict { message }) => return Ok(ActionResult::Skipped(message)),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(node = %node_id, ?phase, from = %before.state, "destroying node");
        self.announce(before.owner, node_id).await;
        Ok(self
            .delete_at_provider(
                node_id,
                before.owner,
                &before.provider,
                before.provider_id,
                1,
                phase,
            )
            .await)
    }

    /// One provider delete attempt for a node in `destroying`.
    async fn delete_at_provider(
        &self,
        node_id: NodeId,
        owner: UserId,
        provider: &str,
        provider_id: Option<String>,
        attempt: u32,
        phase: Phase,
    ) -> ActionResult {
        let result = match (&provider_id, self.provider_named(provider)) {
            (None, _) => Ok(()),
            (Some(id), Ok(at)) => at.destroy(id).await,
            (Some(_), Err(e)) => Err(kiln_core::ProviderError::Unavailable {
                message: e.to_string(),
            }),
        };
        let settings = self.settings();
        let lock = |s: &Self| {
            s.retries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&node_id)
        };
        match result {
            Ok(()) => {
                lock(self);
                match self
                    .store
                    .mark_node_destroyed(node_id, self.clock.now())
                    .await
                {
                    Ok(()) => {
                        tracing::info!(node = %node_id, ?phase, "node destroyed");
                        self.announce(owner, node_id).await;
                        ActionResult::Destroyed
                    }
                    Err(e) => ActionResult::Failed(format!("deleted at the provider: {e}")),
                }
            }
            Err(error) if attempt >= settings.destroy_max_attempts => {
                lock(self);
                tracing::warn!(node = %node_id, attempt, %error, "provider delete failed; left to the sweep");
                ActionResult::LeftToSweep {
                    attempts: attempt,
                    error: error.to_string(),
                }
            }
            Err(error) => {
                let backoff = settings
                    .destroy_retry_interval
                    .saturating_mul(1 << (attempt - 1).min(16));
                let next_at = add_duration(self.clock.now(), backoff);
                tracing::warn!(node = %node_id, attempt, %error, retry_at = %next_at, "provider delete failed; will retry");
                if let Some(provider_id) = provider_id {
                    self.retries
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(
                            node_id,
                            DestroyRetry {
                                attempt,
                                next_at,
                                provider_id,
                                owner,
                                phase,
                                provider: provider.to_owned(),
                            },
                        );
                }
                self.signal();
                ActionResult::RetryScheduled {
                    attempt,
                    at: next_at,
                    error: error.to_string(),
                }
            }
        }
    }

    /// Retries the provider deletes that are due.
    pub async fn retry_destroys(&self) -> Vec<NodeAction> {
        let now = self.clock.now();
        let due: Vec<(NodeId, DestroyRetry)> = self
            .retries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, r)| r.next_at <= now)
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        let mut actions = Vec::new();
        for (node_id, retry) in due {
            let result = self
                .delete_at_provider(
                    node_id,
                    retry.owner,
                    &retry.provider,
                    Some(retry.provider_id.clone()),
                    retry.attempt + 1,
                    retry.phase,
                )
                .await;
            actions.push(NodeAction {
                phase: Phase::DestroyRetry,
                node_id: Some(node_id),
                provider_id: Some(retry.provider_id),
                result,
            });
        }
        actions
    }

    /// Whether this pool is retrying the delete of `node` itself.
    pub(crate) fn is_retrying(&self, node: NodeId) -> bool {
        self.retries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&node)
    }

    /// When the pool's loop must next wake: the earliest warm deadline, delete retry or
    /// `next_sweep`.
    pub async fn next_wake(&self, next_sweep: Timestamp) -> Timestamp {
        let mut wake = next_sweep;
        if let Some(retry) = self
            .retries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|r| r.next_at)
            .min()
        {
            wake = wake.min(retry);
        }
        let now = self.clock.now();
        if let Some(backoff) = self
            .prewarm_backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|until| **until > now)
            .min()
        {
            wake = wake.min(*backoff);
        }
        match self
            .store
            .list_nodes(&NodeQuery {
                states: vec![NodeState::Warm],
                ..NodeQuery::default()
            })
            .await
        {
            Ok(nodes) => {
                if let Some(deadline) = nodes.iter().filter_map(|n| n.warm_until).min() {
                    wake = wake.min(deadline);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read warm deadlines; retrying soon");
                wake = wake.min(add_duration(
                    self.clock.now(),
                    self.settings().ready_poll_interval,
                ));
            }
        }
        wake
    }

    /// One pass of the loop's work other than the sweep: expiry, delete retries,
    /// pre-warming.
    pub async fn tick(&self) -> Vec<NodeAction> {
        let mut actions = match self.expire_due().await {
            Ok(actions) => actions,
            Err(e) => {
                tracing::warn!(error = %e, "expiry pass failed");
                Vec::new()
            }
        };
        actions.extend(self.retry_destroys().await);
        match self.maintain_prewarm().await {
            Ok(more) => actions.extend(more),
            Err(e) => tracing::warn!(error = %e, "pre-warm pass failed"),
        }
        actions
    }

    /// Runs the pool until `shutdown` completes: a sweep at start and every
    /// [`Settings::sweep_interval`](crate::Settings::sweep_interval), expiry at each warm deadline, delete retries when due,
    /// and pre-warming whenever a node changes.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        self.ensure_feed().await;
        let mut changes = self.signals.subscribe();
        let mut next_sweep = self.clock.now();
        loop {
            changes.mark_unchanged();
            if self.clock.now() >= next_sweep {
                self.sweep().await;
                next_sweep = add_duration(self.clock.now(), self.settings().sweep_interval);
            }
            for action in self.tick().await {
                tracing::debug!(?action, "pool action");
            }
            let wake = self.next_wake(next_sweep).await;
            tokio::select! {
                () = &mut shutdown => return,
                () = self.clock.sleep_until(wake) => {}
                _ = changes.changed() => {}
            }
        }
    }
}
