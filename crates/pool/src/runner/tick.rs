//! The runner's periodic work: transient-state limits and lost nodes.

use std::future::Future;

use kiln_core::node::{self, DestroyReason, NodeEffect, NodeEvent};
use kiln_core::task::TaskEvent;
use kiln_core::{DestroyGuard, NodeQuery, NodeState, Task, TaskStatus};

use super::TaskRunner;
use crate::error::Error;
use crate::sweep::Phase;

impl TaskRunner {
    /// Declares lost every active or warm node whose agent host sent heartbeats and then
    /// fell silent for [`heartbeat_timeout`](crate::Settings::heartbeat_timeout): the task
    /// running on it fails with that reason (its session and workspace follow), then the node
    /// is destroyed. Returns the failed tasks.
    pub async fn reap_lost_nodes(&self) -> Result<Vec<Task>, Error> {
        let pool = &self.inner.pool;
        let timeout = pool.settings().heartbeat_timeout;
        let now = self.now();
        let silent_since =
            now - chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        let lost = self
            .store()
            .list_nodes(&NodeQuery {
                states: vec![NodeState::Active, NodeState::Warm],
                heartbeat_at_or_before: Some(silent_since),
                ..NodeQuery::default()
            })
            .await?;
        let mut failed = Vec::new();
        for node in lost.into_iter().filter(|n| n.last_heartbeat_at.is_some()) {
            let Ok((_, effects)) = node::transition(
                crate::pool::lifecycle(&node),
                &NodeEvent::Destroy(DestroyReason::Lost),
                now,
            ) else {
                continue;
            };
            tracing::warn!(node = %node.id, last_heartbeat = ?node.last_heartbeat_at, "node lost");
            let reason = format!(
                "node lost: node {} stopped responding (no heartbeat for {} s)",
                node.id,
                timeout.as_secs()
            );
            for effect in effects {
                match effect {
                    NodeEffect::FailClaimingTask { task, .. } => {
                        let holds = self
                            .store()
                            .get_task(task)
                            .await?
                            .is_some_and(|t| t.node_id == Some(node.id));
                        let failure = TaskEvent::Failed {
                            reason: reason.clone(),
                        };
                        if holds && self.finish(task, &failure).await? {
                            failed.push(self.task(task).await?);
                        }
                    }
                    NodeEffect::DestroyAtProvider => {
                        if let Err(e) = self.chats_lost_with(node.id, &reason).await {
                            tracing::warn!(node = %node.id, error = %e, "could not end the lost node's chats");
                        }
                        let result = pool
                            .destroy_node(node.id, DestroyGuard::Any, Phase::Lost)
                            .await?;
                        tracing::info!(node = %node.id, ?result, "lost node destroyed");
                    }
                    NodeEffect::ScheduleExpiry { .. } => {}
                }
            }
        }
        Ok(failed)
    }

    /// Fails every task held in `queued` or `delegated` beyond its
    /// [limit](crate::Settings::task_limits), with a clear reason, and every task on a lost
    /// node ([`reap_lost_nodes`](Self::reap_lost_nodes)); returns them. Also discards the
    /// kept workspaces older than the retention limit
    /// ([`discard_expired_workspaces`](Self::discard_expired_workspaces)).
    pub async fn tick(&self) -> Result<Vec<Task>, Error> {
        let mut failed = match self.reap_lost_nodes().await {
            Ok(failed) => failed,
            Err(e) => {
                tracing::warn!(error = %e, "lost-node check failed");
                Vec::new()
            }
        };
        if let Err(e) = self.discard_expired_workspaces().await {
            tracing::warn!(error = %e, "kept-workspace retention check failed");
        }
        let limits = self.inner.pool.settings().task_limits;
        let candidates = self
            .store()
            .list_tasks_by_status(&[TaskStatus::Queued, TaskStatus::Delegated])
            .await?;
        for task in candidates {
            match self.finish(task.id, &TaskEvent::Tick(limits)).await {
                Ok(true) => {
                    let task = self.task(task.id).await?;
                    tracing::warn!(task = %task.id, reason = ?task.error_message, "task failed on its transient-state limit");
                    failed.push(task);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(task = %task.id, error = %e, "tick could not move the task")
                }
            }
        }
        Ok(failed)
    }

    /// Resumes what a previous process left ([`resume`](Self::resume)), then runs
    /// [`tick`](Self::tick) every [`task_tick_interval`](crate::Settings::task_tick_interval)
    /// until `shutdown` completes.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        if let Err(e) = self.resume().await {
            tracing::warn!(error = %e, "could not resume the runs a previous process left");
        }
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "task tick failed");
            }
            let interval = self.inner.pool.settings().task_tick_interval;
            tokio::select! {
                () = &mut shutdown => return,
                () = self.inner.pool.clock.sleep(interval) => {}
            }
        }
    }
}
