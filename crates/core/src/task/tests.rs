use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::{LifecycleClock, ManualClock};

fn events() -> Vec<TaskEvent> {
    vec![
        TaskEvent::MarkReady,
        TaskEvent::Run,
        TaskEvent::NodeAcquired {
            node: NodeId::new(),
        },
        TaskEvent::AgentStarted {
            workspace: WorkspaceId::new(),
            branch: Some("task/x".into()),
        },
        TaskEvent::Completed {
            branch: None,
            pr_url: None,
            summary: Some("done".into()),
        },
        TaskEvent::Failed {
            reason: "boom".into(),
        },
        TaskEvent::Cancel,
        TaskEvent::Rerun,
    ]
}

/// The whole table: for each state and event, the expected next state (None = refused).
fn expected(from: TaskStatus, event: &TaskEvent) -> Option<TaskStatus> {
    use TaskStatus as S;
    match (from, event) {
        (S::Draft, TaskEvent::MarkReady) => Some(S::Ready),
        (S::Draft | S::Ready, TaskEvent::Run) => Some(S::Queued),
        (S::Queued, TaskEvent::NodeAcquired { .. }) => Some(S::Delegated),
        (S::Delegated, TaskEvent::AgentStarted { .. }) => Some(S::InProgress),
        (S::Delegated | S::InProgress, TaskEvent::Completed { .. }) => Some(S::Completed),
        (S::Queued | S::Delegated | S::InProgress, TaskEvent::Failed { .. }) => Some(S::Failed),
        (S::Draft | S::Ready | S::Queued | S::Delegated | S::InProgress, TaskEvent::Cancel) => {
            Some(S::Cancelled)
        }
        (S::Failed | S::Cancelled, TaskEvent::Rerun) => Some(S::Queued),
        _ => None,
    }
}

#[test]
fn every_state_and_event_is_allowed_or_refused_as_specified() {
    let now = ManualClock::starting_at_epoch().now();
    let mut allowed = 0;
    let mut refused = 0;
    for from in TaskStatus::ALL {
        for event in events() {
            let state = TaskRunState {
                status: *from,
                since: now,
            };
            let later = now + chrono::Duration::seconds(1);
            match (transition(state, &event, later), expected(*from, &event)) {
                (Ok((next, _)), Some(want)) => {
                    assert_eq!(next.status, want, "{from} + {}", event.name());
                    assert_eq!(next.since, later, "the status change time moves");
                    allowed += 1;
                }
                (Err(err), None) => {
                    assert_eq!(err.from, *from);
                    assert_eq!(err.event, event.name());
                    refused += 1;
                }
                (got, want) => panic!("{from} + {}: got {got:?}, want {want:?}", event.name()),
            }
        }
    }
    assert_eq!(allowed + refused, TaskStatus::ALL.len() * events().len());
    assert_eq!(allowed, 17);
}

#[test]
fn effects_of_each_step_of_a_run() {
    let now = ManualClock::starting_at_epoch().now();
    let node = NodeId::new();
    let s = |status| TaskRunState { status, since: now };
    let effects = |status, event: TaskEvent| transition(s(status), &event, now).unwrap().1;
    assert_eq!(
        effects(TaskStatus::Ready, TaskEvent::Run),
        vec![TaskEffect::AcquireNode]
    );
    assert_eq!(
        effects(TaskStatus::Queued, TaskEvent::NodeAcquired { node }),
        vec![TaskEffect::CreateWorkspace { node }]
    );
    assert_eq!(
        effects(
            TaskStatus::InProgress,
            TaskEvent::Completed {
                branch: None,
                pr_url: None,
                summary: None
            }
        ),
        vec![TaskEffect::DestroyWorkspace, TaskEffect::ReleaseNode]
    );
    // Failure and cancel keep the workspace: no destroy, no release.
    assert_eq!(
        effects(
            TaskStatus::InProgress,
            TaskEvent::Failed { reason: "x".into() }
        ),
        vec![TaskEffect::StopAgent]
    );
    assert_eq!(
        effects(TaskStatus::InProgress, TaskEvent::Cancel),
        vec![TaskEffect::StopAgent]
    );
    assert_eq!(effects(TaskStatus::Queued, TaskEvent::Cancel), vec![]);
    assert_eq!(
        effects(TaskStatus::Cancelled, TaskEvent::Rerun),
        vec![TaskEffect::AcquireNode]
    );
}

#[test]
fn a_task_held_in_a_transient_state_fails_after_its_limit() {
    let clock = ManualClock::starting_at_epoch();
    let limits = TransientLimits {
        queued: Duration::from_secs(600),
        delegated: Duration::from_secs(60),
    };
    let queued = TaskRunState {
        status: TaskStatus::Queued,
        since: clock.now(),
    };
    clock.advance(Duration::from_secs(599));
    let (same, effects) = transition(queued, &TaskEvent::Tick(limits), clock.now()).unwrap();
    assert_eq!((same, effects), (queued, vec![]));
    clock.advance(Duration::from_secs(1));
    let (failed, _) = transition(queued, &TaskEvent::Tick(limits), clock.now()).unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);

    let delegated = TaskRunState {
        status: TaskStatus::Delegated,
        since: clock.now(),
    };
    clock.advance(Duration::from_secs(61));
    let (failed, effects) = transition(delegated, &TaskEvent::Tick(limits), clock.now()).unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(effects, vec![TaskEffect::StopAgent]);

    // Non-transient states ignore time.
    for status in [
        TaskStatus::Draft,
        TaskStatus::InProgress,
        TaskStatus::Completed,
    ] {
        let state = TaskRunState {
            status,
            since: clock.now(),
        };
        clock.advance(Duration::from_secs(86_400));
        assert_eq!(
            transition(state, &TaskEvent::Tick(limits), clock.now())
                .unwrap()
                .0,
            state
        );
    }
}

fn sample_task(now: Timestamp) -> Task {
    Task {
        id: crate::TaskId::new(),
        project_id: crate::ProjectId::new(),
        owner: crate::UserId::new(),
        title: "t".into(),
        description: "d".into(),
        priority: 0,
        status: TaskStatus::Draft,
        status_detail: None,
        status_changed_at: now,
        output_branch: None,
        pr_url: None,
        summary: None,
        error_message: None,
        session_id: None,
        workspace_id: None,
        node_id: None,
        vm_size_override: None,
        agent_hint: None,
        attempt: 0,
        created_at: now,
        updated_at: now,
    }
}

#[test]
fn applying_events_records_what_they_carry() {
    let clock = ManualClock::starting_at_epoch();
    let mut task = sample_task(clock.now());
    let node = NodeId::new();
    let workspace = WorkspaceId::new();
    task.apply(&TaskEvent::Run, clock.now()).unwrap();
    assert_eq!(task.attempt, 1);
    task.apply(&TaskEvent::NodeAcquired { node }, clock.now())
        .unwrap();
    task.apply(
        &TaskEvent::AgentStarted {
            workspace,
            branch: Some("task/x-2".into()),
        },
        clock.now(),
    )
    .unwrap();
    task.apply(
        &TaskEvent::Failed {
            reason: "agent crashed".into(),
        },
        clock.now(),
    )
    .unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.node_id, Some(node));
    assert_eq!(task.workspace_id, Some(workspace));
    assert_eq!(task.output_branch.as_deref(), Some("task/x-2"));
    assert_eq!(task.error_message.as_deref(), Some("agent crashed"));

    clock.advance(Duration::from_secs(5));
    task.apply(&TaskEvent::Rerun, clock.now()).unwrap();
    assert_eq!((task.status, task.attempt), (TaskStatus::Queued, 2));
    assert_eq!(task.error_message, None, "a re-run starts clean");
    assert_eq!(task.status_changed_at, clock.now());

    let before = task.clone();
    assert!(task.apply(&TaskEvent::MarkReady, clock.now()).is_err());
    assert_eq!(task, before, "a refused event changes nothing");

    let limits = TransientLimits {
        queued: Duration::from_secs(1),
        ..Default::default()
    };
    clock.advance(Duration::from_secs(2));
    task.apply(&TaskEvent::Tick(limits), clock.now()).unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(
        task.error_message
            .unwrap()
            .contains("no node became available")
    );
}

fn arb_event() -> impl Strategy<Value = TaskEvent> {
    prop_oneof![
        Just(TaskEvent::MarkReady),
        Just(TaskEvent::Run),
        Just(TaskEvent::NodeAcquired {
            node: NodeId::new()
        }),
        Just(TaskEvent::AgentStarted {
            workspace: WorkspaceId::new(),
            branch: None
        }),
        Just(TaskEvent::Completed {
            branch: None,
            pr_url: None,
            summary: None
        }),
        Just(TaskEvent::Failed { reason: "x".into() }),
        Just(TaskEvent::Cancel),
        Just(TaskEvent::Rerun),
        (0u64..2000).prop_map(|s| TaskEvent::Tick(TransientLimits {
            queued: Duration::from_secs(s),
            delegated: Duration::from_secs(s / 2),
        })),
    ]
}

proptest! {
    #[test]
    fn terminal_tasks_move_only_by_rerun(
        steps in proptest::collection::vec((arb_event(), 0u64..1000), 1..60)
    ) {
        let clock = ManualClock::starting_at_epoch();
        let mut state = TaskRunState { status: TaskStatus::Draft, since: clock.now() };
        for (event, secs) in steps {
            clock.advance(Duration::from_secs(secs));
            let before = state;
            if let Ok((after, effects)) = transition(state, &event, clock.now()) {
                if before.status.is_terminal() && after.status != before.status {
                    prop_assert_eq!(&event, &TaskEvent::Rerun);
                    prop_assert_ne!(before.status, TaskStatus::Completed);
                }
                // Only a clean finish destroys a workspace or releases a node.
                if effects.contains(&TaskEffect::DestroyWorkspace)
                    || effects.contains(&TaskEffect::ReleaseNode)
                {
                    prop_assert_eq!(after.status, TaskStatus::Completed);
                }
                // A node is acquired only when a run starts.
                if effects.contains(&TaskEffect::AcquireNode) {
                    prop_assert_eq!(after.status, TaskStatus::Queued);
                }
                state = after;
            } else {
                prop_assert!(
                    expected(before.status, &event).is_none(),
                    "refused an allowed event"
                );
            }
        }
    }
}
