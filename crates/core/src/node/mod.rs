//! The node-lifecycle state machine, as a pure function.
//!
//! ```text
//! provisioning ─▶ active ⇄ warm ─▶ destroying ─▶ destroyed
//!       │            │       │          ▲
//!       └────────────┴───────┴─▶ failed ┘
//! ```
//!
//! A node is claimed only from `warm`, and only before its deadline. Expiry destroys only a
//! node that is still warm and due, so a node claimed a moment before its deadline is never
//! destroyed under its new task. Destroying ends only when the provider confirmed the delete.

use std::time::Duration;

use crate::clock::{Timestamp, add_duration};
use crate::ids::TaskId;
use crate::model::string_enum;

string_enum!(
    /// Where a node is in its lifecycle.
    NodeState, "node state" {
        /// Asked of the provider; its agent host has not reported ready yet.
        Provisioning => "provisioning",
        /// Ready, and running a workspace (or about to).
        Active => "active",
        /// Idle and kept for the next task until `warm_until`.
        Warm => "warm",
        /// Being deleted at the provider.
        Destroying => "destroying",
        /// Deleted at the provider.
        Destroyed => "destroyed",
        /// Provisioning failed or the node was lost; the sweep deletes it at the provider.
        Failed => "failed",
    }
);

impl NodeState {
    /// Destroyed: nothing exists at the provider any more.
    #[must_use]
    pub fn is_gone(self) -> bool {
        self == Self::Destroyed
    }

    /// States in which a server may exist at the provider.
    #[must_use]
    pub fn may_exist_at_provider(self) -> bool {
        !self.is_gone()
    }
}

/// Why a node is being destroyed (for the event log and for the machine's guards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyReason {
    /// Stuck provisioning, past max lifetime, or failed: found by the sweep.
    Sweep,
    /// Its agent host stopped sending heartbeats.
    Lost,
    /// An operator or the owner asked for it.
    Requested,
}

/// Something that happens to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// Its agent host registered and reports ready.
    Ready,
    /// A task claims the warm node.
    Claim {
        /// The task.
        task: TaskId,
    },
    /// Its last workspace is gone: keep it warm for `warm_timeout`.
    Release {
        /// How long to keep it warm (the setting in force now).
        warm_timeout: Duration,
    },
    /// Its warm deadline is checked; a node still warm and due starts destroying.
    Expire,
    /// Destroy it for `reason` (sweep, lost, requested). A claimed node is refused unless lost.
    Destroy(DestroyReason),
    /// The provider confirmed the delete.
    Destroyed,
    /// Provisioning failed, or the node was lost.
    Fail {
        /// Why.
        reason: String,
    },
}

impl NodeEvent {
    /// The event's name, for errors and logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Claim { .. } => "claim",
            Self::Release { .. } => "release",
            Self::Expire => "expire",
            Self::Destroy(_) => "destroy",
            Self::Destroyed => "destroyed",
            Self::Fail { .. } => "fail",
        }
    }
}

/// What the caller must do after a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEffect {
    /// Wake at this time to check the warm deadline.
    ScheduleExpiry {
        /// The deadline.
        at: Timestamp,
    },
    /// Delete the server at the provider (idempotent; retried until confirmed).
    DestroyAtProvider,
    /// Fail the task that had claimed the node, with this reason.
    FailClaimingTask {
        /// The task.
        task: TaskId,
        /// Why.
        reason: String,
    },
}

/// The part of a node the machine looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLifecycle {
    /// Its state.
    pub state: NodeState,
    /// While warm: its deadline.
    pub warm_until: Option<Timestamp>,
    /// While active for a task: that task.
    pub claimed_by: Option<TaskId>,
}

/// An event the machine refuses in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a node that is {from} cannot take {event}{}", .detail.map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct NodeTransitionError {
    /// The state the event was refused in.
    pub from: NodeState,
    /// The refused event's name.
    pub event: &'static str,
    /// Why, when the state alone does not say.
    pub detail: Option<&'static str>,
}

/// The node-lifecycle transition function.
///
/// ```
/// use std::time::Duration;
/// use kiln_core::node::{transition, NodeEvent, NodeLifecycle, NodeState, NodeEffect};
/// # use kiln_core::LifecycleClock;
/// # let now = kiln_core::ManualClock::starting_at_epoch().now();
/// let active = NodeLifecycle { state: NodeState::Active, warm_until: None, claimed_by: None };
/// let release = NodeEvent::Release { warm_timeout: Duration::from_secs(1800) };
/// let (warm, effects) = transition(active, &release, now).unwrap();
/// assert_eq!(warm.state, NodeState::Warm);
/// assert!(matches!(effects[0], NodeEffect::ScheduleExpiry { .. }));
/// // Not due yet: expiry is refused.
/// assert!(transition(warm, &NodeEvent::Expire, now).is_err());
/// ```
pub fn transition(
    node: NodeLifecycle,
    event: &NodeEvent,
    now: Timestamp,
) -> Result<(NodeLifecycle, Vec<NodeEffect>), NodeTransitionError> {
    use NodeState as S;
    let refuse = |detail| {
        Err(NodeTransitionError {
            from: node.state,
            event: event.name(),
            detail,
        })
    };
    let plain = |state| NodeLifecycle {
        state,
        warm_until: None,
        claimed_by: None,
    };
    match (node.state, event) {
        (S::Provisioning, NodeEvent::Ready) => Ok((
            NodeLifecycle {
                state: S::Active,
                ..node
            },
            vec![],
        )),
        (S::Warm, NodeEvent::Claim { task }) => match node.warm_until {
            Some(deadline) if now < deadline => Ok((
                NodeLifecycle {
                    state: S::Active,
                    warm_until: None,
                    claimed_by: Some(*task),
                },
                vec![],
            )),
            _ => refuse(Some("its warm deadline has passed")),
        },
        (S::Active, NodeEvent::Release { warm_timeout }) => {
            let at = add_duration(now, *warm_timeout);
            Ok((
                NodeLifecycle {
                    state: S::Warm,
                    warm_until: Some(at),
                    claimed_by: None,
                },
                vec![NodeEffect::ScheduleExpiry { at }],
            ))
        }
        (S::Warm, NodeEvent::Expire) => match node.warm_until {
            Some(deadline) if now >= deadline => {
                Ok((plain(S::Destroying), vec![NodeEffect::DestroyAtProvider]))
            }
            _ => refuse(Some("its warm deadline has not passed")),
        },
        (S::Active, NodeEvent::Destroy(reason)) if node.claimed_by.is_some() => {
            if let (DestroyReason::Lost, Some(task)) = (reason, node.claimed_by) {
                let fail = NodeEffect::FailClaimingTask {
                    task,
                    reason: "node lost".to_owned(),
                };
                Ok((
                    plain(S::Destroying),
                    vec![fail, NodeEffect::DestroyAtProvider],
                ))
            } else {
                refuse(Some("it is claimed by a task"))
            }
        }
        (
            S::Provisioning | S::Active | S::Warm | S::Failed | S::Destroying,
            NodeEvent::Destroy(_),
        ) => {
            // From destroying this is a retry of the provider delete.
            Ok((plain(S::Destroying), vec![NodeEffect::DestroyAtProvider]))
        }
        (S::Destroying, NodeEvent::Destroyed) => Ok((plain(S::Destroyed), vec![])),
        (S::Provisioning | S::Active | S::Warm, NodeEvent::Fail { reason }) => {
            let effects = node
                .claimed_by
                .map(|task| NodeEffect::FailClaimingTask {
                    task,
                    reason: reason.clone(),
                })
                .into_iter()
                .collect();
            Ok((
                NodeLifecycle {
                    state: S::Failed,
                    warm_until: None,
                    claimed_by: None,
                },
                effects,
            ))
        }
        _ => refuse(None),
    }
}

#[cfg(test)]
mod tests;
