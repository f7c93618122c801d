//! [`Outbox`]: opening the file, durable enqueue, and the reads the flusher needs.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use chrono::SecondsFormat;
use kiln_core::{
    ChatMessage, LifecycleClock, MessageId, ProjectId, Role, SessionId, SystemClock, Timestamp,
    ToolMeta, WorkspaceId,
};
use rusqlite::{Connection, params};
use tokio::sync::{Notify, oneshot};

use crate::body;
use crate::checkpoint::{self, Checkpointer};
use crate::config::{OutboxConfig, Overflow};
use crate::error::OutboxError;
use crate::queue::{Committer, WriteQueue};
use crate::schema;
use crate::writer::{
    Command, Counters, InFlight, NewRow, Receipt, RouteKey, RowKey, Settle, SettleOutcome, Writer,
    WriterLimits, WriterLinks, durable_next_seq,
};

/// Where a message goes: the workspace whose sink delivers it (a batch never mixes
/// workspaces) and, optionally, the project it belongs to (stored for inspection).
///
/// A session belongs to exactly one route; enqueueing a session's message to another
/// route fails with [`OutboxError::SessionRouteMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// The workspace; the flusher asks its [`SinkRouter`](crate::SinkRouter) for this
    /// workspace's sink.
    pub workspace: WorkspaceId,
    /// The project, if known.
    pub project: Option<ProjectId>,
}

impl Route {
    /// The one route of a program that has a single sink (the nil workspace id).
    #[must_use]
    pub fn single() -> Self {
        Self {
            workspace: WorkspaceId(uuid::Uuid::nil()),
            project: None,
        }
    }

    /// A route to `workspace` for `project`.
    #[must_use]
    pub fn new(workspace: WorkspaceId, project: Option<ProjectId>) -> Self {
        Self { workspace, project }
    }

    fn key(self) -> RouteKey {
        RouteKey {
            workspace: self.workspace.to_string(),
            project: self.project.map(|p| p.to_string()),
        }
    }
}

impl From<WorkspaceId> for Route {
    fn from(workspace: WorkspaceId) -> Self {
        Self {
            workspace,
            project: None,
        }
    }
}

/// A message that left the outbox without being delivered, kept in the `dead` table for
/// inspection (the newest `MSG_DEAD_MAX_ROWS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id as stored.
    pub id: String,
    /// The session as stored.
    pub session_id: String,
    /// Its per-session seq.
    pub seq: i64,
    /// `message` or `notice`.
    pub kind: String,
    /// Why: `overflow`, `rejected`, `too_large` or `corrupt`.
    pub reason: String,
    /// What the receiver or the decoder said.
    pub detail: Option<String>,
}

/// The crash-safe SQLite outbox. Cheap to clone; every clone is the same outbox. The file
/// is locked while any clone (or a flusher) lives; the last one to drop commits what is
/// queued and closes the file.
#[derive(Clone)]
pub struct Outbox {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    path: PathBuf,
    pub(crate) config: OutboxConfig,
    queue: Arc<WriteQueue>,
    writer: Option<JoinHandle<()>>,
    checkpointer: Arc<Checkpointer>,
    checkpoint_thread: Option<JoinHandle<()>>,
    in_flight: Arc<InFlight>,
    external: Arc<AtomicU64>,
    reader: Mutex<Connection>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) clock: Arc<dyn LifecycleClock>,
    // Shared with the writer; only the unit tests' commit-failure hook sets it.
    #[cfg_attr(not(test), allow(dead_code))]
    fail_commits: Arc<AtomicU32>,
    set_aside: Option<PathBuf>,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.checkpointer.close();
        if let Some(thread) = self.checkpoint_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Outbox {
    /// Opens (or creates) the outbox at `path` with the wall clock.
    ///
    /// # Errors
    /// [`OutboxError::InvalidConfig`] before anything is touched, [`OutboxError::Locked`]
    /// when another handle has the file, [`OutboxError::Pragma`] when SQLite refuses the
    /// durability settings, [`OutboxError::Storage`] otherwise.
    pub fn open(path: impl AsRef<Path>, config: OutboxConfig) -> Result<Self, OutboxError> {
        Self::open_with_clock(path, config, Arc::new(SystemClock))
    }

    /// Opens the outbox with an explicit clock (used for notices' timestamps, `dead_at`
    /// and attempt times).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        config: OutboxConfig,
        clock: Arc<dyn LifecycleClock>,
    ) -> Result<Self, OutboxError> {
        config.validate()?;
        let path = path.as_ref().to_path_buf();
        let lock = lock_file(&path)?;
        let set_aside = if config.quick_check_on_open {
            check_or_set_aside(&path, clock.as_ref())?
        } else {
            None
        };
        let conn = schema::open_writer(&path, config.durability)?;
        let reader = schema::open_reader(&path)?;
        let checkpoint_conn = checkpoint::open_connection(&path, config.durability)?;
        let checkpointer = Arc::new(Checkpointer::default());
        let in_flight = Arc::new(InFlight::default());
        let external = Arc::new(AtomicU64::new(0));
        let counters = Arc::new(Counters::default());
        let notify = Arc::new(Notify::new());
        let fail_commits = Arc::new(AtomicU32::new(0));
        let writer = Writer::new(
            conn,
            WriterLimits {
                max_size: u64::try_from(config.max_size).unwrap_or(u64::MAX),
                dead_max_rows: config.dead_max_rows,
                overflow: config.overflow,
            },
            WriterLinks {
                counters: counters.clone(),
                notify: notify.clone(),
                clock: clock.clone(),
                fail_commits: fail_commits.clone(),
                checkpointer: checkpointer.clone(),
                in_flight: in_flight.clone(),
                external: external.clone(),
            },
        )?;
        let queue = Arc::new(WriteQueue::new(
            writer,
            config.group_commit_max_rows,
            config.group_commit_max_wait,
            config.group_commit_spin,
        ));
        let writer = {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("kiln-outbox-writer".into())
                .spawn(move || queue.run_thread())?
        };
        let checkpoint_thread = {
            let checkpointer = checkpointer.clone();
            std::thread::Builder::new()
                .name("kiln-outbox-checkpoint".into())
                .spawn(move || checkpointer.run(&checkpoint_conn))?
        };
        tracing::debug!(path = %path.display(), "outbox opened");
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                config,
                queue,
                writer: Some(writer),
                checkpointer,
                checkpoint_thread: Some(checkpoint_thread),
                in_flight,
                external,
                reader: Mutex::new(reader),
                counters,
                notify,
                clock,
                fail_commits,
                set_aside,
                _lock: lock,
            }),
        })
    }

    /// The file this outbox writes.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Where this open moved a corrupt outbox file (`MSG_OUTBOX_QUICK_CHECK`), if it did:
    /// the messages still in it were not delivered. The host may want to raise an alarm.
    #[must_use]
    pub fn corrupt_file_set_aside(&self) -> Option<&Path> {
        self.inner.set_aside.as_deref()
    }

    /// Its settings.
    #[must_use]
    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    /// Stores one message; returns once it is committed (see the crate docs for what that
    /// survives). The outbox sets its per-session `seq`; content above
    /// `MSG_MAX_MESSAGE_CONTENT_BYTES` is cut with a visible marker. A message whose id is
    /// already pending is not stored twice (the receipt says `duplicate`).
    ///
    /// # Errors
    /// [`OutboxError::Storage`] when the commit failed (nothing was stored),
    /// [`OutboxError::SessionRouteMismatch`], [`OutboxError::Closed`].
    pub async fn enqueue(
        &self,
        route: impl Into<Route>,
        message: ChatMessage,
    ) -> Result<Receipt, OutboxError> {
        let receipts = self.enqueue_batch(route, vec![message]).await?;
        receipts.into_iter().next().ok_or(OutboxError::Closed)
    }

    /// Stores several messages atomically (all or none) in one commit, in order.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_batch(
        &self,
        route: impl Into<Route>,
        messages: Vec<ChatMessage>,
    ) -> Result<Vec<Receipt>, OutboxError> {
        let rx = self.send_enqueue(route.into(), messages, Committer::Thread)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Stores messages inside the caller's own SQLite transaction, so they are committed
    /// atomically with the caller's writes (a true transactional outbox): if `tx` rolls
    /// back, nothing of this call was stored; once it commits, the messages are as durable
    /// as any enqueue.
    ///
    /// `tx` must be on a connection to this outbox's file (the caller's tables live in the
    /// same file); give that connection a `busy_timeout`, since the outbox's writer shares
    /// the file. Seqs are allocated in `tx` from what the file says, and the writer catches
    /// up before its next commit, so seqs stay contiguous and unique across both paths. The
    /// writer and this transaction take turns for SQLite's write lock: keep `tx` short. The
    /// flusher sees the rows at its next look (within `MSG_BATCH_MAX_WAIT_MS`); call
    /// [`notify_flusher`](Self::notify_flusher) after the commit to send them at once.
    /// Under `MSG_OUTBOX_OVERFLOW=drop-oldest` the bound is enforced by the writer's next
    /// commit, not here.
    ///
    /// # Errors
    /// [`OutboxError::InvalidConfig`] when `tx` is on another file,
    /// [`OutboxError::Full`] (under `Reject`), [`OutboxError::SessionRouteMismatch`],
    /// [`OutboxError::Storage`]. On an error nothing of this call is left in `tx`.
    pub fn enqueue_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        route: impl Into<Route>,
        messages: Vec<ChatMessage>,
    ) -> Result<Vec<Receipt>, OutboxError> {
        let same_file = tx
            .path()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .zip(std::fs::canonicalize(&self.inner.path).ok())
            .is_some_and(|(a, b)| a == b);
        if !same_file {
            return Err(OutboxError::InvalidConfig(format!(
                "enqueue_in needs a transaction on the outbox file {}",
                self.inner.path.display()
            )));
        }
        let route = route.into().key();
        let max = self.inner.config.max_message_content_bytes;
        let rows: Vec<NewRow> = messages.into_iter().map(|m| new_row(m, max)).collect();
        tx.execute_batch("SAVEPOINT kiln_enqueue_in")?;
        match self.insert_in(tx, &route, &rows) {
            Ok(receipts) => {
                tx.execute_batch("RELEASE kiln_enqueue_in")?;
                // After the rows are written, so the write lock is held: see `absorb_external`.
                self.inner.external.fetch_add(1, Ordering::SeqCst);
                Ok(receipts)
            }
            Err(e) => {
                let _ = tx.execute_batch("ROLLBACK TO kiln_enqueue_in; RELEASE kiln_enqueue_in");
                Err(e)
            }
        }
    }

    fn insert_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        route: &RouteKey,
        rows: &[NewRow],
    ) -> Result<Vec<Receipt>, OutboxError> {
        if self.inner.config.overflow == Overflow::Reject {
            let pending: i64 =
                tx.query_row("SELECT COUNT(*) FROM message_outbox", [], |r| r.get(0))?;
            let pending = usize::try_from(pending).unwrap_or(usize::MAX);
            if pending.saturating_add(rows.len()) > self.inner.config.max_size {
                return Err(OutboxError::Full {
                    max: self.inner.config.max_size,
                });
            }
        }
        let mut next: HashMap<Arc<str>, i64> = HashMap::new();
        let mut receipts = Vec::with_capacity(rows.len());
        for row in rows {
            let seq = match next.get(&row.session) {
                Some(n) => *n,
                None => match durable_next_seq(tx, &row.session)? {
                    Some(s) if *s.workspace != *route.workspace => {
                        return Err(OutboxError::SessionRouteMismatch {
                            session: row.session.to_string(),
                            existing: s.workspace.to_string(),
                            requested: route.workspace.clone(),
                        });
                    }
                    Some(s) => s.next_seq,
                    None => 1,
                },
            };
            let inserted = crate::writer::insert_pending(tx, route, row, seq)?;
            if inserted == 0 {
                let existing: i64 = tx.query_row(
                    "SELECT seq FROM message_outbox WHERE id = ?1",
                    [&row.id_text],
                    |r| r.get(0),
                )?;
                next.insert(row.session.clone(), seq);
                receipts.push(Receipt {
                    id: row.id,
                    seq: existing,
                    duplicate: true,
                });
                continue;
            }
            next.insert(row.session.clone(), seq + 1);
            receipts.push(Receipt {
                id: row.id,
                seq,
                duplicate: false,
            });
        }
        for (session, next_seq) in &next {
            tx.prepare_cached(
                "INSERT INTO sessions (session_id, workspace, next_seq) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (session_id) DO UPDATE SET next_seq = excluded.next_seq \
                 WHERE excluded.next_seq > sessions.next_seq",
            )?
            .execute(params![session, route.workspace, next_seq])?;
        }
        Ok(receipts)
    }

    /// Wakes the flusher (after committing a transaction that used
    /// [`enqueue_in`](Self::enqueue_in)).
    pub fn notify_flusher(&self) {
        self.inner.notify.notify_one();
    }

    /// [`enqueue`](Self::enqueue) for synchronous callers (not from inside an async task).
    /// When the writer is idle the commit runs on the calling thread (together with
    /// whatever else is queued by then), which saves two thread hand-offs per call.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub fn enqueue_blocking(
        &self,
        route: impl Into<Route>,
        message: ChatMessage,
    ) -> Result<Receipt, OutboxError> {
        let receipts = self.enqueue_batch_blocking(route, vec![message])?;
        receipts.into_iter().next().ok_or(OutboxError::Closed)
    }

    /// [`enqueue_batch`](Self::enqueue_batch) for synchronous callers.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub fn enqueue_batch_blocking(
        &self,
        route: impl Into<Route>,
        messages: Vec<ChatMessage>,
    ) -> Result<Vec<Receipt>, OutboxError> {
        let rx = self.send_enqueue(route.into(), messages, Committer::Caller)?;
        self.inner.queue.wait_reply(rx)
    }

    fn send_enqueue(
        &self,
        route: Route,
        messages: Vec<ChatMessage>,
        committer: Committer,
    ) -> Result<oneshot::Receiver<Result<Vec<Receipt>, OutboxError>>, OutboxError> {
        let max = self.inner.config.max_message_content_bytes;
        let rows = messages.into_iter().map(|m| new_row(m, max)).collect();
        let (reply, rx) = oneshot::channel();
        self.inner.queue.submit(
            Command::Enqueue {
                route: route.key(),
                rows,
                reply,
            },
            committer,
        )?;
        Ok(rx)
    }

    pub(crate) async fn settle(&self, settle: Settle) -> Result<SettleOutcome, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .queue
            .submit(Command::Settle { settle, reply }, Committer::Thread)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Rows waiting for delivery (committed state).
    #[must_use]
    pub fn pending_count(&self) -> u64 {
        let c = &self.inner.counters;
        if self.inner.external.load(Ordering::SeqCst) != c.absorbed_external.load(Ordering::SeqCst)
        {
            // `enqueue_in` stored rows the writer has not counted yet (it does at its next
            // commit): the file knows.
            let counted: rusqlite::Result<i64> =
                self.reader()
                    .query_row("SELECT COUNT(*) FROM message_outbox", [], |r| r.get(0));
            if let Ok(n) = counted {
                return u64::try_from(n).unwrap_or(0);
            }
        }
        c.pending.load(Ordering::Relaxed)
    }

    /// Transactions the writer has committed since this outbox was opened: with
    /// [`enqueued`](crate::OutboxMetrics::enqueued), how well concurrent calls share commits.
    #[must_use]
    pub fn commit_count(&self) -> u64 {
        self.inner.counters.commits.load(Ordering::Relaxed)
    }

    /// Every pending message in outbox order (for inspection and tests; reads the file).
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    pub fn pending_messages(&self) -> Result<Vec<ChatMessage>, OutboxError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!("{SELECT_ROWS} ORDER BY pos"))?;
        let rows = stmt.query_map([], decode_row)?;
        let mut out = Vec::new();
        for row in rows {
            if let Loaded::Row(r) = row? {
                out.push(r.message);
            }
        }
        Ok(out)
    }

    /// The newest dead letters, oldest first.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT CAST(id AS TEXT), CAST(session_id AS TEXT), seq, kind, reason, \
             CAST(detail AS TEXT) FROM dead ORDER BY pos",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeadLetter {
                id: r.get(0)?,
                session_id: r.get(1)?,
                seq: r.get(2)?,
                kind: r.get(3)?,
                reason: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn reader(&self) -> MutexGuard<'_, Connection> {
        self.inner
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The workspace of the oldest pending row, if any.
    pub(crate) fn oldest_route(&self) -> Result<Option<String>, OutboxError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT workspace FROM message_outbox ORDER BY pos LIMIT 1")?;
        let mut rows = stmt.query([])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    }

    /// Every workspace with pending rows, the one with the oldest row first.
    pub(crate) fn routes_by_age(&self) -> Result<Vec<String>, OutboxError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT workspace, MIN(pos) AS first FROM message_outbox GROUP BY workspace ORDER BY first",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When each route may be tried again, as persisted by the last run (startup recovery).
    pub(crate) fn persisted_retry_times(&self) -> Result<Vec<(String, i64)>, OutboxError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT workspace, MAX(next_attempt_at) FROM message_outbox \
             WHERE next_attempt_at IS NOT NULL GROUP BY workspace",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The creation time of the oldest pending message.
    pub(crate) fn oldest_created_at(&self) -> Result<Option<Timestamp>, OutboxError> {
        let conn = self.reader();
        let oldest: Option<String> =
            conn.query_row("SELECT MIN(created_at) FROM message_outbox", [], |r| {
                r.get(0)
            })?;
        Ok(oldest.and_then(|s| parse_timestamp(&s)))
    }

    /// The oldest rows of one route: at most `max_rows`, and no more than fit in
    /// `max_bytes` of encoded body (the first row is always taken).
    pub(crate) fn load_batch(
        &self,
        workspace: &str,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<Loaded>, OutboxError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "{SELECT_ROWS} WHERE workspace = ?1 ORDER BY pos LIMIT ?2"
        ))?;
        let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![workspace, limit], decode_row)?;
        let mut out = Vec::new();
        let mut lens = Vec::new();
        for row in rows {
            let row = row?;
            if let Loaded::Row(r) = &row {
                lens.push(r.encoded_len);
                if lens.len() > 1 && body::body_len(lens.iter().copied()) > max_bytes {
                    break;
                }
            }
            out.push(row);
        }
        Ok(out)
    }

    /// Registers `loaded` as in flight (overflow eviction then skips these rows) and keeps
    /// only the rows that still exist: an eviction that committed just before the
    /// registration may have taken some (see [`InFlight`]). The claim lasts until the
    /// returned guard is dropped, after the rows are settled.
    pub(crate) fn claim(&self, loaded: Vec<Loaded>) -> Result<(Vec<Loaded>, Claim), OutboxError> {
        let positions: Vec<i64> = loaded.iter().map(|l| l.key().pos).collect();
        self.inner
            .in_flight
            .lock()
            .extend(positions.iter().copied());
        let claim = Claim {
            in_flight: self.inner.in_flight.clone(),
            positions,
        };
        let (Some(first), Some(last)) =
            (claim.positions.iter().min(), claim.positions.iter().max())
        else {
            return Ok((loaded, claim));
        };
        let present: HashSet<i64> = {
            let conn = self.reader();
            let mut stmt =
                conn.prepare_cached("SELECT pos FROM message_outbox WHERE pos BETWEEN ?1 AND ?2")?;
            let rows = stmt.query_map([first, last], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let kept = loaded
            .into_iter()
            .filter(|l| present.contains(&l.key().pos))
            .collect();
        Ok((kept, claim))
    }

    /// Test hook: the next `n` group commits fail.
    #[cfg(test)]
    pub(crate) fn fail_next_commits(&self, n: u32) {
        self.inner.fail_commits.store(n, Ordering::SeqCst);
    }
}

const SELECT_ROWS: &str = "SELECT pos, CAST(id AS TEXT), session_id, seq, role, content, tool, \
                           created_at, kind FROM message_outbox";

/// A stored row, decoded.
#[derive(Debug, Clone)]
pub(crate) struct OutboxRow {
    pub key: RowKey,
    pub message: ChatMessage,
    pub encoded_len: usize,
}

/// A row as read: decodable, or not (then it is dropped as corrupt, never retried).
#[derive(Debug, Clone)]
pub(crate) enum Loaded {
    Row(OutboxRow),
    Corrupt { key: RowKey, error: String },
}

impl Loaded {
    fn key(&self) -> &RowKey {
        match self {
            Self::Row(r) => &r.key,
            Self::Corrupt { key, .. } => key,
        }
    }
}

/// Rows the flusher has in flight; released when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    in_flight: Arc<InFlight>,
    positions: Vec<i64>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut set = self.in_flight.lock();
        for pos in &self.positions {
            set.remove(pos);
        }
    }
}

fn decode_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Loaded> {
    let key = RowKey {
        pos: r.get(0)?,
        id: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
    };
    let decoded = (|| -> Result<ChatMessage, String> {
        let text = |i: usize| -> Result<String, String> {
            r.get::<_, String>(i)
                .map_err(|e| format!("column {i}: {e}"))
        };
        let id: MessageId = key.id.parse().map_err(|e| format!("id: {e}"))?;
        let session_id: SessionId = text(2)?.parse().map_err(|e| format!("session: {e}"))?;
        let seq: i64 = r.get(3).map_err(|e| format!("seq: {e}"))?;
        let role: Role = text(4)?.parse().map_err(|e| format!("role: {e}"))?;
        let content = text(5)?;
        let tool: Option<String> = r.get(6).map_err(|e| format!("tool: {e}"))?;
        let tool: Option<ToolMeta> = match tool {
            Some(t) => Some(serde_json::from_str(&t).map_err(|e| format!("tool: {e}"))?),
            None => None,
        };
        let created_at =
            parse_timestamp(&text(7)?).ok_or_else(|| "created_at: not RFC 3339".to_owned())?;
        Ok(ChatMessage {
            id,
            session_id,
            role,
            content,
            tool,
            seq: Some(seq),
            created_at,
        })
    })();
    Ok(match decoded {
        Ok(message) => Loaded::Row(OutboxRow {
            encoded_len: body::encoded_len(&message),
            key,
            message,
        }),
        Err(error) => Loaded::Corrupt { key, error },
    })
}

fn new_row(mut m: ChatMessage, max_content: usize) -> NewRow {
    if let Some(cut) = body::truncate_content(&m.content, max_content) {
        tracing::warn!(id = %m.id, bytes = m.content.len(), "message content truncated");
        m.content = cut;
    }
    NewRow {
        id: m.id,
        id_text: m.id.to_string(),
        session: Arc::from(m.session_id.to_string()),
        role: m.role.as_str(),
        tool: m.tool.as_ref().and_then(|t| serde_json::to_string(t).ok()),
        created_at: format_timestamp(m.created_at),
        content: m.content,
    }
}

/// RFC 3339 with nanoseconds and `Z`: fixed width, so text order is time order.
pub(crate) fn format_timestamp(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn parse_timestamp(s: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// `PRAGMA quick_check`; a corrupt file is moved aside (never deleted) so a fresh outbox can
/// start instead of failing every start.
fn check_or_set_aside(
    path: &Path,
    clock: &dyn LifecycleClock,
) -> Result<Option<PathBuf>, OutboxError> {
    match schema::quick_check(path)? {
        schema::Health::Ok => Ok(None),
        schema::Health::Corrupt(found) => {
            let stamp = clock.now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
            let aside = schema::set_aside(path, &stamp)?;
            tracing::error!(
                path = %path.display(),
                moved_to = %aside.display(),
                %found,
                "OUTBOX FILE CORRUPT: moved aside and a fresh outbox started; the messages \
                 still in the moved file were NOT delivered"
            );
            Ok(Some(aside))
        }
    }
}

fn lock_file(path: &Path) -> Result<File, OutboxError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(OutboxError::Locked {
            path: path.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(e.into()),
    }
}
