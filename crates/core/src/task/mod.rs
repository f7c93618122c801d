//! The task-run state machine, as a pure function.
//!
//! ```text
//! draft ─▶ ready ─▶ queued ─▶ delegated ─▶ in_progress ─▶ completed
//!   │        │        │           │              │
//!   └────────┴────────┴───────────┴──────────────┴──▶ cancelled / failed ─(re-run)─▶ queued
//! ```
//!
//! `queued` (waiting for a node) and `delegated` (handed to a workspace that is starting)
//! are transient: a task held there beyond its limit fails with a clear reason. A terminal
//! task (completed, failed, cancelled) never moves except by an explicit re-run, and only a
//! failed or cancelled one can be re-run.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{Timestamp, add_duration};
use crate::ids::{NodeId, WorkspaceId};
use crate::model::{Task, string_enum};

string_enum!(
    /// Where a task is in its run.
    TaskStatus, "task status" {
        /// Saved to the backlog; editable.
        Draft => "draft",
        /// Reviewed and ready to run; editable.
        Ready => "ready",
        /// Run requested; waiting for a node.
        Queued => "queued",
        /// A node is assigned; its workspace is starting.
        Delegated => "delegated",
        /// The agent is working.
        InProgress => "in_progress",
        /// The agent finished cleanly; work committed to the task branch.
        Completed => "completed",
        /// The run failed; the workspace is kept for inspection.
        Failed => "failed",
        /// The user cancelled; the workspace is kept for inspection.
        Cancelled => "cancelled",
    }
);

impl TaskStatus {
    /// Completed, failed or cancelled.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Queued or delegated: states a task must leave within a time limit.
    #[must_use]
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Queued | Self::Delegated)
    }

    /// Queued, delegated or in progress: a run is under way.
    #[must_use]
    pub fn is_running(self) -> bool {
        matches!(self, Self::Queued | Self::Delegated | Self::InProgress)
    }

    /// Draft or ready: the task's text may still be edited.
    #[must_use]
    pub fn is_editable(self) -> bool {
        matches!(self, Self::Draft | Self::Ready)
    }
}

/// The time limits of the transient states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransientLimits {
    /// The longest a task may wait for a node (covers a cloud cold start).
    pub queued: Duration,
    /// The longest a workspace may take to start its agent.
    pub delegated: Duration,
}

impl Default for TransientLimits {
    fn default() -> Self {
        Self {
            queued: Duration::from_secs(15 * 60),
            delegated: Duration::from_secs(10 * 60),
        }
    }
}

/// Something that happens to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// The user marks a draft ready.
    MarkReady,
    /// The user runs a draft or ready task (Run Now creates a task and runs it at once).
    Run,
    /// A node was claimed or provisioned for the queued task.
    NodeAcquired {
        /// The node.
        node: NodeId,
    },
    /// The workspace reports that its agent started.
    AgentStarted {
        /// The workspace the agent runs in.
        workspace: WorkspaceId,
        /// The branch the workspace works on (may carry a `-2` suffix).
        branch: Option<String>,
    },
    /// The agent ended its turn cleanly and the work was committed.
    Completed {
        /// The branch the work is on.
        branch: Option<String>,
        /// The pull request the agent reported, if any.
        pr_url: Option<String>,
        /// The agent's last answer.
        summary: Option<String>,
    },
    /// The run failed: provisioning, agent error or crash, node lost.
    Failed {
        /// Why, in words a user can act on.
        reason: String,
    },
    /// The user cancels the run (or drops a backlog task).
    Cancel,
    /// The user runs a failed or cancelled task again.
    Rerun,
    /// Time passed: fails a task held in a transient state beyond its limit.
    Tick(TransientLimits),
}

/// What the caller must do after a transition. The machine decides; the runner acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEffect {
    /// Claim a warm node or provision one for the task.
    AcquireNode,
    /// Start a workspace for the task on this node.
    CreateWorkspace {
        /// The node.
        node: NodeId,
    },
    /// Stop the task's agent if it still runs (idempotent); the workspace is kept.
    StopAgent,
    /// Remove the task's workspace from its node.
    DestroyWorkspace,
    /// Return the task's node to the pool (warm) once its workspace is gone.
    ReleaseNode,
}

/// The part of a task the machine looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRunState {
    /// Its status.
    pub status: TaskStatus,
    /// When the status last changed.
    pub since: Timestamp,
}

/// An event the machine refuses in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a task that is {from} cannot take {event}")]
pub struct TransitionError {
    /// The state the event was refused in.
    pub from: TaskStatus,
    /// The refused event's name.
    pub event: &'static str,
}

impl TaskEvent {
    /// The event's name, for errors and logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::MarkReady => "mark-ready",
            Self::Run => "run",
            Self::NodeAcquired { .. } => "node-acquired",
            Self::AgentStarted { .. } => "agent-started",
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
            Self::Cancel => "cancel",
            Self::Rerun => "re-run",
            Self::Tick(_) => "tick",
        }
    }
}

/// The task-run transition function: the next state and the effects to run, or a refusal.
///
/// ```
/// use kiln_core::task::{transition, TaskEffect, TaskEvent, TaskRunState, TaskStatus};
/// # let now = kiln_core::ManualClock::starting_at_epoch();
/// # use kiln_core::LifecycleClock;
/// let draft = TaskRunState { status: TaskStatus::Draft, since: now.now() };
/// let (queued, effects) = transition(draft, &TaskEvent::Run, now.now()).unwrap();
/// assert_eq!(queued.status, TaskStatus::Queued);
/// assert_eq!(effects, vec![TaskEffect::AcquireNode]);
/// assert!(transition(queued, &TaskEvent::MarkReady, now.now()).is_err());
/// ```
pub fn transition(
    state: TaskRunState,
    event: &TaskEvent,
    now: Timestamp,
) -> Result<(TaskRunState, Vec<TaskEffect>), TransitionError> {
    use TaskStatus as S;
    let refuse = || TransitionError {
        from: state.status,
        event: event.name(),
    };
    let to = |status: TaskStatus, effects: Vec<TaskEffect>| {
        Ok((TaskRunState { status, since: now }, effects))
    };
    match (state.status, event) {
        (S::Draft, TaskEvent::MarkReady) => to(S::Ready, vec![]),
        (S::Draft | S::Ready, TaskEvent::Run) | (S::Failed | S::Cancelled, TaskEvent::Rerun) => {
            to(S::Queued, vec![TaskEffect::AcquireNode])
        }
        (S::Queued, TaskEvent::NodeAcquired { node }) => to(
            S::Delegated,
            vec![TaskEffect::CreateWorkspace { node: *node }],
        ),
        (S::Delegated, TaskEvent::AgentStarted { .. }) => to(S::InProgress, vec![]),
        // A fast agent may finish before its start report is processed.
        (S::Delegated | S::InProgress, TaskEvent::Completed { .. }) => to(
            S::Completed,
            vec![TaskEffect::DestroyWorkspace, TaskEffect::ReleaseNode],
        ),
        (S::Queued, TaskEvent::Failed { .. }) => to(S::Failed, vec![]),
        (S::Delegated | S::InProgress, TaskEvent::Failed { .. }) => {
            to(S::Failed, vec![TaskEffect::StopAgent])
        }
        (S::Draft | S::Ready | S::Queued, TaskEvent::Cancel) => to(S::Cancelled, vec![]),
        (S::Delegated | S::InProgress, TaskEvent::Cancel) => {
            to(S::Cancelled, vec![TaskEffect::StopAgent])
        }
        (status, TaskEvent::Tick(limits)) => {
            let limit = match status {
                S::Queued => limits.queued,
                S::Delegated => limits.delegated,
                _ => return Ok((state, vec![])),
            };
            if now < add_duration(state.since, limit) {
                return Ok((state, vec![]));
            }
            let effects = if status == S::Delegated {
                vec![TaskEffect::StopAgent]
            } else {
                vec![]
            };
            to(S::Failed, effects)
        }
        _ => Err(refuse()),
    }
}

/// The reason recorded when a [`TaskEvent::Tick`] fails a task held too long.
#[must_use]
pub fn timeout_reason(status: TaskStatus, limits: TransientLimits) -> String {
    match status {
        TaskStatus::Queued => format!(
            "no node became available within {} s (the queued-state limit)",
            limits.queued.as_secs()
        ),
        _ => format!(
            "the workspace did not start its agent within {} s (the delegated-state limit)",
            limits.delegated.as_secs()
        ),
    }
}

impl Task {
    /// Applies `event` to the task: moves its status and records what the event carries
    /// (node, workspace, branch, outcome, error). Returns the effects to run.
    pub fn apply(
        &mut self,
        event: &TaskEvent,
        now: Timestamp,
    ) -> Result<Vec<TaskEffect>, TransitionError> {
        let before = TaskRunState {
            status: self.status,
            since: self.status_changed_at,
        };
        let (after, effects) = transition(before, event, now)?;
        if after == before {
            return Ok(effects);
        }
        match event {
            TaskEvent::Run | TaskEvent::Rerun => {
                self.attempt += 1;
                self.error_message = None;
                self.summary = None;
                self.pr_url = None;
                self.output_branch = None;
                self.workspace_id = None;
                self.node_id = None;
            }
            TaskEvent::NodeAcquired { node } => self.node_id = Some(*node),
            TaskEvent::AgentStarted { workspace, branch } => {
                self.workspace_id = Some(*workspace);
                if branch.is_some() {
                    self.output_branch.clone_from(branch);
                }
            }
            TaskEvent::Completed {
                branch,
                pr_url,
                summary,
            } => {
                if branch.is_some() {
                    self.output_branch.clone_from(branch);
                }
                self.pr_url.clone_from(pr_url);
                self.summary.clone_from(summary);
            }
            TaskEvent::Failed { reason } => self.error_message = Some(reason.clone()),
            TaskEvent::Tick(limits) => {
                self.error_message = Some(timeout_reason(before.status, *limits));
            }
            TaskEvent::MarkReady | TaskEvent::Cancel => {}
        }
        self.status = after.status;
        self.status_changed_at = after.since;
        // A progress note belongs to the status it was given in.
        self.status_detail = None;
        self.updated_at = now;
        Ok(effects)
    }
}

#[cfg(test)]
mod tests;
