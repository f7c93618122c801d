//! The warm pool on a manual clock: claims, warm timeouts, expiry, destroy retries, the sweep.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, MINUTE, eventually, settle};
use kiln_core::memory::Operation;
use kiln_core::{
    NodeQuery, NodeState, NodeStore, ProviderError, TaskId, VmSize, Workspace, WorkspaceId,
    WorkspaceStatus, clock::add_duration,
};
use kiln_pool::memory::simulate_node_boots;
use kiln_pool::{AcquireSource, ActionResult, Error, Phase, ReleaseOutcome, Settings};

fn unavailable() -> ProviderError {
    ProviderError::Unavailable {
        message: "502 bad gateway".into(),
    }
}

#[tokio::test]
async fn a_released_node_stays_warm_for_the_timeout_then_is_destroyed() {
    let h = Harness::new().await;
    let node = h.node(VmSize::Small, NodeState::Active);
    h.store.insert_node(&node).await.unwrap();
    let outcome = h.pool.release(node.id).await.unwrap();
    assert_eq!(
        outcome,
        ReleaseOutcome::Warm {
            until: add_duration(h.now(), 30 * MINUTE)
        }
    );
    h.clock.advance(30 * MINUTE - Duration::from_millis(1));
    assert!(h.pool.expire_due().await.unwrap().is_empty(), "not due yet");
    assert_eq!(h.node_state(node.id).await, NodeState::Warm);
    h.clock.advance(Duration::from_millis(1));
    let actions = h.pool.expire_due().await.unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].result, ActionResult::Destroyed);
    assert_eq!(h.node_state(node.id).await, NodeState::Destroyed);
    assert!(!h.server_exists(node.provider_id.as_deref().unwrap()));
}

#[tokio::test]
async fn a_claim_before_the_deadline_gets_the_warm_node_and_expiry_leaves_it() {
    let h = Harness::new().await;
    let warm = h.warm_node(VmSize::Small, 30 * MINUTE).await;
    h.clock.advance(29 * MINUTE);
    let task = TaskId::new();
    let got = h
        .pool
        .acquire(h.owner, VmSize::Small, None, task)
        .await
        .unwrap();
    assert_eq!(got.source, AcquireSource::Warm);
    assert_eq!(got.node.id, warm.id);
    assert_eq!(got.node.claimed_by, Some(task));
    assert_eq!(got.waited, Duration::ZERO);
    h.clock.advance(5 * MINUTE);
    assert!(h.pool.expire_due().await.unwrap().is_empty());
    assert_eq!(h.node_state(warm.id).await, NodeState::Active);
    assert_eq!(h.provider.calls(Operation::Destroy), 0);
}

#[tokio::test]
async fn a_node_of_another_size_or_owner_is_not_claimed() {
    let h = Harness::new().await;
    h.warm_node(VmSize::Medium, 30 * MINUTE).await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let got = h
        .pool
        .acquire(h.owner, VmSize::Small, None, TaskId::new())
        .await
        .unwrap();
    assert_eq!(got.source, AcquireSource::Provisioned);
    assert_eq!(got.node.size, VmSize::Small);
    assert_eq!(got.node.state, NodeState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_racing_a_claim_has_exactly_one_winner() {
    let h = Harness::new().await;
    // Two replicas whose clocks straddle the deadline: for the claimer the node is still
    // warm, for the expirer it is due. The store decides; never both.
    let late_clock = kiln_core::ManualClock::new(h.now());
    let expirer = Arc::new(kiln_pool::WarmPool::new(
        h.store.clone(),
        h.provider.clone(),
        Arc::new(late_clock.clone()),
        Settings::default(),
    ));
    let (mut claims, mut expiries) = (0, 0);
    for _ in 0..200 {
        let node = h.warm_node(VmSize::Large, Duration::from_millis(1)).await;
        late_clock.set(node.warm_until.unwrap());
        let task = TaskId::new();
        let claimer = h.pool.clone();
        let owner = h.owner;
        let claim = tokio::spawn(async move {
            claimer
                .store()
                .claim_warm_node(
                    owner,
                    VmSize::Large,
                    "memory",
                    None,
                    task,
                    claimer.clock().now(),
                )
                .await
        });
        let expirer = expirer.clone();
        let expire = tokio::spawn(async move { expirer.expire_due().await });
        let claimed = claim.await.unwrap().unwrap();
        let expired = expire.await.unwrap().unwrap();
        let destroyed = expired
            .iter()
            .any(|a| a.node_id == Some(node.id) && a.result == ActionResult::Destroyed);
        let state = h.node_state(node.id).await;
        match claimed {
            Some(n) => {
                assert_eq!(n.id, node.id);
                assert!(!destroyed, "a claimed node was destroyed");
                assert_eq!(state, NodeState::Active);
                claims += 1;
                // Done with it: take it out of later rounds.
                h.store
                    .begin_destroy_node(node.id, kiln_core::DestroyGuard::Any, h.now())
                    .await
                    .unwrap();
            }
            None => {
                assert!(destroyed, "neither the claim nor the expiry won");
                assert_eq!(state, NodeState::Destroyed);
                expiries += 1;
            }
        }
    }
    assert_eq!(claims + expiries, 200);
    println!("claims won {claims}, expiries won {expiries}");
}

#[tokio::test]
async fn failed_deletes_are_retried_with_backoff_then_left_to_the_sweep() {
    let h = Harness::new().await;
    let node = h.warm_node(VmSize::Small, MINUTE).await;
    for _ in 0..6 {
        h.provider.fail_next(Operation::Destroy, unavailable());
    }
    h.clock.advance(MINUTE);
    let first = h.pool.expire_due().await.unwrap();
    assert!(matches!(
        first[0].result,
        ActionResult::RetryScheduled { attempt: 1, .. }
    ));
    assert_eq!(h.node_state(node.id).await, NodeState::Destroying);
    // Retries wait 1, 2, 4, 8, 16 minutes.
    for (attempt, wait) in [(2u32, 1u64), (3, 2), (4, 4), (5, 8)] {
        h.clock
            .advance(MINUTE * wait as u32 - Duration::from_secs(1));
        assert!(
            h.pool.retry_destroys().await.is_empty(),
            "retry {attempt} early"
        );
        h.clock.advance(Duration::from_secs(1));
        let retried = h.pool.retry_destroys().await;
        assert!(
            matches!(retried[0].result, ActionResult::RetryScheduled { attempt: a, .. } if a == attempt),
            "{retried:?}"
        );
    }
    h.clock.advance(16 * MINUTE);
    let last = h.pool.retry_destroys().await;
    assert!(matches!(
        last[0].result,
        ActionResult::LeftToSweep { attempts: 6, .. }
    ));
    assert_eq!(h.provider.calls(Operation::Destroy), 6);
    assert_eq!(h.node_state(node.id).await, NodeState::Destroying);
    h.clock.advance(MINUTE);
    assert!(h.pool.retry_destroys().await.is_empty(), "no seventh try");
    // The sweep finishes the job.
    let report = h.pool.sweep().await;
    let swept: Vec<_> = report.phase(Phase::StuckDestroying).collect();
    assert_eq!(swept.len(), 1, "{report:?}");
    assert_eq!(swept[0].result, ActionResult::Destroyed);
    assert_eq!(h.node_state(node.id).await, NodeState::Destroyed);
    assert!(!h.server_exists(node.provider_id.as_deref().unwrap()));
}

#[tokio::test]
async fn the_sweep_destroys_warm_nodes_past_deadline_and_grace() {
    let h = Harness::new().await;
    // Expiry never ran (say the server was down): the sweep is the safety net.
    let stale = h.warm_node(VmSize::Small, MINUTE).await;
    let fresh = h.warm_node(VmSize::Small, 120 * MINUTE).await;
    h.clock
        .advance(MINUTE + 45 * MINUTE - Duration::from_secs(1));
    assert_eq!(h.pool.sweep().await.phase(Phase::StaleWarm).count(), 0);
    h.clock.advance(Duration::from_secs(1));
    let report = h.pool.sweep().await;
    let stale_actions: Vec<_> = report.phase(Phase::StaleWarm).collect();
    assert_eq!(stale_actions.len(), 1);
    assert_eq!(stale_actions[0].node_id, Some(stale.id));
    assert_eq!(h.node_state(stale.id).await, NodeState::Destroyed);
    assert_eq!(h.node_state(fresh.id).await, NodeState::Warm);
}

#[tokio::test]
async fn nodes_past_max_lifetime_are_destroyed_unless_they_run_a_workspace() {
    let h = Harness::new().await;
    let idle = h.node(VmSize::Small, NodeState::Active);
    let busy = h.node(VmSize::Small, NodeState::Active);
    let mut manual = h.node(VmSize::Small, NodeState::Active);
    manual.auto_provisioned = false;
    for n in [&idle, &busy, &manual] {
        h.store.insert_node(n).await.unwrap();
    }
    let workspace = Workspace {
        id: WorkspaceId::new(),
        node_id: busy.id,
        owner: h.owner,
        project_id: Some(h.project.id),
        task_id: None,
        session_id: None,
        branch: None,
        status: WorkspaceStatus::Running,
        created_at: h.now(),
        updated_at: h.now(),
    };
    kiln_core::TaskStore::create_workspace(&*h.store, &workspace)
        .await
        .unwrap();
    h.clock.advance(4 * 60 * MINUTE - Duration::from_secs(1));
    let report = h.pool.sweep().await;
    assert_eq!(report.phase(Phase::MaxLifetime).count(), 0);
    h.clock.advance(Duration::from_secs(1));
    let report = h.pool.sweep().await;
    let actions: Vec<_> = report.phase(Phase::MaxLifetime).collect();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|a| a.node_id == Some(idle.id) && a.result == ActionResult::Destroyed)
    );
    assert!(
        actions
            .iter()
            .any(|a| a.node_id == Some(busy.id) && matches!(a.result, ActionResult::Skipped(_)))
    );
    assert_eq!(h.node_state(idle.id).await, NodeState::Destroyed);
    assert_eq!(h.node_state(busy.id).await, NodeState::Active);
    assert_eq!(
        h.node_state(manual.id).await,
        NodeState::Active,
        "only auto-provisioned nodes"
    );
}

#[tokio::test]
async fn a_warm_deadline_never_passes_the_max_lifetime() {
    let h = Harness::new().await;
    let node = h.node(VmSize::Small, NodeState::Active);
    h.store.insert_node(&node).await.unwrap();
    h.clock.advance(4 * 60 * MINUTE - 10 * MINUTE);
    let outcome = h.pool.release(node.id).await.unwrap();
    assert_eq!(
        outcome,
        ReleaseOutcome::Warm {
            until: add_duration(node.created_at, 4 * 60 * MINUTE)
        }
    );
}

#[tokio::test]
async fn orphans_at_the_provider_are_destroyed_after_the_boot_grace() {
    let h = Harness::new().await;
    let known = h.warm_node(VmSize::Small, 60 * MINUTE).await;
    // A server with a Kiln label whose node the store has never heard of, created long ago…
    let old_orphan = h.provider.add_foreign_server(
        kiln_core::NodeId::new(),
        h.owner,
        Some(h.now() - chrono::Duration::hours(1)),
    );
    // …one created a minute ago (it may be a node whose row is being written)…
    let young_orphan = h.provider.add_foreign_server(
        kiln_core::NodeId::new(),
        h.owner,
        Some(h.now() - chrono::Duration::minutes(1)),
    );
    // …one whose node the store knows as destroyed…
    let gone = h.node(VmSize::Small, NodeState::Destroyed);
    h.store.insert_node(&gone).await.unwrap();
    let zombie = gone.provider_id.clone().unwrap();
    let report = h.pool.sweep().await;
    let orphans: Vec<_> = report.phase(Phase::Orphan).collect();
    let result_of = |pid: &str| {
        orphans
            .iter()
            .find(|a| a.provider_id.as_deref() == Some(pid))
            .map(|a| a.result.clone())
    };
    assert_eq!(result_of(&old_orphan), Some(ActionResult::Destroyed));
    assert!(matches!(
        result_of(&young_orphan),
        Some(ActionResult::Skipped(_))
    ));
    // …which has no creation time: timed from when the sweep first saw it.
    assert!(matches!(result_of(&zombie), Some(ActionResult::Skipped(_))));
    assert_eq!(result_of(known.provider_id.as_deref().unwrap()), None);
    h.clock.advance(10 * MINUTE);
    let report = h.pool.sweep().await;
    assert_eq!(
        report
            .phase(Phase::Orphan)
            .filter(|a| a.result == ActionResult::Destroyed)
            .count(),
        2
    );
    assert!(!h.server_exists(&young_orphan) && !h.server_exists(&zombie));
    assert!(h.server_exists(known.provider_id.as_deref().unwrap()));
}

#[tokio::test]
async fn every_sweep_phase_runs_even_when_one_fails() {
    let h = Harness::new().await;
    let stale = h.warm_node(VmSize::Small, MINUTE).await;
    h.clock.advance(60 * MINUTE);
    h.provider.fail_next(Operation::List, unavailable());
    let report = h.pool.sweep().await;
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].0, Phase::Orphan);
    assert!(report.errors[0].1.contains("502"), "{:?}", report.errors);
    assert_eq!(h.node_state(stale.id).await, NodeState::Destroyed);
}

#[tokio::test]
async fn a_new_pool_over_the_same_store_expires_what_is_due() {
    let h = Harness::new().await;
    let a = h.node(VmSize::Small, NodeState::Active);
    let b = h.node(VmSize::Small, NodeState::Active);
    h.store.insert_node(&a).await.unwrap();
    h.store.insert_node(&b).await.unwrap();
    h.pool.release(a.id).await.unwrap();
    h.clock.advance(20 * MINUTE);
    h.pool.release(b.id).await.unwrap();
    // The server restarts: the old pool is gone; a new one reads deadlines from the store.
    drop(h.pool.clone());
    let restarted = h.another_pool(Settings::default());
    h.clock.advance(10 * MINUTE);
    let expired = restarted.expire_due().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].node_id, Some(a.id));
    assert_eq!(h.node_state(b.id).await, NodeState::Warm);
    h.clock.advance(20 * MINUTE);
    assert_eq!(restarted.expire_due().await.unwrap().len(), 1);
    assert_eq!(h.node_state(b.id).await, NodeState::Destroyed);
}

#[tokio::test]
async fn a_restart_mid_destroy_is_finished_by_the_new_pools_sweep() {
    let h = Harness::new().await;
    let node = h.warm_node(VmSize::Small, MINUTE).await;
    h.provider.fail_next(Operation::Destroy, unavailable());
    h.clock.advance(MINUTE);
    h.pool.expire_due().await.unwrap();
    assert_eq!(h.node_state(node.id).await, NodeState::Destroying);
    // Restart before the retry: the retry schedule was in memory, the state is in the store.
    let restarted = h.another_pool(Settings::default());
    h.clock.advance(MINUTE);
    let report = restarted.sweep().await;
    assert_eq!(report.destroyed(), 1, "{report:?}");
    assert_eq!(h.node_state(node.id).await, NodeState::Destroyed);
}

#[tokio::test]
async fn a_changed_warm_timeout_applies_to_nodes_released_after_the_change() {
    let h = Harness::new().await;
    let before = h.node(VmSize::Small, NodeState::Active);
    let after = h.node(VmSize::Small, NodeState::Active);
    h.store.insert_node(&before).await.unwrap();
    h.store.insert_node(&after).await.unwrap();
    h.pool.release(before.id).await.unwrap();
    h.pool.update_settings(|s| s.warm_timeout = 5 * MINUTE);
    h.pool.release(after.id).await.unwrap();
    let until = |id| {
        let store = h.store.clone();
        async move {
            store
                .get_node(id)
                .await
                .unwrap()
                .unwrap()
                .warm_until
                .unwrap()
        }
    };
    assert_eq!(until(before.id).await, add_duration(h.now(), 30 * MINUTE));
    assert_eq!(until(after.id).await, add_duration(h.now(), 5 * MINUTE));
    h.clock.advance(5 * MINUTE);
    let expired = h.pool.expire_due().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].node_id, Some(after.id));
    assert_eq!(h.node_state(before.id).await, NodeState::Warm);
}

#[tokio::test]
async fn a_provider_refusal_is_a_typed_error_with_the_providers_message() {
    let h = Harness::new().await;
    h.provider.fail_next(
        Operation::Create,
        ProviderError::Quota {
            code: "resource_limit_exceeded".into(),
            message: "server limit reached".into(),
        },
    );
    let err = h
        .pool
        .acquire(h.owner, VmSize::Small, None, TaskId::new())
        .await
        .unwrap_err();
    let Error::Provisioning { node, source } = &err else {
        panic!("{err:?}")
    };
    assert!(matches!(source, ProviderError::Quota { .. }));
    assert!(err.to_string().contains("server limit reached"), "{err}");
    let row = h.store.get_node(*node).await.unwrap().unwrap();
    assert_eq!(row.state, NodeState::Failed);
    // The sweep cleans the failed row up.
    h.pool.sweep().await;
    assert_eq!(h.node_state(*node).await, NodeState::Destroyed);
}

#[tokio::test]
async fn a_cold_start_waits_for_ready_and_times_out_after_the_provisioning_timeout() {
    let h = Harness::new().await;
    // Boots take 3 minutes: the acquire waits for them.
    let boots = simulate_node_boots(h.pool.clone(), 3 * MINUTE).await;
    let pool = h.pool.clone();
    let owner = h.owner;
    let acquire = tokio::spawn(async move {
        pool.acquire(owner, VmSize::Small, None, TaskId::new())
            .await
    });
    settle().await;
    assert!(!acquire.is_finished());
    h.clock.advance(3 * MINUTE);
    let got = acquire.await.unwrap().unwrap();
    assert_eq!(got.source, AcquireSource::Provisioned);
    assert_eq!(got.waited, 3 * MINUTE);
    boots.abort();

    // A node that never reports ready: failed and destroyed after 10 minutes.
    let pool = h.pool.clone();
    let acquire = tokio::spawn(async move {
        pool.acquire(owner, VmSize::Small, None, TaskId::new())
            .await
    });
    for _ in 0..10 {
        settle().await;
        assert!(!acquire.is_finished());
        h.clock.advance(MINUTE);
    }
    let err = acquire.await.unwrap().unwrap_err();
    let Error::ProvisioningTimedOut { node, waited } = err else {
        panic!("{err:?}")
    };
    assert_eq!(waited, 10 * MINUTE);
    assert_eq!(h.node_state(node).await, NodeState::Destroyed);
    assert_eq!(h.provider.servers().len(), 1, "only the ready node is left");
}

#[tokio::test]
async fn nodes_stuck_provisioning_are_reaped_by_the_sweep() {
    let h = Harness::new().await;
    let stuck = h.node(VmSize::Small, NodeState::Provisioning);
    h.store.insert_node(&stuck).await.unwrap();
    h.clock.advance(19 * MINUTE);
    assert_eq!(
        h.pool.sweep().await.phase(Phase::StuckProvisioning).count(),
        0
    );
    h.clock.advance(MINUTE);
    let report = h.pool.sweep().await;
    let actions: Vec<_> = report.phase(Phase::StuckProvisioning).collect();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].result, ActionResult::Destroyed);
    assert!(!h.server_exists(stuck.provider_id.as_deref().unwrap()));
}

#[tokio::test]
async fn prewarming_keeps_the_minimum_of_idle_nodes() {
    let h = Harness::new().await;
    let target = kiln_pool::PrewarmTarget {
        owner: h.owner,
        size: VmSize::Small,
        location: None,
        min_idle: 2,
    };
    h.pool.update_settings(|s| s.prewarm = vec![target]);
    let _boots = simulate_node_boots(h.pool.clone(), 2 * MINUTE).await;
    let provisioned = h.pool.maintain_prewarm().await.unwrap();
    assert_eq!(provisioned.len(), 2);
    assert!(
        h.pool.maintain_prewarm().await.unwrap().is_empty(),
        "already coming"
    );
    settle().await;
    h.clock.advance(2 * MINUTE);
    let warm = || {
        let store = h.store.clone();
        async move {
            store
                .list_nodes(&NodeQuery {
                    states: vec![NodeState::Warm],
                    ..NodeQuery::default()
                })
                .await
                .unwrap()
        }
    };
    eventually("two pre-warmed nodes are warm", || async {
        warm().await.len() == 2
    })
    .await;
    // Held below the minimum: they stay warm until their max lifetime, not 30 minutes.
    for n in warm().await {
        assert_eq!(
            n.warm_until,
            Some(add_duration(n.created_at, 4 * 60 * MINUTE))
        );
    }
    // A task takes one: the pool provisions a replacement.
    let got = h
        .pool
        .acquire(h.owner, VmSize::Small, None, TaskId::new())
        .await
        .unwrap();
    assert_eq!(got.source, AcquireSource::Warm);
    assert_eq!(h.pool.maintain_prewarm().await.unwrap().len(), 1);
    // Releasing the claimed node when the minimum is met gives it the normal timeout.
    settle().await;
    h.clock.advance(2 * MINUTE);
    eventually("replacement warm", || async { warm().await.len() == 2 }).await;
    let ReleaseOutcome::Warm { until } = h.pool.release(got.node.id).await.unwrap() else {
        panic!("not released")
    };
    assert_eq!(until, add_duration(h.now(), 30 * MINUTE));
}

#[tokio::test]
async fn the_background_loop_expires_nodes_as_the_clock_passes_their_deadline() {
    let h = Harness::new().await;
    let node = h.node(VmSize::Small, NodeState::Active);
    h.store.insert_node(&node).await.unwrap();
    // An orphan older than the boot grace: the sweep that runs when the loop starts takes it.
    let orphan = h.provider.add_foreign_server(
        kiln_core::NodeId::new(),
        h.owner,
        Some(h.now() - chrono::Duration::hours(1)),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let pool = h.pool.clone();
    let running = tokio::spawn(async move {
        pool.run_until(async {
            let _ = stopped.await;
        })
        .await;
    });
    eventually("the start-up sweep destroyed the orphan", || async {
        !h.server_exists(&orphan)
    })
    .await;
    h.pool.release(node.id).await.unwrap();
    settle().await;
    h.clock.advance(29 * MINUTE);
    settle().await;
    assert_eq!(h.node_state(node.id).await, NodeState::Warm);
    h.clock.advance(MINUTE);
    eventually("the loop destroyed the node", || async {
        h.node_state(node.id).await == NodeState::Destroyed
    })
    .await;
    stop.send(()).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn a_retryable_create_error_is_retried_within_the_provisioning_timeout() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    h.provider.fail_next(
        Operation::Create,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        },
    );
    h.provider.fail_next(Operation::Create, unavailable());
    let pool = h.pool.clone();
    let owner = h.owner;
    let acquire = tokio::spawn(async move {
        pool.acquire(owner, VmSize::Small, None, TaskId::new())
            .await
    });
    settle().await;
    h.clock.advance(Duration::from_secs(30));
    settle().await;
    assert_eq!(h.provider.calls(Operation::Create), 2);
    // The second retry waits twice the retry interval.
    h.clock.advance(MINUTE);
    settle().await;
    assert!(!acquire.is_finished(), "retried too early");
    h.clock.advance(MINUTE);
    let got = tokio::time::timeout(Duration::from_secs(5), acquire)
        .await
        .expect("the acquire finished")
        .unwrap()
        .unwrap();
    assert_eq!(got.source, AcquireSource::Provisioned);
    assert_eq!(h.provider.calls(Operation::Create), 3);
    assert_eq!(h.provider.servers().len(), 1);
}

#[tokio::test]
async fn prewarming_pauses_after_a_provider_refusal() {
    let h = Harness::new().await;
    let target = kiln_pool::PrewarmTarget {
        owner: h.owner,
        size: VmSize::Small,
        location: None,
        min_idle: 2,
    };
    h.pool.update_settings(|s| s.prewarm = vec![target]);
    h.provider.fail_next(Operation::Create, unavailable());
    let first = h.pool.maintain_prewarm().await.unwrap();
    assert_eq!(first.len(), 1, "stops at the first refusal: {first:?}");
    assert!(matches!(first[0].result, ActionResult::Failed(_)));
    assert!(
        h.pool.maintain_prewarm().await.unwrap().is_empty(),
        "paused"
    );
    assert_eq!(h.provider.calls(Operation::Create), 1);
    h.clock.advance(MINUTE);
    let again = h.pool.maintain_prewarm().await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|a| a.result == ActionResult::Provisioned));
}
