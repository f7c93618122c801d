//! # kiln-outbox
//!
//! A crash-safe SQLite message outbox, and the flusher that delivers its messages in batches
//! to a [`kiln_core::MessageSink`] with classified retries. Kiln nodes write every chat
//! message here; any other program can embed it with its own sink.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use kiln_core::{ChatMessage, DeliveryReport, MessageId, MessageSink, Role, SessionId,
//!                 SinkError, SystemClock, LifecycleClock};
//! use kiln_outbox::{Outbox, OutboxConfig, Route};
//!
//! /// A sink that keeps what it receives.
//! #[derive(Debug, Default)]
//! struct Keep(Mutex<Vec<ChatMessage>>);
//!
//! #[async_trait::async_trait]
//! impl MessageSink for Keep {
//!     async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
//!         self.0.lock().unwrap().extend_from_slice(batch);
//!         Ok(DeliveryReport { persisted: batch.len() as u64, duplicates: 0 })
//!     }
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let outbox = Outbox::open(dir.path().join("outbox.sqlite"), OutboxConfig::default())?;
//! let session = SessionId::new();
//! for text in ["first", "second"] {
//!     let message = ChatMessage {
//!         id: MessageId::new(), session_id: session, role: Role::Assistant,
//!         content: text.into(), tool: None, seq: None, created_at: SystemClock.now(),
//!     };
//!     // Returns once the row is committed: a killed process no longer loses it.
//!     outbox.enqueue(Route::single(), message).await?;
//! }
//! let sink = Arc::new(Keep::default());
//! let flusher = outbox.spawn_flusher(sink.clone(), Arc::new(SystemClock));
//! while outbox.pending_count() > 0 {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! }
//! let report = flusher.shutdown(SystemClock.now()).await;
//! assert_eq!(report.pending, 0);
//! let got = sink.0.lock().unwrap();
//! assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), [Some(1), Some(2)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## What an acknowledged enqueue survives
//!
//! [`Outbox::enqueue`] returns only after the transaction holding the row has committed.
//! The file is in WAL mode; the pragmas are set explicitly on open and read back (an open
//! fails with [`OutboxError::Pragma`] if SQLite does not report what was asked).
//!
//! - [`Durability::Process`] (default, `synchronous=NORMAL`): a killed or crashed process
//!   loses nothing that was acknowledged (the crash test kills a writer with `SIGKILL` at
//!   random moments and checks every acknowledged id). A power loss or kernel crash may lose
//!   the last acknowledged commits, never the file.
//! - [`Durability::PowerLoss`] (`MSG_OUTBOX_DURABILITY=power-loss`, `synchronous=FULL`, plus
//!   `fullfsync` on macOS): every acknowledged enqueue is on stable storage. Power loss is
//!   not simulated in CI; this rests on SQLite's documented FULL semantics.
//!
//! Producers share commits (group commit). One write connection; calls queue in front of
//! it, and whoever finds it idle commits everything queued (up to
//! `MSG_GROUP_COMMIT_MAX_ROWS`) in one `BEGIN IMMEDIATE … COMMIT`, then answers every
//! waiter. [`Outbox::enqueue_blocking`] commits on the calling thread when the writer is
//! idle (a lone producer pays no thread hand-off); [`Outbox::enqueue`] and the flusher hand
//! the queue to the writer thread, which also takes over whatever queued up meanwhile.
//! When the previous group served several calls, the group waits for as many inside its
//! open transaction, applying each arrival while it waits for the next (at most
//! `MSG_GROUP_COMMIT_MAX_WAIT_US`, never longer than the previous commit took), because
//! the producers just answered are about to call again.
//! Waiting threads spin before they sleep (`MSG_GROUP_COMMIT_SPIN_US`, 100 µs, yielding the
//! CPU between checks): a blocking producer whose row another thread commits, a gathering
//! committer, and the writer thread after its last group. Waking a sleeping thread costs
//! about as much as a `synchronous=NORMAL` commit, so this doubled the rate of eight
//! blocking producers on a 2-core VM (52k to 105k msg/s, at a third of the CPU per
//! message). A blocking producer spins through a commit slower than that (one and a half
//! times the previous commit, at most four times the setting): under `synchronous=FULL`
//! each commit waits for an fsync, and waking the producers after it cost eight of them a
//! third of their rate. `cargo bench -p kiln-outbox` prints the figures against raw SQLite.
//! Consecutive enqueue calls of a group share multi-row `INSERT … VALUES (…), (…)`
//! statements (up to 32 rows each): SQLite's per-statement work, the `AUTOINCREMENT`
//! bookkeeping among it, is paid once per statement instead of once per row. A statement
//! that meets an id already pending (it changes fewer rows than it carries) or fails rolls
//! the group back, and the group runs again one row per statement, which answers the
//! pending id with its stored seq and gives the other rows contiguous seqs.
//! A group runs without savepoints; if one call fails, the group is rolled back and run
//! again with one savepoint per call, so one failing call does not fail its neighbours.
//! A failed **commit** fails every waiter of the group, and no waiter is ever told `Ok`
//! for a row that is not committed.
//!
//! WAL checkpoints (the only place `synchronous=NORMAL` fsyncs) run on a separate thread
//! with its own connection (`PASSIVE`, about 50 ms after commits), not inside a producer's
//! commit; the writer's own auto-checkpoint remains as a fallback at 10,000 pages. The
//! checkpoint connection syncs at the configured durability level.
//!
//! ## Order, identity and delivery
//!
//! Each message keeps the id its producer gave it and gets a per-session `seq` (1, 2, 3 …,
//! contiguous, never reused after a crash), allocated in the same transaction as the
//! insert. A session's next seq is the larger of its `sessions` row and `MAX(seq) + 1` of
//! its pending rows: an insert-only commit writes only the row (opening the file folds
//! `MAX(seq) + 1` back into `sessions`), and a commit that removes rows first brings the
//! `sessions` rows of the sessions concerned up to date. The receiver should deduplicate by id (delivery is
//! at-least-once: a crash between the receiver's 2xx and the local delete resends the
//! batch, with the same ids and seqs; the crash-point tests stop a delivery before the send,
//! after a lost answer and between the acknowledgement and the delete, and check that an
//! id-deduplicating receiver ends up with every message exactly once) and may order a session by `seq`; a gap in `seq` is always explained by a drop
//! notice.
//!
//! The flusher sends the oldest rows of one route at a time: at most `MSG_BATCH_MAX_SIZE`
//! messages and `MSG_BATCH_MAX_BYTES` of the exact encoded body `{"messages":[...]}` (a
//! single larger message goes alone). It sends the next batch as soon as one is
//! acknowledged, sleeps when nothing is due, wakes at once on an enqueue, and looks at least
//! every `MSG_BATCH_MAX_WAIT_MS`. Per session, a message is never sent before every earlier
//! message of the session has been acknowledged or dropped. Acknowledged rows are deleted
//! by position **and** id (compare-and-set), in the writer's next group commit.
//!
//! ## A transactional outbox: `enqueue_in`
//!
//! [`Outbox::enqueue_in`] stores messages inside the host's own `rusqlite::Transaction` on
//! the outbox file, so the host's writes and its messages commit (or roll back) together.
//! Seqs are allocated from the file inside that transaction; the writer notices such writes
//! (a generation counter bumped while the host holds the write lock) and refreshes its
//! cached seqs and pending count before its next commit.
//!
//! ## Routes: one outbox, several workspaces
//!
//! One outbox file may hold the messages of several workspaces of a node. Each enqueue names
//! a [`Route`] (the workspace, optionally the project); a batch never mixes routes, and the
//! flusher asks a [`SinkRouter`] for each route's sink: [`SingleSink`] (what
//! [`Outbox::spawn_flusher`] uses) for one sink, or [`SinkMap`] to add a workspace's
//! [`HttpMessageSink`] when the workspace is created. A route without a sink keeps its
//! messages until one appears. A failing route (401, outage) never holds up the others.
//!
//! ## Failures, classified once
//!
//! [`HttpMessageSink`] maps every HTTP status to a [`kiln_core::SinkError`] in one function;
//! the flusher acts on the class:
//!
//! | class | action |
//! |---|---|
//! | `Unavailable` (network, timeout, 408, 429, 5xx) | keep the rows; retry the route after a full-jitter exponential delay (1 s doubling to 30 s), or the server's `Retry-After` (capped at `MSG_RETRY_AFTER_MAX_MS`). **Never dropped**, however long it lasts. |
//! | `PayloadTooLarge` (413) | split the batch in halves and send each; a single message that is still too large is dropped as poison, with a notice |
//! | `Rejected` (400/422) | drop exactly the ids the receiver named; if it named none, split until the culprit is isolated. Neighbours are delivered. |
//! | `Unauthorized` (401/403) | keep everything, retry slowly (1 min doubling to 5 min), expose [`Condition::AuthFailed`]; [`HttpMessageSink::set_token`] + [`FlusherHandle::wake`] pick up a rotated token at once |
//! | `Misconfigured` (404, other 4xx) | keep everything, retry slowly, expose [`Condition::Misconfigured`] |
//!
//! After `MSG_RETRY_MAX_ELAPSED_TIME_MS` of continuous transient failure a route is shown as
//! [`Condition::Stalled`] and logged at error level; its messages are still kept.
//!
//! The backoff envelope comes from the [`backon`] crate. The `backoff` crate, the usual
//! alternative, is unmaintained (RUSTSEC-2025-0012). The jitter is full jitter (a uniform
//! draw in `[0, envelope]`) drawn here from an injectable RNG, because backon's own jitter
//! adds up to another envelope on top and would exceed the configured maximum.
//!
//! ## Bounded size and dropped messages
//!
//! Above `MSG_OUTBOX_MAX_SIZE` pending rows, the oldest rows are dropped in the same
//! transaction as the insert that overflowed, and each affected session gets a system
//! message "N messages were dropped because the outbox was full." queued like any other
//! message (a notice that is itself evicted passes its count on to the next one). Rows in
//! flight (handed to a sink and not yet settled) are never evicted: the oldest rows not in
//! flight go instead, so a message is never both delivered and counted dropped (if the
//! rows in flight alone exceed the bound, it is exceeded until they are settled). Messages
//! dropped for any reason are counted ([`OutboxMetrics::dropped`]), logged, and kept in a
//! `dead` table for inspection ([`Outbox::dead_letters`], the newest `MSG_DEAD_MAX_ROWS`).
//! A row that cannot be decoded is moved there too instead of blocking the outbox.
//!
//! Content above `MSG_MAX_MESSAGE_CONTENT_BYTES` is truncated on enqueue and ends with the
//! visible marker `[… message truncated by the outbox: N bytes omitted]`.
//!
//! With `MSG_OUTBOX_OVERFLOW=reject` ([`Overflow::Reject`]) nothing is ever evicted: an
//! enqueue that would pass the bound fails whole with [`OutboxError::Full`] (retryable once
//! the flusher has delivered), which gives producers back-pressure.
//!
//! ## Startup recovery and shutdown
//!
//! On open, `PRAGMA quick_check` runs first (`MSG_OUTBOX_QUICK_CHECK`, on by default). A
//! corrupt file is not deleted and does not make every start fail: it is renamed to
//! `<path>.corrupt-<time>` together with its `-wal` and `-shm`, an error is logged, a fresh
//! outbox starts, and [`Outbox::corrupt_file_set_aside`] names the moved file so the host
//! can raise an alarm.
//!
//! Opening never deletes a row: the schema migration is one transaction, and rows left by a
//! crash (including rows that were in flight) are simply sent again; a route that was in
//! backoff waits until its persisted `next_attempt_at`. The file is locked (`<path>.lock`)
//! so a second handle fails with [`OutboxError::Locked`]. [`FlusherHandle::shutdown`] makes a
//! final flush until its deadline; what is left stays on disk for the next start.
//!
//! ## Settings
//!
//! Every setting has a default and an environment variable read by
//! [`OutboxConfig::from_env`]:
//!
//! | setting | env var | default |
//! |---|---|---|
//! | [`batch_max_size`](OutboxConfig::batch_max_size) | `MSG_BATCH_MAX_SIZE` | 50 |
//! | [`batch_max_bytes`](OutboxConfig::batch_max_bytes) | `MSG_BATCH_MAX_BYTES` | 65536 |
//! | [`batch_max_wait`](OutboxConfig::batch_max_wait) | `MSG_BATCH_MAX_WAIT_MS` | 2000 |
//! | [`max_message_content_bytes`](OutboxConfig::max_message_content_bytes) | `MSG_MAX_MESSAGE_CONTENT_BYTES` | 204800 |
//! | [`max_size`](OutboxConfig::max_size) | `MSG_OUTBOX_MAX_SIZE` | 10000 |
//! | [`retry_initial_interval`](OutboxConfig::retry_initial_interval) | `MSG_RETRY_INITIAL_INTERVAL_MS` | 1000 |
//! | [`retry_max_interval`](OutboxConfig::retry_max_interval) | `MSG_RETRY_MAX_INTERVAL_MS` | 30000 |
//! | [`retry_max_elapsed_time`](OutboxConfig::retry_max_elapsed_time) | `MSG_RETRY_MAX_ELAPSED_TIME_MS` | 300000 (then `Stalled`; never a drop) |
//! | [`retry_after_max`](OutboxConfig::retry_after_max) | `MSG_RETRY_AFTER_MAX_MS` | 600000 |
//! | [`auth_retry_initial_interval`](OutboxConfig::auth_retry_initial_interval) | `MSG_AUTH_RETRY_INITIAL_INTERVAL_MS` | 60000 |
//! | [`auth_retry_max_interval`](OutboxConfig::auth_retry_max_interval) | `MSG_AUTH_RETRY_MAX_INTERVAL_MS` | 300000 |
//! | [`durability`](OutboxConfig::durability) | `MSG_OUTBOX_DURABILITY` (`process` / `power-loss`) | `process` |
//! | [`overflow`](OutboxConfig::overflow) | `MSG_OUTBOX_OVERFLOW` (`drop-oldest` / `reject`) | `drop-oldest` |
//! | [`quick_check_on_open`](OutboxConfig::quick_check_on_open) | `MSG_OUTBOX_QUICK_CHECK` (`true` / `false`) | `true` |
//! | [`group_commit_max_rows`](OutboxConfig::group_commit_max_rows) | `MSG_GROUP_COMMIT_MAX_ROWS` | 512 |
//! | [`group_commit_max_wait`](OutboxConfig::group_commit_max_wait) | `MSG_GROUP_COMMIT_MAX_WAIT_US` | 1000 (0: never wait) |
//! | [`group_commit_spin`](OutboxConfig::group_commit_spin) | `MSG_GROUP_COMMIT_SPIN_US` | 100 (0: sleep at once) |
//! | [`dead_max_rows`](OutboxConfig::dead_max_rows) | `MSG_DEAD_MAX_ROWS` | 1000 |
//! | [`http_timeout`](OutboxConfig::http_timeout) | `MSG_HTTP_TIMEOUT_MS` | 30000 |
//! | [`http_connect_timeout`](OutboxConfig::http_connect_timeout) | `MSG_HTTP_CONNECT_TIMEOUT_MS` | 5000 |
//!
//! ## Runtime
//!
//! SQLite is bundled. The writer is a plain thread, so `enqueue_blocking` works without any
//! runtime; `enqueue` is a future that works on any executor. The flusher and
//! [`HttpMessageSink`] need a tokio runtime (either flavour).

pub mod body;
mod checkpoint;
mod config;
mod error;
mod flusher;
mod http;
mod metrics;
mod outbox;
mod queue;
mod router;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

pub use config::{Durability, OutboxConfig, Overflow};
pub use error::OutboxError;
pub use flusher::{FlusherHandle, FlusherOptions, ShutdownReport};
pub use http::HttpMessageSink;
pub use metrics::{Condition, Dropped, OutboxMetrics};
pub use outbox::{DeadLetter, Outbox, Route};
pub use router::{SingleSink, SinkMap, SinkRouter};
pub use writer::{DropReason, Receipt};
