use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::{LifecycleClock, ManualClock};

const WARM: Duration = Duration::from_secs(1800);

fn lifecycle(state: NodeState, now: Timestamp) -> Vec<NodeLifecycle> {
    // Every shape a node in `state` can have.
    match state {
        NodeState::Warm => vec![
            NodeLifecycle {
                state,
                warm_until: Some(now + chrono::Duration::seconds(60)),
                claimed_by: None,
            },
            NodeLifecycle {
                state,
                warm_until: Some(now - chrono::Duration::seconds(60)),
                claimed_by: None,
            },
        ],
        NodeState::Active | NodeState::Provisioning => vec![
            NodeLifecycle {
                state,
                warm_until: None,
                claimed_by: None,
            },
            NodeLifecycle {
                state,
                warm_until: None,
                claimed_by: Some(TaskId::new()),
            },
        ],
        _ => vec![NodeLifecycle {
            state,
            warm_until: None,
            claimed_by: None,
        }],
    }
}

fn events() -> Vec<NodeEvent> {
    vec![
        NodeEvent::Ready,
        NodeEvent::Claim {
            task: TaskId::new(),
        },
        NodeEvent::Release { warm_timeout: WARM },
        NodeEvent::Expire,
        NodeEvent::Destroy(DestroyReason::Sweep),
        NodeEvent::Destroy(DestroyReason::Lost),
        NodeEvent::Destroy(DestroyReason::Requested),
        NodeEvent::Destroyed,
        NodeEvent::Fail {
            reason: "gone".into(),
        },
    ]
}

fn expected(node: NodeLifecycle, event: &NodeEvent, now: Timestamp) -> Option<NodeState> {
    use NodeState as S;
    let due = node.warm_until.is_some_and(|d| now >= d);
    let claimed = node.claimed_by.is_some();
    match (node.state, event) {
        (S::Provisioning, NodeEvent::Ready) => Some(S::Active),
        (S::Warm, NodeEvent::Claim { .. }) if !due => Some(S::Active),
        (S::Active, NodeEvent::Release { .. }) => Some(S::Warm),
        (S::Warm, NodeEvent::Expire) if due => Some(S::Destroying),
        (S::Active, NodeEvent::Destroy(r)) if claimed => {
            (*r == DestroyReason::Lost).then_some(S::Destroying)
        }
        (
            S::Provisioning | S::Active | S::Warm | S::Failed | S::Destroying,
            NodeEvent::Destroy(_),
        ) => Some(S::Destroying),
        (S::Destroying, NodeEvent::Destroyed) => Some(S::Destroyed),
        (S::Provisioning | S::Active | S::Warm, NodeEvent::Fail { .. }) => Some(S::Failed),
        _ => None,
    }
}

#[test]
fn every_state_and_event_is_allowed_or_refused_as_specified() {
    let now = ManualClock::starting_at_epoch().now();
    let (mut allowed, mut refused) = (0, 0);
    for state in NodeState::ALL {
        for node in lifecycle(*state, now) {
            for event in events() {
                match (transition(node, &event, now), expected(node, &event, now)) {
                    (Ok((next, _)), Some(want)) => {
                        assert_eq!(next.state, want, "{node:?} + {}", event.name());
                        allowed += 1;
                    }
                    (Err(err), None) => {
                        assert_eq!((err.from, err.event), (node.state, event.name()));
                        refused += 1;
                    }
                    (got, want) => {
                        panic!("{node:?} + {}: got {got:?}, want {want:?}", event.name())
                    }
                }
            }
        }
    }
    assert_eq!(allowed, 35);
    assert_eq!(refused, 46);
}

#[test]
fn release_sets_the_deadline_and_claim_clears_it() {
    let clock = ManualClock::starting_at_epoch();
    let active = NodeLifecycle {
        state: NodeState::Active,
        warm_until: None,
        claimed_by: Some(TaskId::new()),
    };
    let (warm, effects) = transition(
        active,
        &NodeEvent::Release { warm_timeout: WARM },
        clock.now(),
    )
    .unwrap();
    let deadline = clock.now() + chrono::Duration::minutes(30);
    assert_eq!(
        warm,
        NodeLifecycle {
            state: NodeState::Warm,
            warm_until: Some(deadline),
            claimed_by: None
        }
    );
    assert_eq!(effects, vec![NodeEffect::ScheduleExpiry { at: deadline }]);

    clock.advance(Duration::from_secs(1799));
    let task = TaskId::new();
    let (claimed, _) = transition(warm, &NodeEvent::Claim { task }, clock.now()).unwrap();
    assert_eq!(
        claimed,
        NodeLifecycle {
            state: NodeState::Active,
            warm_until: None,
            claimed_by: Some(task)
        }
    );
    // The claimed node is no longer warm, so its old deadline cannot destroy it.
    clock.advance(Duration::from_secs(10));
    assert!(transition(claimed, &NodeEvent::Expire, clock.now()).is_err());
    assert!(
        transition(
            claimed,
            &NodeEvent::Destroy(DestroyReason::Sweep),
            clock.now()
        )
        .is_err()
    );
    // At the deadline, expiry wins and a claim is refused.
    assert!(transition(warm, &NodeEvent::Claim { task }, clock.now()).is_err());
    let (destroying, effects) = transition(warm, &NodeEvent::Expire, clock.now()).unwrap();
    assert_eq!(destroying.state, NodeState::Destroying);
    assert_eq!(effects, vec![NodeEffect::DestroyAtProvider]);
}

#[test]
fn a_lost_claimed_node_fails_its_task() {
    let now = ManualClock::starting_at_epoch().now();
    let task = TaskId::new();
    let active = NodeLifecycle {
        state: NodeState::Active,
        warm_until: None,
        claimed_by: Some(task),
    };
    let (_, effects) = transition(active, &NodeEvent::Destroy(DestroyReason::Lost), now).unwrap();
    assert_eq!(
        effects[0],
        NodeEffect::FailClaimingTask {
            task,
            reason: "node lost".into()
        }
    );
    let (failed, effects) = transition(
        active,
        &NodeEvent::Fail {
            reason: "no heartbeat".into(),
        },
        now,
    )
    .unwrap();
    assert_eq!(failed.state, NodeState::Failed);
    assert_eq!(
        effects,
        vec![NodeEffect::FailClaimingTask {
            task,
            reason: "no heartbeat".into()
        }]
    );
}

fn arb_event() -> impl Strategy<Value = NodeEvent> {
    prop_oneof![
        Just(NodeEvent::Ready),
        Just(NodeEvent::Claim {
            task: TaskId::new()
        }),
        (0u64..3600).prop_map(|s| NodeEvent::Release {
            warm_timeout: Duration::from_secs(s)
        }),
        Just(NodeEvent::Expire),
        Just(NodeEvent::Destroy(DestroyReason::Sweep)),
        Just(NodeEvent::Destroy(DestroyReason::Requested)),
        Just(NodeEvent::Destroy(DestroyReason::Lost)),
        Just(NodeEvent::Destroyed),
        Just(NodeEvent::Fail { reason: "x".into() }),
    ]
}

proptest! {
    #[test]
    fn claims_only_from_warm_and_expiry_never_hits_a_claimed_node(
        steps in proptest::collection::vec((arb_event(), 0u64..2400), 1..80)
    ) {
        let clock = ManualClock::starting_at_epoch();
        let mut node = NodeLifecycle { state: NodeState::Provisioning, warm_until: None, claimed_by: None };
        for (event, secs) in steps {
            clock.advance(Duration::from_secs(secs));
            let before = node;
            if let Ok((after, _)) = transition(node, &event, clock.now()) {
                if matches!(event, NodeEvent::Claim { .. }) {
                    prop_assert_eq!(before.state, NodeState::Warm);
                    prop_assert!(before.warm_until.unwrap() > clock.now());
                }
                if matches!(event, NodeEvent::Expire | NodeEvent::Destroy(DestroyReason::Sweep | DestroyReason::Requested)) {
                    prop_assert!(before.claimed_by.is_none(), "destroyed under a task");
                }
                if before.state == NodeState::Destroyed {
                    prop_assert!(false, "a destroyed node moved");
                }
                prop_assert_eq!(after.warm_until.is_some(), after.state == NodeState::Warm);
                node = after;
            }
        }
    }
}
