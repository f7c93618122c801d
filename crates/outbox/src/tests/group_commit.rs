//! Enqueue: group commit, waiter failure semantics, seq allocation, bound, recovery.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kiln_core::{MessageId, SessionId, ToolMeta, WorkspaceId};

use super::message;
use crate::{Outbox, OutboxConfig, OutboxError, Route};

fn open(dir: &tempfile::TempDir, config: OutboxConfig) -> Outbox {
    Outbox::open(dir.path().join("outbox.sqlite"), config).unwrap()
}

fn seqs_by_session(outbox: &Outbox) -> HashMap<SessionId, Vec<i64>> {
    let mut out: HashMap<SessionId, Vec<i64>> = HashMap::new();
    for m in outbox.pending_messages().unwrap() {
        out.entry(m.session_id).or_default().push(m.seq.unwrap());
    }
    out
}

#[test]
fn seqs_are_contiguous_per_session_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (SessionId::new(), SessionId::new());
    {
        let outbox = open(&dir, OutboxConfig::default());
        for i in 0..3 {
            let r = outbox
                .enqueue_blocking(Route::single(), message(a, "a"))
                .unwrap();
            assert_eq!(r.seq, i + 1);
        }
        let r = outbox
            .enqueue_batch_blocking(Route::single(), vec![message(b, "b1"), message(b, "b2")])
            .unwrap();
        assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    }
    let outbox = open(&dir, OutboxConfig::default());
    assert_eq!(outbox.pending_count(), 5);
    let r = outbox
        .enqueue_blocking(Route::single(), message(a, "a4"))
        .unwrap();
    assert_eq!(r.seq, 4, "seq continues after a reopen");
    let seqs = seqs_by_session(&outbox);
    assert_eq!(seqs[&a], [1, 2, 3, 4]);
    assert_eq!(seqs[&b], [1, 2]);
}

/// The default configuration with waiters spinning for `spin` before they sleep.
fn spinning(spin: Duration) -> OutboxConfig {
    OutboxConfig {
        group_commit_spin: spin,
        ..OutboxConfig::default()
    }
}

#[test]
fn concurrent_producers_share_commits_and_get_distinct_seqs() {
    // Waiters that park at once, and waiters that spin first (the default).
    for spin in [Duration::ZERO, OutboxConfig::default().group_commit_spin] {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir, spinning(spin));
        let session = SessionId::new();
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let outbox = outbox.clone();
                std::thread::spawn(move || {
                    (0..40)
                        .map(|_| {
                            outbox
                                .enqueue_blocking(Route::single(), message(session, "x"))
                                .unwrap()
                                .seq
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=640).collect::<Vec<_>>(), "spin {spin:?}");
        let commits = outbox.commit_count();
        assert!(
            commits < 640,
            "16 producers should share commits (spin {spin:?}), got {commits} for 640 rows"
        );
        assert_eq!(outbox.pending_count(), 640);
    }
}

/// Async producers hand their rows to the writer thread, which spins for the next call
/// before it sleeps; every call is answered either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_producers_are_answered_whether_the_writer_spins_or_sleeps() {
    for spin in [Duration::ZERO, Duration::from_millis(50)] {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir, spinning(spin));
        let session = SessionId::new();
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        outbox
                            .enqueue(Route::single(), message(session, "x"))
                            .await
                            .unwrap();
                        // A pause longer than nothing, shorter than the spin.
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(outbox.pending_count(), 200, "spin {spin:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_commit_fails_every_waiter_of_its_group_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(&dir, OutboxConfig::default());
    let session = SessionId::new();
    outbox
        .enqueue(Route::single(), message(session, "before"))
        .await
        .unwrap();
    let mut ok_ids = HashSet::new();
    let mut failed_ids = HashSet::new();
    for round in 0..20 {
        outbox.fail_next_commits(1);
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let outbox = outbox.clone();
                let m = message(session, &format!("r{round} m{i}"));
                let id = m.id;
                tokio::spawn(async move { (id, outbox.enqueue(Route::single(), m).await) })
            })
            .collect();
        let mut errors = 0;
        for c in calls {
            let (id, result) = c.await.unwrap();
            match result {
                Ok(_) => assert!(ok_ids.insert(id)),
                Err(OutboxError::Storage(msg)) => {
                    assert!(msg.contains("commit failed"), "{msg}");
                    errors += 1;
                    failed_ids.insert(id);
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert!(
            errors >= 1,
            "the injected failure hit nobody in round {round}"
        );
    }
    drop(outbox);
    let outbox = open(&dir, OutboxConfig::default());
    let stored: HashSet<MessageId> = outbox
        .pending_messages()
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    for id in &ok_ids {
        assert!(stored.contains(id), "an Ok enqueue is missing after reopen");
    }
    for id in &failed_ids {
        assert!(!stored.contains(id), "a failed enqueue was stored");
    }
    let seqs = seqs_by_session(&outbox);
    let expected: Vec<i64> = (1..=i64::try_from(ok_ids.len() + 1).unwrap()).collect();
    assert_eq!(
        seqs[&session], expected,
        "failed groups must not consume seqs"
    );
}

#[test]
fn one_failing_call_does_not_fail_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(&dir, OutboxConfig::default());
    let session = SessionId::new();
    let ws1 = Route::from(WorkspaceId::new());
    let ws2 = Route::from(WorkspaceId::new());
    outbox
        .enqueue_blocking(ws1, message(session, "first"))
        .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let outbox = outbox.clone();
            let route = if i % 2 == 0 { ws1 } else { ws2 };
            std::thread::spawn(move || {
                outbox
                    .enqueue_blocking(route, message(session, "x"))
                    .map(|_| i)
            })
        })
        .collect();
    for t in threads {
        match t.join().unwrap() {
            Ok(i) => assert_eq!(i % 2, 0),
            Err(OutboxError::SessionRouteMismatch { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(seqs_by_session(&outbox)[&session], [1, 2, 3, 4, 5]);
}

#[test]
fn a_pending_id_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(&dir, OutboxConfig::default());
    let m = message(SessionId::new(), "once");
    let first = outbox.enqueue_blocking(Route::single(), m.clone()).unwrap();
    let again = outbox.enqueue_blocking(Route::single(), m).unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.seq, again.seq);
    assert_eq!(outbox.pending_count(), 1);
}

/// A call whose rows share one multi-row `INSERT` and include an id already pending: the
/// group runs again one row per statement, so the pending id is answered with its stored
/// seq and the other rows get the next seqs with no gap.
#[test]
fn a_pending_id_inside_a_multi_row_insert_keeps_seqs_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(&dir, OutboxConfig::default());
    let session = SessionId::new();
    let first = message(session, "first");
    outbox
        .enqueue_blocking(Route::single(), first.clone())
        .unwrap();
    let receipts = outbox
        .enqueue_batch_blocking(
            Route::single(),
            vec![message(session, "second"), first, message(session, "third")],
        )
        .unwrap();
    let got: Vec<(i64, bool)> = receipts.iter().map(|r| (r.seq, r.duplicate)).collect();
    assert_eq!(got, [(2, false), (1, true), (3, false)]);
    assert_eq!(seqs_by_session(&outbox)[&session], [1, 2, 3]);
    let stored: Vec<String> = outbox
        .pending_messages()
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(stored, ["first", "second", "third"]);
}

/// More rows than one multi-row statement carries, over two sessions: every row stored once,
/// in call order, each session's seqs contiguous.
#[test]
fn a_large_call_is_split_over_several_statements_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(&dir, OutboxConfig::default());
    let (a, b) = (SessionId::new(), SessionId::new());
    let messages: Vec<_> = (0..75)
        .map(|i| message(if i % 3 == 0 { b } else { a }, &format!("m{i}")))
        .collect();
    let receipts = outbox
        .enqueue_batch_blocking(Route::single(), messages)
        .unwrap();
    assert_eq!(receipts.len(), 75);
    assert!(receipts.iter().all(|r| !r.duplicate));
    let seqs = seqs_by_session(&outbox);
    assert_eq!(seqs[&a], (1..=50).collect::<Vec<i64>>());
    assert_eq!(seqs[&b], (1..=25).collect::<Vec<i64>>());
    let stored: Vec<String> = outbox
        .pending_messages()
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    let expected: Vec<String> = (0..75).map(|i| format!("m{i}")).collect();
    assert_eq!(stored, expected);
    let again = outbox
        .enqueue_blocking(Route::single(), message(a, "after"))
        .unwrap();
    assert_eq!(again.seq, 51);
}

#[test]
fn long_content_is_truncated_with_a_marker_and_tool_metadata_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_message_content_bytes: 1024,
        ..OutboxConfig::default()
    };
    let outbox = open(&dir, config);
    let mut m = message(SessionId::new(), &"y".repeat(5000));
    m.tool = Some(ToolMeta {
        tool: "edit".into(),
        target: Some("src/main.rs".into()),
        status: Some("completed".into()),
    });
    outbox.enqueue_blocking(Route::single(), m.clone()).unwrap();
    let stored = outbox.pending_messages().unwrap().remove(0);
    assert!(stored.content.len() <= 1024);
    assert!(stored.content.contains("message truncated by the outbox"));
    assert_eq!(stored.tool, m.tool);
    assert_eq!(stored.created_at, m.created_at);
}

#[test]
fn overflow_drops_the_oldest_and_queues_a_notice_per_session() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_size: 10,
        ..OutboxConfig::default()
    };
    let outbox = open(&dir, config);
    let (a, b) = (SessionId::new(), SessionId::new());
    for _ in 0..6 {
        outbox
            .enqueue_blocking(Route::single(), message(a, "a"))
            .unwrap();
    }
    for _ in 0..8 {
        outbox
            .enqueue_blocking(Route::single(), message(b, "b"))
            .unwrap();
    }
    let pending = outbox.pending_messages().unwrap();
    assert!(pending.len() <= 10, "{}", pending.len());
    assert_eq!(outbox.pending_count(), pending.len() as u64);
    let dead = outbox.dead_letters().unwrap();
    assert!(dead.iter().all(|d| d.reason == "overflow"));
    // Every session's seqs are accounted for: pending or dead, each once.
    for s in [a, b] {
        let mut seqs: Vec<i64> = pending
            .iter()
            .filter(|m| m.session_id == s)
            .map(|m| m.seq.unwrap())
            .chain(
                dead.iter()
                    .filter(|d| d.session_id == s.to_string())
                    .map(|d| d.seq),
            )
            .collect();
        seqs.sort_unstable();
        let n = seqs.len() as i64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    }
    // The notices a viewer will see add up to every message each session lost.
    for s in [a, b] {
        let lost = dead
            .iter()
            .filter(|d| d.session_id == s.to_string() && d.kind == "message")
            .count();
        let reported: usize = pending
            .iter()
            .filter(|m| m.session_id == s && m.role == kiln_core::Role::System)
            .map(|m| notice_count(&m.content))
            .sum();
        assert_eq!(reported, lost, "session {s}");
    }
    assert!(dead.iter().any(|d| d.kind == "message"));
}

/// The N of "N messages were dropped …" / "1 message was dropped …".
pub(crate) fn notice_count(content: &str) -> usize {
    content
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a drop notice: {content}"))
}

#[test]
fn a_second_handle_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&dir, OutboxConfig::default());
    let err = Outbox::open(dir.path().join("outbox.sqlite"), OutboxConfig::default()).unwrap_err();
    assert!(matches!(err, OutboxError::Locked { .. }), "{err}");
    drop(first);
    open(&dir, OutboxConfig::default());
}

#[test]
fn an_invalid_config_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = open(&dir, OutboxConfig::default());
        for _ in 0..5 {
            outbox
                .enqueue_blocking(Route::single(), message(SessionId::new(), "keep"))
                .unwrap();
        }
    }
    let bad = OutboxConfig {
        max_size: 0,
        ..OutboxConfig::default()
    };
    assert!(matches!(
        Outbox::open(dir.path().join("outbox.sqlite"), bad),
        Err(OutboxError::InvalidConfig(_))
    ));
    // A smaller bound on reopen does not evict anything by itself either.
    let smaller = OutboxConfig {
        max_size: 2,
        ..OutboxConfig::default()
    };
    let outbox = open(&dir, smaller);
    assert_eq!(outbox.pending_messages().unwrap().len(), 5);
    let _ = Arc::new(outbox);
}
