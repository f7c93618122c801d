use std::sync::Arc;
use std::time::Duration;

use super::Fixture;
use crate::ids::{NodeId, TaskId, UserId};
use crate::model::VmSize;
use crate::node::NodeState;
use crate::store::{DestroyGuard, NodeQuery, Store, StoreError};

const MIN: Duration = Duration::from_secs(60);

/// A claim takes the warm node of the same owner and size with the earliest deadline
/// (the one warm the longest), and marks it active and claimed.
pub async fn a_claim_takes_the_oldest_warm_node_of_the_same_owner_and_size(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let other = Fixture::new(store.clone()).await;
    let task = TaskId::new();
    assert!(
        store
            .claim_warm_node(f.owner, VmSize::Small, "memory", None, task, f.now())
            .await
            .unwrap()
            .is_none(),
        "no warm node: none claimed"
    );
    let _other_owners = other.warm_node(VmSize::Small, 10 * MIN).await;
    let _other_size = f.warm_node(VmSize::Large, 10 * MIN).await;
    let later = f.warm_node(VmSize::Small, 20 * MIN).await;
    let sooner = f.warm_node(VmSize::Small, 5 * MIN).await;
    let mut elsewhere = f.node(VmSize::Small, NodeState::Warm, Some(f.later(MIN)));
    elsewhere.location = Some("hel1".into());
    store.insert_node(&elsewhere).await.unwrap();

    let claimed = store
        .claim_warm_node(
            f.owner,
            VmSize::Small,
            "memory",
            Some("nbg1"),
            task,
            f.now(),
        )
        .await
        .unwrap();
    assert!(claimed.is_none(), "the location filter holds");
    let claimed = store
        .claim_warm_node(f.owner, VmSize::Small, "hetzner", None, task, f.now())
        .await
        .unwrap();
    assert!(
        claimed.is_none(),
        "the provider filter holds: a warm node of another provider is never claimed"
    );
    let claimed = store
        .claim_warm_node(
            f.owner,
            VmSize::Small,
            "memory",
            Some("hel1"),
            task,
            f.now(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, elsewhere.id);

    f.advance(Duration::from_secs(1));
    let claimed = store
        .claim_warm_node(f.owner, VmSize::Small, "memory", None, task, f.now())
        .await
        .unwrap()
        .expect("a warm node");
    assert_eq!(claimed.id, sooner.id, "the earliest deadline goes first");
    assert_eq!(
        (claimed.state, claimed.claimed_by, claimed.warm_until),
        (NodeState::Active, Some(task), None)
    );
    assert_eq!(claimed.updated_at, f.now());
    assert_eq!(store.get_node(sooner.id).await.unwrap(), Some(claimed));
    let next = store
        .claim_warm_node(
            f.owner,
            VmSize::Small,
            "memory",
            None,
            TaskId::new(),
            f.now(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.id, later.id);
    assert!(
        store
            .claim_warm_node(
                f.owner,
                VmSize::Small,
                "memory",
                None,
                TaskId::new(),
                f.now()
            )
            .await
            .unwrap()
            .is_none(),
        "the other owner's node is never claimed"
    );
}

/// A warm node at or past its deadline is left for expiry, never claimed.
pub async fn an_expired_warm_node_is_never_claimed(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let node = f.warm_node(VmSize::Medium, MIN).await;
    f.advance(MIN);
    assert!(
        store
            .claim_warm_node(
                f.owner,
                VmSize::Medium,
                "memory",
                None,
                TaskId::new(),
                f.now()
            )
            .await
            .unwrap()
            .is_none()
    );
    let before = store
        .begin_destroy_node(node.id, DestroyGuard::ExpiredWarm, f.now())
        .await
        .unwrap();
    assert_eq!(before.state, NodeState::Warm);
    assert_eq!(
        store.get_node(node.id).await.unwrap().unwrap().state,
        NodeState::Destroying
    );
}

/// Sixteen concurrent claimers of one warm node: exactly one wins.
pub async fn concurrent_claimers_of_one_warm_node_have_exactly_one_winner(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let node = f.warm_node(VmSize::Small, 30 * MIN).await;
    let now = f.now();
    let claimers: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            let task = TaskId::new();
            let owner = f.owner;
            tokio::spawn(async move {
                store
                    .claim_warm_node(owner, VmSize::Small, "memory", None, task, now)
                    .await
                    .expect("claim")
                    .map(|n| (n, task))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for c in claimers {
        if let Some(won) = c.await.unwrap() {
            winners.push(won);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claimer wins one warm node");
    let (won, task) = &winners[0];
    assert_eq!(won.id, node.id);
    assert_eq!(
        store.get_node(node.id).await.unwrap().unwrap().claimed_by,
        Some(*task),
        "the stored claim is the winner's"
    );
}

/// Guarded node transitions refuse rows in the wrong state with a conflict.
pub async fn node_transitions_are_guarded(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let task = TaskId::new();
    let mut fresh = f.node(VmSize::Small, NodeState::Provisioning, None);
    fresh.claimed_by = Some(task);
    store.insert_node(&fresh).await.unwrap();
    assert!(matches!(
        store.insert_node(&fresh).await,
        Err(StoreError::Conflict { .. })
    ));
    store
        .set_node_provider_id(fresh.id, "srv-1", f.now())
        .await
        .unwrap();
    f.advance(Duration::from_secs(1));
    let ready = store.mark_node_ready(fresh.id, f.now()).await.unwrap();
    assert_eq!(
        (ready.state, ready.claimed_by, ready.provider_id.as_deref()),
        (NodeState::Active, Some(task), Some("srv-1"))
    );
    assert_eq!(
        store
            .mark_node_ready(fresh.id, f.now())
            .await
            .unwrap()
            .state,
        NodeState::Active,
        "ready is idempotent"
    );
    store.record_heartbeat(fresh.id, f.now()).await.unwrap();
    assert_eq!(
        store
            .get_node(fresh.id)
            .await
            .unwrap()
            .unwrap()
            .last_heartbeat_at,
        Some(f.now())
    );

    // Claimed and active: neither expiry nor the sweep may destroy it.
    for guard in [DestroyGuard::ExpiredWarm, DestroyGuard::Unclaimed] {
        let err = store
            .begin_destroy_node(fresh.id, guard, f.now())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { .. }),
            "{guard:?}: {err:?}"
        );
    }
    assert!(matches!(
        store.mark_node_destroyed(fresh.id, f.now()).await,
        Err(StoreError::Conflict { .. })
    ));

    let deadline = f.later(30 * MIN);
    let warm = store
        .release_node(fresh.id, deadline, f.now())
        .await
        .unwrap();
    assert_eq!(
        (warm.state, warm.warm_until, warm.claimed_by),
        (NodeState::Warm, Some(deadline), None)
    );
    assert!(
        matches!(
            store.release_node(fresh.id, deadline, f.now()).await,
            Err(StoreError::Conflict { .. })
        ),
        "release only from active"
    );
    assert!(matches!(
        store.mark_node_ready(fresh.id, f.now()).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(
        matches!(
            store
                .begin_destroy_node(fresh.id, DestroyGuard::ExpiredWarm, f.now())
                .await,
            Err(StoreError::Conflict { .. })
        ),
        "not due yet"
    );
    f.advance(30 * MIN);
    store
        .begin_destroy_node(fresh.id, DestroyGuard::ExpiredWarm, f.now())
        .await
        .unwrap();
    let destroying = store.get_node(fresh.id).await.unwrap().unwrap();
    assert_eq!(
        (destroying.state, destroying.warm_until),
        (NodeState::Destroying, None)
    );
    store
        .begin_destroy_node(fresh.id, DestroyGuard::Unclaimed, f.now())
        .await
        .expect("a retry while destroying is allowed");
    store.mark_node_destroyed(fresh.id, f.now()).await.unwrap();
    store
        .mark_node_destroyed(fresh.id, f.now())
        .await
        .expect("destroyed is idempotent");
    assert_eq!(
        store.get_node(fresh.id).await.unwrap().unwrap().state,
        NodeState::Destroyed
    );
    for guard in [
        DestroyGuard::ExpiredWarm,
        DestroyGuard::Unclaimed,
        DestroyGuard::Any,
    ] {
        assert!(
            store
                .begin_destroy_node(fresh.id, guard, f.now())
                .await
                .is_err(),
            "a destroyed node stays destroyed"
        );
    }

    // Lost: a claimed node fails, reporting its claimer; then any destroy is allowed.
    let mut lost = f.node(VmSize::Small, NodeState::Active, None);
    lost.claimed_by = Some(task);
    store.insert_node(&lost).await.unwrap();
    let before = store
        .mark_node_failed(lost.id, "no heartbeat", f.now())
        .await
        .unwrap();
    assert_eq!(
        before.claimed_by,
        Some(task),
        "the caller learns which task to fail"
    );
    let failed = store.get_node(lost.id).await.unwrap().unwrap();
    assert_eq!(
        (
            failed.state,
            failed.claimed_by,
            failed.error_message.as_deref()
        ),
        (NodeState::Failed, None, Some("no heartbeat"))
    );
    assert!(matches!(
        store.mark_node_failed(lost.id, "again", f.now()).await,
        Err(StoreError::Conflict { .. })
    ));
    store
        .begin_destroy_node(lost.id, DestroyGuard::Unclaimed, f.now())
        .await
        .unwrap();

    let mut claimed = f.node(VmSize::Small, NodeState::Active, None);
    claimed.claimed_by = Some(TaskId::new());
    store.insert_node(&claimed).await.unwrap();
    store
        .begin_destroy_node(claimed.id, DestroyGuard::Any, f.now())
        .await
        .expect("Any destroys a claimed node");

    for missing in [
        store.mark_node_ready(NodeId::new(), f.now()).await.err(),
        store
            .release_node(NodeId::new(), f.now(), f.now())
            .await
            .err(),
        store
            .begin_destroy_node(NodeId::new(), DestroyGuard::Any, f.now())
            .await
            .err(),
        store.record_heartbeat(NodeId::new(), f.now()).await.err(),
    ] {
        assert!(
            matches!(missing, Some(StoreError::NotFound { .. })),
            "{missing:?}"
        );
    }
}

/// The queries the sweeps need: by owner and state, due warm deadlines, age, heartbeats.
pub async fn node_queries_serve_the_sweeps(store: Arc<dyn Store>) {
    let f = Fixture::new(store.clone()).await;
    let old = f.warm_node(VmSize::Small, 10 * MIN).await;
    f.advance(60 * MIN);
    let young = f.warm_node(VmSize::Small, 10 * MIN).await;
    let mut active = f.node(VmSize::Large, NodeState::Active, None);
    active.provider = "other".into();
    store.insert_node(&active).await.unwrap();
    store.record_heartbeat(active.id, f.now()).await.unwrap();
    let ids = |nodes: Vec<crate::model::Node>| nodes.iter().map(|n| n.id).collect::<Vec<_>>();
    let mine = NodeQuery {
        owner: Some(f.owner),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_nodes(&mine).await.unwrap()),
        vec![old.id, young.id, active.id],
        "oldest first"
    );
    let warm = NodeQuery {
        owner: Some(f.owner),
        states: vec![NodeState::Warm],
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_nodes(&warm).await.unwrap()),
        vec![old.id, young.id]
    );
    let due = NodeQuery {
        owner: Some(f.owner),
        warm_until_at_or_before: Some(f.now()),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_nodes(&due).await.unwrap()),
        vec![old.id],
        "only past-deadline warm nodes"
    );
    let aged = NodeQuery {
        owner: Some(f.owner),
        created_at_or_before: Some(f.later(Duration::ZERO) - chrono::Duration::minutes(30)),
        ..Default::default()
    };
    assert_eq!(ids(store.list_nodes(&aged).await.unwrap()), vec![old.id]);
    let silent = NodeQuery {
        owner: Some(f.owner),
        heartbeat_at_or_before: Some(f.now() - chrono::Duration::minutes(1)),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_nodes(&silent).await.unwrap()),
        vec![old.id],
        "no heartbeat: counted from creation"
    );
    let by_provider = NodeQuery {
        owner: Some(f.owner),
        provider: Some("other".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_nodes(&by_provider).await.unwrap()),
        vec![active.id]
    );
    let stale = NodeQuery {
        owner: Some(f.owner),
        updated_at_or_before: Some(f.now() - chrono::Duration::minutes(1)),
        ..Default::default()
    };
    assert_eq!(ids(store.list_nodes(&stale).await.unwrap()), vec![old.id]);
    assert!(
        store
            .list_nodes(&NodeQuery {
                owner: Some(UserId::new()),
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
}
