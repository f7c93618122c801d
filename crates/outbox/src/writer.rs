//! The single writer thread: it owns the write connection and turns everything queued by
//! producers and the flusher into one `BEGIN IMMEDIATE … COMMIT` (group commit), then
//! answers every waiter of the group. A failed commit fails every waiter of its group.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kiln_core::{LifecycleClock, MessageId, Role};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, oneshot};

use crate::checkpoint::Checkpointer;
use crate::config::Overflow;
use crate::error::OutboxError;

/// Inserts one pending row (nothing when its id is already pending); the rows changed.
pub(crate) fn insert_pending(
    conn: &Connection,
    route: &RouteKey,
    row: &NewRow,
    seq: i64,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO message_outbox \
         (id, workspace, project, session_id, seq, role, content, tool, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO NOTHING",
    )?
    .execute(params![
        row.id_text,
        route.workspace,
        route.project,
        row.session,
        seq,
        row.role,
        row.content,
        row.tool,
        row.created_at
    ])
}

/// Rows one multi-row `INSERT` carries at most (a group's run of enqueues is split into
/// statements of this many).
const MULTI_ROWS: usize = 32;

/// The columns [`insert_pending`] and a multi-row insert bind, per row.
const INSERT_COLUMNS: usize = 9;

/// `INSERT … VALUES (…), (…) … ON CONFLICT (id) DO NOTHING` for `rows` rows (the same
/// columns as [`insert_pending`]).
fn multi_insert_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO message_outbox \
         (id, workspace, project, session_id, seq, role, content, tool, created_at) \
         VALUES {values} ON CONFLICT (id) DO NOTHING"
    )
}

/// A row to insert, already encoded by the producer (off the writer thread).
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    pub id: MessageId,
    /// `id` as stored (formatted by the producer, off the writer's path).
    pub id_text: String,
    pub session: Arc<str>,
    pub role: &'static str,
    pub content: String,
    pub tool: Option<String>,
    pub created_at: String,
}

/// Where an enqueue goes: the workspace (route) and, optionally, its project.
#[derive(Debug, Clone)]
pub(crate) struct RouteKey {
    pub workspace: String,
    pub project: Option<String>,
}

/// The identity of one stored row: compare-and-set on both the position and the id, so an
/// acknowledgement can only ever delete the very row that was sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RowKey {
    pub pos: i64,
    pub id: String,
}

/// Why a message left the outbox without being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Evicted (oldest first) because the outbox reached `MSG_OUTBOX_MAX_SIZE`.
    Overflow,
    /// The receiver rejected it on its merits (400/422).
    Rejected,
    /// Too large for the receiver even alone (413 for a single message).
    TooLarge,
    /// Its stored row could not be decoded.
    Corrupt,
}

impl DropReason {
    /// Its name in the `dead` table and in logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overflow => "overflow",
            Self::Rejected => "rejected",
            Self::TooLarge => "too_large",
            Self::Corrupt => "corrupt",
        }
    }

    fn notice(self, count: i64, detail: &str) -> String {
        let what = if count == 1 {
            "1 message was dropped".to_owned()
        } else {
            format!("{count} messages were dropped")
        };
        match self {
            Self::Overflow => format!("{what} because the outbox was full."),
            Self::Rejected => format!("{what}: the receiver rejected it ({detail})."),
            Self::TooLarge => format!("{what}: too large for the receiver ({detail})."),
            Self::Corrupt => format!("{what}: it could not be read back from the outbox."),
        }
    }
}

/// A row the flusher drops.
#[derive(Debug, Clone)]
pub(crate) struct DropRow {
    pub key: RowKey,
    pub reason: DropReason,
    pub detail: String,
}

/// A failed attempt to remember (attempts, last error, when to try the route again).
#[derive(Debug, Clone)]
pub(crate) struct RetryMark {
    pub workspace: String,
    pub rows: Vec<RowKey>,
    pub next_attempt_ms: i64,
    pub error: String,
}

/// What the flusher learnt from one delivery step.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settle {
    pub delivered: Vec<RowKey>,
    pub dropped: Vec<DropRow>,
    pub retry: Option<RetryMark>,
}

/// What a settle changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SettleOutcome {
    pub deleted: u64,
    pub dropped: u64,
}

/// The receipt of one enqueued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The message id.
    pub id: MessageId,
    /// Its per-session sequence number (1-based, contiguous, never reused).
    pub seq: i64,
    /// The id was already pending in the outbox; nothing new was written.
    pub duplicate: bool,
}

pub(crate) enum Command {
    Enqueue {
        route: RouteKey,
        rows: Vec<NewRow>,
        reply: oneshot::Sender<Result<Vec<Receipt>, OutboxError>>,
    },
    Settle {
        settle: Settle,
        reply: oneshot::Sender<Result<SettleOutcome, OutboxError>>,
    },
}

impl Command {
    pub(crate) fn weight(&self) -> usize {
        match self {
            Self::Enqueue { rows, .. } => rows.len().max(1),
            Self::Settle { settle, .. } => (settle.delivered.len() + settle.dropped.len()).max(1),
        }
    }
}

/// Rows the flusher has handed to a sink and not yet settled. Overflow eviction never takes
/// one: a row the receiver may already have must not also be counted dropped and announced
/// in a drop notice.
///
/// The writer holds the lock from choosing its victims until its commit is done, and the
/// flusher registers a batch under the same lock and then re-reads which of its rows still
/// exist. So either the eviction saw the registration and skipped those rows, or it
/// committed before the registration and the re-read no longer finds them.
#[derive(Debug, Default)]
pub(crate) struct InFlight(Mutex<HashSet<i64>>);

impl InFlight {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashSet<i64>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counters shared by the writer (which updates them after each commit) and the metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub enqueued: AtomicU64,
    pub enqueue_duplicates: AtomicU64,
    pub notices: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub dropped_rejected: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub dropped_corrupt: AtomicU64,
    pub pending: AtomicU64,
    pub commits: AtomicU64,
    /// The `enqueue_in` generation `pending` includes (see [`Writer::absorb_external`]).
    pub absorbed_external: AtomicU64,
}

impl Counters {
    fn dropped(&self, reason: DropReason) -> &AtomicU64 {
        match reason {
            DropReason::Overflow => &self.dropped_overflow,
            DropReason::Rejected => &self.dropped_rejected,
            DropReason::TooLarge => &self.dropped_too_large,
            DropReason::Corrupt => &self.dropped_corrupt,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionSeq {
    /// Shared, not copied: the writer clones it for every row.
    pub workspace: Arc<str>,
    pub next_seq: i64,
}

/// Changes made by the commands of one group, applied to the writer's caches only once the
/// group has committed.
#[derive(Debug, Default)]
struct Delta {
    sessions: HashMap<Arc<str>, SessionSeq>,
    pending: i64,
    enqueued: u64,
    enqueue_duplicates: u64,
    notices: u64,
    delivered: u64,
    dropped: HashMap<DropReason, u64>,
    dead_added: bool,
}

impl Delta {
    /// Whether this group takes rows out of `message_outbox` (delivered, dropped, evicted).
    fn removes_rows(&self) -> bool {
        self.delivered > 0 || !self.dropped.is_empty()
    }

    fn absorb(&mut self, other: Delta) {
        self.sessions.extend(other.sessions);
        self.pending += other.pending;
        self.enqueued += other.enqueued;
        self.enqueue_duplicates += other.enqueue_duplicates;
        self.notices += other.notices;
        self.delivered += other.delivered;
        for (reason, n) in other.dropped {
            *self.dropped.entry(reason).or_default() += n;
        }
        self.dead_added |= other.dead_added;
    }
}

pub(crate) struct WriterLimits {
    pub max_size: u64,
    pub dead_max_rows: usize,
    pub overflow: Overflow,
}

pub(crate) struct Writer {
    conn: Connection,
    counters: Arc<Counters>,
    notify: Arc<Notify>,
    clock: Arc<dyn LifecycleClock>,
    sessions: HashMap<Arc<str>, SessionSeq>,
    /// Sessions whose cached `next_seq` is ahead of their `sessions` row. That is safe while
    /// their newest row is still in `message_outbox` (opening takes `MAX(seq) + 1` from
    /// there); any group that removes rows first writes these rows.
    unsaved: HashSet<Arc<str>>,
    limits: WriterLimits,
    /// How long the last group took, begin to commit, less its waits for arrivals (bounds
    /// the next gather window).
    last_commit: Duration,
    /// Test hook: the next N commits fail as if SQLite had refused them.
    fail_commits: Arc<AtomicU32>,
    checkpointer: Arc<Checkpointer>,
    in_flight: Arc<InFlight>,
    /// Bumped by every `enqueue_in` (rows written on another connection).
    external: Arc<AtomicU64>,
    /// The generation of `external` the caches reflect.
    seen_external: u64,
    /// `multi_insert_sql(n)` at index `n - 2`, built on first use.
    multi_sql: Vec<String>,
}

/// What one command produced, answered once its group has committed.
enum Output {
    Receipts(Vec<Receipt>),
    Settled(SettleOutcome),
}

/// Why a group did not commit.
enum GroupError {
    /// One command failed (only without savepoints): everything was rolled back.
    Command(OutboxError),
    /// `BEGIN` or `COMMIT` failed: every waiter of the group is told.
    Commit(OutboxError),
    /// A multi-row insert met a pending id or an error: everything was rolled back, and the
    /// group runs again one row per statement, which answers it precisely.
    Unbatch,
}

/// How a group applies its commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Consecutive enqueues share multi-row `INSERT`s (the common case).
    Batched,
    /// One statement per row, no savepoints.
    PerRow,
    /// One statement per row, one savepoint per call (after a call failed).
    Isolated,
}

/// What the writer shares with the rest of the outbox.
pub(crate) struct WriterLinks {
    pub counters: Arc<Counters>,
    pub notify: Arc<Notify>,
    pub clock: Arc<dyn LifecycleClock>,
    pub fail_commits: Arc<AtomicU32>,
    pub checkpointer: Arc<Checkpointer>,
    pub in_flight: Arc<InFlight>,
    pub external: Arc<AtomicU64>,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        limits: WriterLimits,
        links: WriterLinks,
    ) -> Result<Self, OutboxError> {
        let WriterLinks {
            counters,
            notify,
            clock,
            fail_commits,
            checkpointer,
            in_flight,
            external,
        } = links;
        let pending: i64 =
            conn.query_row("SELECT COUNT(*) FROM message_outbox", [], |r| r.get(0))?;
        // Every multi-row size stays prepared beside the writer's other statements.
        conn.set_prepared_statement_cache_capacity(MULTI_ROWS + 32);
        counters
            .pending
            .store(u64::try_from(pending).unwrap_or(0), Ordering::Relaxed);
        Ok(Self {
            conn,
            counters,
            notify,
            clock,
            sessions: HashMap::new(),
            unsaved: HashSet::new(),
            limits,
            last_commit: Duration::ZERO,
            fail_commits,
            checkpointer,
            in_flight,
            external,
            seen_external: 0,
            multi_sql: Vec::new(),
        })
    }

    /// Catches up with rows written by [`Outbox::enqueue_in`](crate::Outbox::enqueue_in)
    /// on another connection. Called with the write lock held: a transaction that bumped the
    /// generation held that lock when it did, so it has committed or rolled back by now.
    /// Cached sessions whose `sessions` row is current are forgotten (read again on use);
    /// the others keep their cached value, raised to what the file says.
    fn absorb_external(&mut self) -> Result<(), OutboxError> {
        let generation = self.external.load(Ordering::SeqCst);
        if generation == self.seen_external {
            return Ok(());
        }
        let unsaved = self.unsaved.clone();
        self.sessions.retain(|s, _| unsaved.contains(s));
        for session in &unsaved {
            let durable = durable_next_seq(&self.conn, session)?;
            if let (Some(cached), Some(durable)) = (self.sessions.get_mut(session), durable) {
                cached.next_seq = cached.next_seq.max(durable.next_seq);
            }
        }
        let pending: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM message_outbox", [], |r| r.get(0))?;
        self.counters
            .pending
            .store(u64::try_from(pending).unwrap_or(0), Ordering::Relaxed);
        self.seen_external = generation;
        self.counters
            .absorbed_external
            .store(generation, Ordering::SeqCst);
        Ok(())
    }

    /// How long the last group took, less its waits for arrivals.
    pub(crate) fn last_commit(&self) -> Duration {
        self.last_commit
    }

    /// Commits `group` in one transaction and answers every waiter.
    ///
    /// The group first runs without savepoints (the common case: nothing fails, and a
    /// savepoint per call is measurable at one row per commit). If a call fails, everything
    /// is rolled back and the group runs again with one savepoint per call, so the failing
    /// call gets its error and its neighbours are still committed. A failed `COMMIT` fails
    /// every waiter of the group; no waiter is ever told `Ok` for a row that is not committed.
    pub(crate) fn commit_group(
        &mut self,
        group: Vec<Command>,
        more: &mut dyn FnMut(usize) -> Vec<Command>,
    ) -> usize {
        let started = Instant::now();
        // Time spent waiting for arrivals is not the commit's cost (see `last_commit`).
        let mut waited = Duration::ZERO;
        let mut more = |have: usize| {
            let asked = Instant::now();
            let arrived = more(have);
            waited += asked.elapsed();
            arrived
        };
        let mut group = group;
        let mut first = self.run_group(&mut group, Mode::Batched, &mut more);
        if matches!(first, Err(GroupError::Unbatch)) {
            first = self.run_group(&mut group, Mode::PerRow, &mut |_| Vec::new());
        }
        let results = match first {
            Ok(results) => Ok(results),
            Err(GroupError::Command(e)) if group.len() == 1 => Ok(vec![Err(e)]),
            Err(GroupError::Command(_)) => {
                match self.run_group(&mut group, Mode::Isolated, &mut |_| Vec::new()) {
                    Ok(results) => Ok(results),
                    Err(GroupError::Command(e) | GroupError::Commit(e)) => Err(e),
                    Err(GroupError::Unbatch) => Err(unbatch_error()),
                }
            }
            Err(GroupError::Commit(e)) => Err(e),
            Err(GroupError::Unbatch) => Err(unbatch_error()),
        };
        self.last_commit = started.elapsed().saturating_sub(waited);
        let served = group.len();
        match results {
            Ok(results) => {
                for (cmd, result) in group.into_iter().zip(results) {
                    answer(cmd, result);
                }
            }
            Err(e) => {
                for cmd in group {
                    answer(cmd, Err(e.clone()));
                }
            }
        }
        served
    }

    /// A transaction-control statement, prepared once.
    fn exec(&self, sql: &str) -> Result<(), OutboxError> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Runs `group` in one transaction; once every command is applied it asks `more` for
    /// commands that arrived meanwhile and applies those too (the group grows in place).
    fn run_group(
        &mut self,
        group: &mut Vec<Command>,
        mode: Mode,
        more: &mut dyn FnMut(usize) -> Vec<Command>,
    ) -> Result<Vec<Result<Output, OutboxError>>, GroupError> {
        let isolate = mode == Mode::Isolated;
        self.exec("BEGIN IMMEDIATE").map_err(GroupError::Commit)?;
        if let Err(e) = self.absorb_external() {
            let _ = self.exec("ROLLBACK");
            return Err(GroupError::Commit(e));
        }
        let mut total = Delta::default();
        let mut results = Vec::with_capacity(group.len());
        let mut next = 0;
        loop {
            if next == group.len() {
                let arrived = more(group.len());
                if arrived.is_empty() {
                    break;
                }
                group.extend(arrived);
            }
            if mode == Mode::Batched {
                let run = enqueue_run(&group[next..]);
                if run.rows > 1 {
                    match self.insert_run(&group[next..next + run.calls], &mut total) {
                        Ok(receipts) => {
                            results.extend(receipts.into_iter().map(|r| Ok(Output::Receipts(r))));
                            next += run.calls;
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "multi-row insert refused; the group runs one row per statement");
                            let _ = self.exec("ROLLBACK");
                            return Err(GroupError::Unbatch);
                        }
                    }
                }
            }
            let cmd = &group[next];
            next += 1;
            if isolate && let Err(e) = self.exec("SAVEPOINT cmd") {
                results.push(Err(e));
                continue;
            }
            let mut delta = Delta::default();
            let applied = self.apply(cmd, &total, &mut delta).and_then(|out| {
                if isolate {
                    self.exec("RELEASE cmd").map(|()| out)
                } else {
                    Ok(out)
                }
            });
            match applied {
                Ok(out) => {
                    total.absorb(delta);
                    results.push(Ok(out));
                }
                Err(e) if isolate => {
                    let _ = self.exec("ROLLBACK TO cmd");
                    let _ = self.exec("RELEASE cmd");
                    results.push(Err(e));
                }
                Err(e) => {
                    let _ = self.exec("ROLLBACK");
                    return Err(GroupError::Command(e));
                }
            }
        }
        // Held until the commit is done (see `InFlight`).
        let in_flight = Arc::clone(&self.in_flight);
        let claimed = in_flight.lock();
        let committed = self
            .evict_overflow(&mut total, &claimed)
            .and_then(|()| self.trim_dead(&total))
            .and_then(|()| self.store_sessions(&total))
            .and_then(|()| self.commit());
        let committed = committed.inspect_err(|_| {
            let _ = self.exec("ROLLBACK");
        });
        drop(claimed);
        match committed {
            Ok(()) => {
                self.publish(total);
                Ok(results)
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox group commit failed; every waiter is told");
                Err(GroupError::Commit(OutboxError::Storage(format!(
                    "commit failed: {e}"
                ))))
            }
        }
    }

    fn commit(&mut self) -> Result<(), OutboxError> {
        let injected = self
            .fail_commits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if injected {
            return Err(OutboxError::Storage("injected commit failure".into()));
        }
        self.exec("COMMIT")?;
        self.checkpointer.committed();
        Ok(())
    }

    fn publish(&mut self, total: Delta) {
        let c = &self.counters;
        if total.removes_rows() {
            self.unsaved.clear();
        } else {
            self.unsaved.extend(total.sessions.keys().cloned());
        }
        self.sessions.extend(total.sessions);
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.enqueued.fetch_add(total.enqueued, Ordering::Relaxed);
        c.enqueue_duplicates
            .fetch_add(total.enqueue_duplicates, Ordering::Relaxed);
        c.notices.fetch_add(total.notices, Ordering::Relaxed);
        c.delivered.fetch_add(total.delivered, Ordering::Relaxed);
        for (reason, n) in total.dropped {
            c.dropped(reason).fetch_add(n, Ordering::Relaxed);
        }
        let pending = i64::try_from(c.pending.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        c.pending.store(
            u64::try_from(pending + total.pending).unwrap_or(0),
            Ordering::Relaxed,
        );
        if total.enqueued > 0 || total.notices > 0 {
            self.notify.notify_one();
        }
    }

    fn apply(
        &mut self,
        cmd: &Command,
        total: &Delta,
        delta: &mut Delta,
    ) -> Result<Output, OutboxError> {
        match cmd {
            Command::Enqueue { route, rows, .. } => {
                self.insert(route, rows, total, delta).map(Output::Receipts)
            }
            Command::Settle { settle, .. } => {
                self.settle(settle, total, delta).map(Output::Settled)
            }
        }
    }

    /// The session's next seq as this group sees it: pending changes first, then the cache,
    /// then the table.
    fn session_state(
        &mut self,
        session: &str,
        total: &Delta,
        delta: &Delta,
    ) -> Result<Option<SessionSeq>, OutboxError> {
        if let Some(s) = delta
            .sessions
            .get(session)
            .or_else(|| total.sessions.get(session))
        {
            return Ok(Some(s.clone()));
        }
        if let Some(s) = self.sessions.get(session) {
            return Ok(Some(s.clone()));
        }
        let found = if self.seen_external > 0 {
            // `enqueue_in` may have written rows this writer never saw.
            durable_next_seq(&self.conn, session)?
        } else {
            self.conn
                .prepare_cached("SELECT workspace, next_seq FROM sessions WHERE session_id = ?1")?
                .query_row([session], |r| {
                    Ok(SessionSeq {
                        workspace: Arc::from(r.get::<_, String>(0)?),
                        next_seq: r.get(1)?,
                    })
                })
                .optional()?
        };
        if let Some(s) = &found {
            self.sessions.insert(Arc::from(session), s.clone());
        }
        Ok(found)
    }

    fn alloc_seq(
        &mut self,
        session: &Arc<str>,
        workspace: &str,
        total: &Delta,
        delta: &mut Delta,
    ) -> Result<i64, OutboxError> {
        let state = self.session_state(session, total, delta)?;
        let state = match state {
            Some(s) if &*s.workspace != workspace => {
                return Err(OutboxError::SessionRouteMismatch {
                    session: session.to_string(),
                    existing: s.workspace.to_string(),
                    requested: workspace.to_owned(),
                });
            }
            Some(s) => s,
            None => SessionSeq {
                workspace: Arc::from(workspace),
                next_seq: 1,
            },
        };
        let seq = state.next_seq;
        delta.sessions.insert(
            Arc::clone(session),
            SessionSeq {
                workspace: state.workspace,
                next_seq: seq + 1,
            },
        );
        Ok(seq)
    }

    fn insert(
        &mut self,
        route: &RouteKey,
        rows: &[NewRow],
        total: &Delta,
        delta: &mut Delta,
    ) -> Result<Vec<Receipt>, OutboxError> {
        let mut receipts = Vec::with_capacity(rows.len());
        for row in rows {
            let id = &row.id_text;
            let seq = self.alloc_seq(&row.session, &route.workspace, total, delta)?;
            let inserted = insert_pending(&self.conn, route, row, seq)?;
            if inserted == 0 {
                // Already pending: give the seq back and answer with the stored one.
                if let Some(state) = delta.sessions.get_mut(&row.session) {
                    state.next_seq = seq;
                }
                let existing: i64 = self
                    .conn
                    .prepare_cached("SELECT seq FROM message_outbox WHERE id = ?1")?
                    .query_row([id], |r| r.get(0))?;
                delta.enqueue_duplicates += 1;
                receipts.push(Receipt {
                    id: row.id,
                    seq: existing,
                    duplicate: true,
                });
                continue;
            }
            delta.enqueued += 1;
            delta.pending += 1;
            self.check_room(total, delta)?;
            receipts.push(Receipt {
                id: row.id,
                seq,
                duplicate: false,
            });
        }
        Ok(receipts)
    }

    /// Inserts the rows of consecutive enqueue calls with multi-row statements and returns
    /// each call's receipts. Seqs are allocated and the bound checked call by call, as
    /// [`Self::insert`] does; a pending id (a statement changed fewer rows than it carried)
    /// or any failure is an error, after which the caller rolls the group back and runs it
    /// one row per statement.
    fn insert_run(
        &mut self,
        calls: &[Command],
        total: &mut Delta,
    ) -> Result<Vec<Vec<Receipt>>, OutboxError> {
        let mut answers = Vec::with_capacity(calls.len());
        let mut planned = Vec::new();
        // Any failure rolls the whole group back, so the run writes straight into `total`
        // (no per-call delta to merge).
        let none = Delta::default();
        for cmd in calls {
            let Command::Enqueue { route, rows, .. } = cmd else {
                return Err(OutboxError::Storage("a settle in an enqueue run".into()));
            };
            let mut receipts = Vec::with_capacity(rows.len());
            for row in rows {
                let seq = self.alloc_seq(&row.session, &route.workspace, &none, total)?;
                total.enqueued += 1;
                total.pending += 1;
                self.check_room(&none, total)?;
                planned.push((route, row, seq));
                receipts.push(Receipt {
                    id: row.id,
                    seq,
                    duplicate: false,
                });
            }
            answers.push(receipts);
        }
        for chunk in planned.chunks(MULTI_ROWS) {
            let n = chunk.len();
            if let [(route, row, seq)] = chunk {
                if insert_pending(&self.conn, route, row, *seq)? != 1 {
                    return Err(OutboxError::Storage("an id is already pending".into()));
                }
                continue;
            }
            while self.multi_sql.len() < n - 1 {
                self.multi_sql
                    .push(multi_insert_sql(self.multi_sql.len() + 2));
            }
            let mut stmt = self.conn.prepare_cached(&self.multi_sql[n - 2])?;
            for (i, (route, row, seq)) in chunk.iter().enumerate() {
                let at = i * INSERT_COLUMNS;
                stmt.raw_bind_parameter(at + 1, &row.id_text)?;
                stmt.raw_bind_parameter(at + 2, &route.workspace)?;
                stmt.raw_bind_parameter(at + 3, &route.project)?;
                stmt.raw_bind_parameter(at + 4, &*row.session)?;
                stmt.raw_bind_parameter(at + 5, *seq)?;
                stmt.raw_bind_parameter(at + 6, row.role)?;
                stmt.raw_bind_parameter(at + 7, &row.content)?;
                stmt.raw_bind_parameter(at + 8, &row.tool)?;
                stmt.raw_bind_parameter(at + 9, &row.created_at)?;
            }
            if stmt.raw_execute()? != n {
                return Err(OutboxError::Storage("an id is already pending".into()));
            }
        }
        Ok(answers)
    }

    /// Under [`Overflow::Reject`], refuses a call that would take the outbox past its bound
    /// (the whole call is rolled back: all or none).
    fn check_room(&self, total: &Delta, delta: &Delta) -> Result<(), OutboxError> {
        if self.limits.overflow != Overflow::Reject {
            return Ok(());
        }
        let committed = i64::try_from(self.counters.pending.load(Ordering::Relaxed)).unwrap_or(0);
        let max = i64::try_from(self.limits.max_size).unwrap_or(i64::MAX);
        if committed + total.pending + delta.pending > max {
            return Err(OutboxError::Full {
                max: usize::try_from(max).unwrap_or(usize::MAX),
            });
        }
        Ok(())
    }

    fn settle(
        &mut self,
        settle: &Settle,
        total: &Delta,
        delta: &mut Delta,
    ) -> Result<SettleOutcome, OutboxError> {
        let mut outcome = SettleOutcome::default();
        for key in &settle.delivered {
            let n = self
                .conn
                .prepare_cached("DELETE FROM message_outbox WHERE pos = ?1 AND id = ?2")?
                .execute(params![key.pos, key.id])?;
            outcome.deleted += n as u64;
        }
        delta.delivered += outcome.deleted;
        delta.pending -= i64::try_from(outcome.deleted).unwrap_or(0);
        let now = self.clock.now();
        let now_ms = now.timestamp_millis();
        let mut notices: HashMap<(String, String, DropReason), (i64, String)> = HashMap::new();
        for drop in &settle.dropped {
            if let Some(moved) = self.move_to_dead(&drop.key, drop.reason, &drop.detail, now_ms)? {
                outcome.dropped += 1;
                delta.pending -= 1;
                delta.dead_added = true;
                *delta.dropped.entry(drop.reason).or_default() += 1;
                if moved.kind == "message" && moved.session.parse::<uuid::Uuid>().is_ok() {
                    let e = notices
                        .entry((moved.session, moved.workspace, drop.reason))
                        .or_insert((0, drop.detail.clone()));
                    e.0 += 1;
                }
            }
        }
        let mut notices: Vec<_> = notices.into_iter().collect();
        notices.sort_by(|a, b| a.0.cmp(&b.0));
        for ((session, workspace, reason), (count, detail)) in notices {
            let content = reason.notice(count, &detail);
            self.insert_notice(&session, &workspace, None, &content, 0, total, delta)?;
        }
        if let Some(retry) = &settle.retry {
            for key in &retry.rows {
                self.conn
                    .prepare_cached(
                        "UPDATE message_outbox SET attempts = attempts + 1, \
                         last_attempt_at = ?1, last_error = ?2 WHERE pos = ?3 AND id = ?4",
                    )?
                    .execute(params![now_ms, retry.error, key.pos, key.id])?;
            }
            self.conn
                .prepare_cached(
                    "UPDATE message_outbox SET next_attempt_at = ?1 WHERE workspace = ?2",
                )?
                .execute(params![retry.next_attempt_ms, retry.workspace])?;
        }
        Ok(outcome)
    }

    #[allow(clippy::too_many_arguments)] // One call site per notice kind; a struct adds nothing.
    fn insert_notice(
        &mut self,
        session: &str,
        workspace: &str,
        project: Option<&str>,
        content: &str,
        dropped_count: i64,
        total: &Delta,
        delta: &mut Delta,
    ) -> Result<(), OutboxError> {
        let seq = self.alloc_seq(&Arc::from(session), workspace, total, delta)?;
        let created_at = crate::outbox::format_timestamp(self.clock.now());
        self.conn
            .prepare_cached(
                "INSERT INTO message_outbox (id, workspace, project, session_id, seq, role, \
                 content, kind, dropped_count, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'notice', ?8, ?9)",
            )?
            .execute(params![
                MessageId::new().to_string(),
                workspace,
                project,
                session,
                seq,
                Role::System.as_str(),
                content,
                dropped_count,
                created_at
            ])?;
        delta.notices += 1;
        delta.pending += 1;
        Ok(())
    }

    fn move_to_dead(
        &mut self,
        key: &RowKey,
        reason: DropReason,
        detail: &str,
        now_ms: i64,
    ) -> Result<Option<MovedRow>, OutboxError> {
        let moved = self
            .conn
            .prepare_cached(
                "SELECT session_id, workspace, kind, project FROM message_outbox \
                 WHERE pos = ?1 AND id = ?2",
            )?
            .query_row(params![key.pos, key.id], |r| {
                Ok(MovedRow {
                    session: r.get(0)?,
                    workspace: r.get(1)?,
                    kind: r.get(2)?,
                    project: r.get(3)?,
                })
            })
            .optional()?;
        if moved.is_none() {
            return Ok(None);
        }
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO dead (pos, id, workspace, project, session_id, seq, role, \
                 content, tool, kind, dropped_count, created_at, attempts, reason, detail, dead_at) \
                 SELECT pos, id, workspace, project, session_id, seq, role, content, tool, kind, \
                 dropped_count, created_at, attempts, ?3, ?4, ?5 FROM message_outbox \
                 WHERE pos = ?1 AND id = ?2",
            )?
            .execute(params![key.pos, key.id, reason.as_str(), detail, now_ms])?;
        self.conn
            .prepare_cached("DELETE FROM message_outbox WHERE pos = ?1 AND id = ?2")?
            .execute(params![key.pos, key.id])?;
        Ok(moved)
    }

    /// Above the bound, moves the oldest rows to `dead` and queues one notice per affected
    /// session saying how many messages it lost (a notice evicted in turn passes its count on
    /// to the next one, so the notices a viewer finally sees add up to every lost message).
    fn evict_overflow(
        &mut self,
        total: &mut Delta,
        in_flight: &HashSet<i64>,
    ) -> Result<(), OutboxError> {
        let committed = i64::try_from(self.counters.pending.load(Ordering::Relaxed)).unwrap_or(0);
        let count = committed + total.pending;
        let max = i64::try_from(self.limits.max_size).unwrap_or(i64::MAX);
        // Under `Reject` enqueues never pass the bound; only drop notices could, and each
        // replaces at least one row that left, so nothing is evicted.
        if count <= max || self.limits.overflow == Overflow::Reject {
            return Ok(());
        }
        // Take the oldest rows not in flight until what remains plus one new notice per
        // affected session fits the bound (if the rows in flight alone exceed it, the bound
        // is exceeded until they are settled).
        let mut victims: Vec<(RowKey, String)> = Vec::new();
        let mut per_session: HashMap<String, i64> = HashMap::new();
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT pos, id, session_id, kind, dropped_count FROM message_outbox ORDER BY pos",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let taken = i64::try_from(victims.len()).unwrap_or(i64::MAX);
                let notices = i64::try_from(per_session.len()).unwrap_or(i64::MAX);
                if count - taken + notices <= max {
                    break;
                }
                let key = RowKey {
                    pos: r.get(0)?,
                    id: r.get(1)?,
                };
                if in_flight.contains(&key.pos) {
                    continue;
                }
                let session: String = r.get(2)?;
                let kind: String = r.get(3)?;
                let carried: i64 = r.get(4)?;
                let lost = if kind == "notice" { carried } else { 1 };
                *per_session.entry(session.clone()).or_default() += lost;
                victims.push((key, session));
            }
        }
        let now_ms = self.clock.now().timestamp_millis();
        let mut delta = Delta::default();
        let mut workspaces: HashMap<String, (String, Option<String>)> = HashMap::new();
        for (key, session) in &victims {
            if let Some(moved) =
                self.move_to_dead(key, DropReason::Overflow, "outbox full", now_ms)?
            {
                delta.pending -= 1;
                delta.dead_added = true;
                *delta.dropped.entry(DropReason::Overflow).or_default() += 1;
                if let Entry::Vacant(v) = workspaces.entry(session.clone()) {
                    v.insert((moved.workspace, moved.project));
                }
            }
        }
        let mut sessions: Vec<_> = per_session.into_iter().filter(|(_, n)| *n > 0).collect();
        sessions.sort();
        for (session, lost) in sessions {
            let Some((workspace, project)) = workspaces.get(&session).cloned() else {
                continue;
            };
            let content = DropReason::Overflow.notice(lost, "");
            tracing::warn!(%session, lost, "outbox full: oldest messages dropped");
            self.insert_notice(
                &session,
                &workspace,
                project.as_deref(),
                &content,
                lost,
                total,
                &mut delta,
            )?;
        }
        total.absorb(delta);
        Ok(())
    }

    fn trim_dead(&mut self, total: &Delta) -> Result<(), OutboxError> {
        if !total.dead_added {
            return Ok(());
        }
        let keep = i64::try_from(self.limits.dead_max_rows).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached(
                "DELETE FROM dead WHERE pos <= \
                 (SELECT pos FROM dead ORDER BY pos DESC LIMIT 1 OFFSET ?1)",
            )?
            .execute([keep])?;
        Ok(())
    }

    /// Persists `next_seq` of the sessions that need it. A group that only inserts writes
    /// nothing here: each new row carries its seq, and opening the file derives
    /// `MAX(seq) + 1` (one page less per commit, which is most of a one-row commit's cost
    /// after the row itself). A group that removes rows first writes every session whose
    /// newest seq lives only in `message_outbox`, in the same transaction, so a seq is never
    /// handed out twice.
    fn store_sessions(&mut self, total: &Delta) -> Result<(), OutboxError> {
        if !total.removes_rows() {
            return Ok(());
        }
        let mut names: Vec<&Arc<str>> = total.sessions.keys().collect();
        names.extend(
            self.unsaved
                .iter()
                .filter(|s| !total.sessions.contains_key(*s)),
        );
        for session in names {
            let Some(state) = total
                .sessions
                .get(session)
                .or_else(|| self.sessions.get(session))
            else {
                continue;
            };
            self.conn
                .prepare_cached(
                    "INSERT INTO sessions (session_id, workspace, next_seq) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (session_id) DO UPDATE SET next_seq = excluded.next_seq",
                )?
                .execute(params![session, state.workspace, state.next_seq])?;
        }
        Ok(())
    }
}

/// A session's next seq as the file says: the larger of its `sessions` row and
/// `MAX(seq) + 1` of its pending rows (the writer persists `sessions` lazily), with its
/// workspace. `None` for a session the file does not know.
pub(crate) fn durable_next_seq(
    conn: &Connection,
    session: &str,
) -> Result<Option<SessionSeq>, OutboxError> {
    let found: (Option<String>, Option<i64>) = conn
        .prepare_cached(
            "SELECT MAX(workspace), MAX(n) FROM ( \
               SELECT workspace, next_seq AS n FROM sessions WHERE session_id = ?1 \
               UNION ALL \
               SELECT workspace, MAX(seq) + 1 FROM message_outbox WHERE session_id = ?1 \
               GROUP BY workspace)",
        )?
        .query_row([session], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(match found {
        (Some(workspace), Some(next_seq)) => Some(SessionSeq {
            workspace: workspace.into(),
            next_seq,
        }),
        _ => None,
    })
}

struct MovedRow {
    session: String,
    workspace: String,
    kind: String,
    project: Option<String>,
}

/// The enqueue calls at the front of a group's remainder: how many, and their rows.
struct EnqueueRun {
    calls: usize,
    rows: usize,
}

fn enqueue_run(rest: &[Command]) -> EnqueueRun {
    let mut run = EnqueueRun { calls: 0, rows: 0 };
    for cmd in rest {
        let Command::Enqueue { rows, .. } = cmd else {
            break;
        };
        run.calls += 1;
        run.rows += rows.len();
    }
    run
}

/// What every waiter hears if a group could not even run one row per statement (never
/// expected: that mode does not ask to be run again).
fn unbatch_error() -> OutboxError {
    OutboxError::Storage("the group could not be committed".into())
}

/// Answers one waiter.
fn answer(cmd: Command, result: Result<Output, OutboxError>) {
    match cmd {
        Command::Enqueue { reply, .. } => {
            let _ = reply.send(result.and_then(|out| match out {
                Output::Receipts(r) => Ok(r),
                Output::Settled(_) => Err(OutboxError::Closed),
            }));
        }
        Command::Settle { reply, .. } => {
            let _ = reply.send(result.and_then(|out| match out {
                Output::Settled(o) => Ok(o),
                Output::Receipts(_) => Err(OutboxError::Closed),
            }));
        }
    }
}
