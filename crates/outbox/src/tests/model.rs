//! Model-based property test: random interleavings of enqueue, `enqueue_in` inside a host
//! transaction that commits or rolls back, delivery steps under a scripted receiver
//! (success, outage, refused credentials, rejection of chosen messages, a size limit),
//! commit failures, restarts and overflow under both overflow policies, checked against
//! what must hold.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_core::{
    ChatMessage, DeliveryReport, LifecycleClock, ManualClock, MessageId, MessageSink, Role,
    SessionId, SinkError,
};
use proptest::prelude::*;

use super::group_commit::notice_count;
use super::message;
use crate::body;
use crate::flusher::{Flusher, Step};
use crate::{Outbox, OutboxConfig, OutboxError, Overflow, Route, SingleSink};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Down,
    Unauthorized,
}

#[derive(Debug, Clone)]
enum Action {
    Enqueue {
        session: usize,
        n: usize,
        poison: bool,
        big: bool,
    },
    /// `enqueue_in` inside a host transaction on the outbox file, then commit or roll back.
    EnqueueIn {
        session: usize,
        n: usize,
        poison: bool,
        commit: bool,
    },
    Step(usize),
    SetMode(Mode),
    NamePoison(bool),
    Advance(u64),
    Reopen,
    FailCommit {
        session: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..3usize, 1..5usize, prop::bool::weighted(0.15), prop::bool::weighted(0.08))
            .prop_map(|(session, n, poison, big)| Action::Enqueue { session, n, poison, big }),
        3 => (0..3usize, 1..4usize, prop::bool::weighted(0.15), prop::bool::weighted(0.75))
            .prop_map(|(session, n, poison, commit)| Action::EnqueueIn { session, n, poison, commit }),
        6 => (1..4usize).prop_map(Action::Step),
        2 => prop_oneof![Just(Mode::Up), Just(Mode::Down), Just(Mode::Unauthorized)]
            .prop_map(Action::SetMode),
        1 => any::<bool>().prop_map(Action::NamePoison),
        2 => (0..400u64).prop_map(Action::Advance),
        1 => Just(Action::Reopen),
        1 => (0..3usize).prop_map(|session| Action::FailCommit { session }),
    ]
}

/// The receiver: records every attempt, answers as scripted.
#[derive(Debug)]
struct ScriptedSink {
    state: Mutex<SinkState>,
}

#[derive(Debug)]
struct SinkState {
    mode: Mode,
    name_poison: bool,
    poison: HashSet<MessageId>,
    max_body: usize,
    resent_after_ack: Vec<MessageId>,
    acked: Vec<ChatMessage>,
}

#[async_trait]
impl MessageSink for ScriptedSink {
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
        let mut s = self.state.lock().unwrap();
        let again: Vec<MessageId> = batch
            .iter()
            .map(|m| m.id)
            .filter(|id| s.acked.iter().any(|a| a.id == *id))
            .collect();
        s.resent_after_ack.extend(again);
        match s.mode {
            Mode::Down => {
                return Err(SinkError::Unavailable {
                    message: "down".into(),
                    retry_after: None,
                });
            }
            Mode::Unauthorized => {
                return Err(SinkError::Unauthorized {
                    message: "401".into(),
                });
            }
            Mode::Up => {}
        }
        if body::encode_body(batch).len() > s.max_body {
            return Err(SinkError::PayloadTooLarge {
                message: "413".into(),
            });
        }
        let bad: Vec<MessageId> = batch
            .iter()
            .map(|m| m.id)
            .filter(|id| s.poison.contains(id))
            .collect();
        if !bad.is_empty() {
            return Err(SinkError::Rejected {
                message: "poison".into(),
                message_ids: if s.name_poison { bad } else { Vec::new() },
            });
        }
        s.acked.extend_from_slice(batch);
        Ok(DeliveryReport {
            persisted: batch.len() as u64,
            duplicates: 0,
        })
    }
}

struct Harness {
    path: std::path::PathBuf,
    config: OutboxConfig,
    clock: ManualClock,
    sink: Arc<ScriptedSink>,
    outbox: Option<Outbox>,
    flusher: Option<Flusher>,
    /// Rows pending when the current process "started" (for the counter balance).
    initial_pending: u64,
    /// Rows committed by `enqueue_in` in this process (the writer does not count them).
    external: u64,
    seed: u64,
}

impl Harness {
    fn open(&mut self) {
        let outbox = Outbox::open_with_clock(
            &self.path,
            self.config.clone(),
            Arc::new(self.clock.clone()),
        )
        .unwrap();
        self.initial_pending = outbox.pending_count();
        self.external = 0;
        self.seed += 1;
        self.flusher = Some(Flusher::for_test(
            &outbox,
            Arc::new(SingleSink(self.sink.clone())),
            Arc::new(self.clock.clone()),
            self.seed,
        ));
        self.outbox = Some(outbox);
    }

    fn outbox(&self) -> &Outbox {
        self.outbox.as_ref().unwrap()
    }

    /// Everything that entered this process's outbox left it or is still pending.
    async fn check_balance(&self) {
        // An empty enqueue is a writer commit: it catches up with `enqueue_in`'s rows.
        self.outbox()
            .enqueue_batch(Route::single(), Vec::new())
            .await
            .unwrap();
        let c = &self.outbox().inner.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::SeqCst);
        let dropped = load(&c.dropped_overflow)
            + load(&c.dropped_rejected)
            + load(&c.dropped_too_large)
            + load(&c.dropped_corrupt);
        assert_eq!(
            self.initial_pending + load(&c.enqueued) + load(&c.notices) + self.external,
            load(&c.delivered) + dropped + load(&c.pending),
            "the counters do not add up"
        );
        assert_eq!(
            load(&c.pending),
            self.outbox().pending_messages().unwrap().len() as u64
        );
    }

    async fn step(&mut self, n: usize) {
        for _ in 0..n {
            if let Step::Idle { .. } = self.flusher.as_mut().unwrap().step().await.unwrap() {
                break;
            }
        }
    }
}

fn host_connection(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

async fn run(actions: Vec<Action>, overflow: Overflow) {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        overflow,
        max_size: 24,
        batch_max_size: 5,
        batch_max_bytes: 4_000,
        dead_max_rows: 100_000,
        ..OutboxConfig::default()
    };
    let sink = Arc::new(ScriptedSink {
        state: Mutex::new(SinkState {
            mode: Mode::Up,
            name_poison: true,
            poison: HashSet::new(),
            max_body: 2_000,
            resent_after_ack: Vec::new(),
            acked: Vec::new(),
        }),
    });
    let mut h = Harness {
        path: dir.path().join("outbox.sqlite"),
        config,
        clock: ManualClock::starting_at_epoch(),
        sink: sink.clone(),
        outbox: None,
        flusher: None,
        initial_pending: 0,
        external: 0,
        seed: 0,
    };
    h.open();
    let mut host = host_connection(&h.path);
    // Rows `enqueue_in` committed since the writer last committed: under drop-oldest the
    // writer's next commit enforces the bound, so until then the file may exceed it.
    let mut unbounded: u64 = 0;
    let sessions = [SessionId::new(), SessionId::new(), SessionId::new()];
    let mut accepted: Vec<MessageId> = Vec::new();
    // Never stored: a failed commit, a rolled-back host transaction, a refusal when full.
    let mut failed: HashSet<MessageId> = HashSet::new();
    let mut big: HashSet<MessageId> = HashSet::new();
    for action in actions {
        match action {
            Action::Enqueue {
                session,
                n,
                poison,
                big: is_big,
            } => {
                let mut batch: Vec<ChatMessage> = (0..n)
                    .map(|i| message(sessions[session], &format!("m{i}")))
                    .collect();
                let last = batch.last_mut().unwrap();
                if is_big {
                    last.content = "B".repeat(3_000);
                    big.insert(last.id);
                }
                if poison {
                    sink.state.lock().unwrap().poison.insert(last.id);
                }
                let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
                match h.outbox().enqueue_batch(Route::single(), batch).await {
                    Ok(receipts) => {
                        accepted.extend(receipts.iter().map(|r| r.id));
                        unbounded = 0;
                    }
                    Err(OutboxError::Full { max }) => {
                        assert_eq!(overflow, Overflow::Reject, "only Reject refuses");
                        assert_eq!(max, 24);
                        let pending = h.outbox().pending_messages().unwrap().len();
                        assert!(pending + ids.len() > 24, "refused with room: {pending}");
                        failed.extend(ids);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            Action::EnqueueIn {
                session,
                n,
                poison,
                commit,
            } => {
                let batch: Vec<ChatMessage> = (0..n)
                    .map(|i| message(sessions[session], &format!("in{i}")))
                    .collect();
                let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
                if poison {
                    sink.state.lock().unwrap().poison.insert(ids[0]);
                }
                let tx = host.transaction().unwrap();
                match h.outbox().enqueue_in(&tx, Route::single(), batch) {
                    Ok(receipts) if commit => {
                        tx.commit().unwrap();
                        h.outbox().notify_flusher();
                        assert!(receipts.iter().all(|r| !r.duplicate));
                        accepted.extend(ids);
                        h.external += n as u64;
                        unbounded += n as u64;
                    }
                    Ok(_) => {
                        tx.rollback().unwrap();
                        failed.extend(ids);
                    }
                    Err(OutboxError::Full { .. }) => {
                        assert_eq!(overflow, Overflow::Reject, "only Reject refuses");
                        tx.rollback().unwrap();
                        failed.extend(ids);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            Action::FailCommit { session } => {
                h.outbox().fail_next_commits(1);
                let m = message(sessions[session], "doomed");
                failed.insert(m.id);
                match h.outbox().enqueue(Route::single(), m).await {
                    Err(OutboxError::Storage(_)) => {}
                    // Refused before the commit: the injected failure is still armed.
                    Err(OutboxError::Full { .. }) if overflow == Overflow::Reject => {
                        h.outbox().fail_next_commits(0);
                    }
                    other => panic!("expected the commit to fail: {other:?}"),
                }
            }
            Action::Step(n) => h.step(n).await,
            Action::SetMode(mode) => sink.state.lock().unwrap().mode = mode,
            Action::NamePoison(b) => sink.state.lock().unwrap().name_poison = b,
            Action::Advance(secs) => h.clock.advance(Duration::from_secs(secs)),
            Action::Reopen => {
                h.check_balance().await;
                unbounded = 0;
                h.flusher = None;
                h.outbox = None;
                h.open();
            }
        }
        let pending = h.outbox().pending_messages().unwrap().len() as u64;
        let bound = match overflow {
            Overflow::Reject => 24,
            Overflow::DropOldest => 24 + unbounded,
        };
        assert!(pending <= bound, "the bound was exceeded: {pending}");
    }
    // Drain: the receiver recovers and time passes until nothing is left.
    sink.state.lock().unwrap().mode = Mode::Up;
    for _ in 0..200 {
        if h.outbox().pending_count() == 0 {
            break;
        }
        h.clock.advance(Duration::from_secs(3_600));
        h.step(50).await;
    }
    assert_eq!(h.outbox().pending_count(), 0, "the outbox did not drain");
    h.check_balance().await;

    let dead = h.outbox().dead_letters().unwrap();
    let s = sink.state.lock().unwrap();
    let acked_ids: Vec<MessageId> = s.acked.iter().map(|m| m.id).collect();
    let acked_set: HashSet<MessageId> = acked_ids.iter().copied().collect();
    assert_eq!(
        acked_set.len(),
        acked_ids.len(),
        "a message was acknowledged twice"
    );

    assert!(
        s.resent_after_ack.is_empty(),
        "sent again after its acknowledgement: {:?}",
        s.resent_after_ack
    );

    // Every accepted message is delivered unless dropped for its own reason or overflow.
    let dead_by_id: HashMap<String, &crate::DeadLetter> =
        dead.iter().map(|d| (d.id.clone(), d)).collect();
    for id in &accepted {
        if acked_set.contains(id) {
            assert!(
                !s.poison.contains(id),
                "a rejected message was acknowledged"
            );
            continue;
        }
        let d = dead_by_id
            .get(&id.to_string())
            .unwrap_or_else(|| panic!("message {id} was lost"));
        match d.reason.as_str() {
            "overflow" => assert_eq!(overflow, Overflow::DropOldest, "Reject evicted {id}"),
            "rejected" => assert!(s.poison.contains(id), "a good neighbour was rejected"),
            "too_large" => assert!(big.contains(id), "a small message was dropped as too large"),
            other => panic!("unexpected drop reason {other}"),
        }
    }
    for id in &failed {
        assert!(
            !acked_set.contains(id) && !dead_by_id.contains_key(&id.to_string()),
            "{id} was never stored, yet it left the outbox"
        );
    }

    // Per session: first deliveries in seq order, and every seq accounted for exactly once.
    for session in sessions {
        let acked: Vec<i64> = s
            .acked
            .iter()
            .filter(|m| m.session_id == session)
            .map(|m| m.seq.unwrap())
            .collect();
        assert!(
            acked.windows(2).all(|w| w[0] < w[1]),
            "out of order: {acked:?}"
        );
        let mut all: Vec<i64> = acked
            .iter()
            .copied()
            .chain(
                dead.iter()
                    .filter(|d| d.session_id == session.to_string())
                    .map(|d| d.seq),
            )
            .collect();
        all.sort_unstable();
        let n = all.len() as i64;
        assert_eq!(all, (1..=n).collect::<Vec<_>>(), "seqs of {session}");
        // The overflow notices delivered report exactly the messages lost to overflow.
        let lost = dead
            .iter()
            .filter(|d| {
                d.session_id == session.to_string() && d.reason == "overflow" && d.kind == "message"
            })
            .count();
        let reported: usize = s
            .acked
            .iter()
            .filter(|m| {
                m.session_id == session
                    && m.role == Role::System
                    && m.content.ends_with("because the outbox was full.")
            })
            .map(|m| notice_count(&m.content))
            .sum();
        assert_eq!(reported, lost, "overflow notices of {session}");
    }
    let _ = h.clock.now();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn the_outbox_loses_nothing_it_should_deliver(actions in prop::collection::vec(action(), 1..60)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(actions, Overflow::DropOldest));
    }

    #[test]
    fn under_reject_the_outbox_refuses_instead_of_dropping(actions in prop::collection::vec(action(), 1..60)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(actions, Overflow::Reject));
    }
}
