//! Checkpoints off the commit path.
//!
//! In WAL mode with `synchronous=NORMAL` a commit only appends to the WAL; the fsyncs
//! happen when the WAL is copied back into the database (a checkpoint). SQLite runs that
//! checkpoint inside whichever commit crosses `wal_autocheckpoint` (1,000 pages), so every
//! few hundred enqueues one producer waits for two fsyncs: on a busy disk that was most of
//! the one-producer enqueue time. Here a thread with its own connection checkpoints
//! (`PASSIVE`: it never blocks the writer) shortly after commits happen, and the writer's
//! own auto-checkpoint stays as a fallback at a larger size in case this thread falls
//! behind. Durability is unchanged: what a commit promises never depended on checkpoints,
//! and the checkpointer syncs at the outbox's own `synchronous` level.

use std::path::Path;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;

use crate::config::Durability;
use crate::error::OutboxError;

/// How long commits accumulate before a checkpoint (WAL growth at most this much writing).
pub(crate) const CHECKPOINT_DELAY: Duration = Duration::from_millis(50);
/// The writer's own auto-checkpoint, used only if the checkpointer falls behind (pages).
pub(crate) const WRITER_AUTOCHECKPOINT_PAGES: i64 = 10_000;

#[derive(Default)]
pub(crate) struct Checkpointer {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Commits happened since the last checkpoint.
    dirty: bool,
    closed: bool,
}

impl Checkpointer {
    /// Called by the writer after each commit; wakes the thread once per checkpoint cycle.
    pub(crate) fn committed(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !s.dirty {
            s.dirty = true;
            self.wake.notify_one();
        }
    }

    pub(crate) fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.closed = true;
        self.wake.notify_one();
    }

    /// The checkpoint thread: sleeps until a commit, lets commits accumulate for
    /// [`CHECKPOINT_DELAY`], checkpoints, repeats; returns once closed.
    pub(crate) fn run(&self, conn: &Connection) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            while !s.dirty && !s.closed {
                s = self.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            if s.closed {
                return;
            }
            s = self
                .wake
                .wait_timeout_while(s, CHECKPOINT_DELAY, |s| !s.closed)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if s.closed {
                return;
            }
            s.dirty = false;
            drop(s);
            let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            });
            match done {
                Ok((log, copied)) => {
                    tracing::trace!(log, copied, "outbox WAL checkpoint");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox WAL checkpoint failed; retrying later")
                }
            }
            s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The checkpointer's connection: read-write, syncing at the outbox's durability level.
pub(crate) fn open_connection(
    path: &Path,
    durability: Durability,
) -> Result<Connection, OutboxError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    crate::schema::set_and_check(&conn, "synchronous", durability.synchronous())?;
    if durability == Durability::PowerLoss {
        conn.pragma_update(None, "fullfsync", 1)?;
        conn.pragma_update(None, "checkpoint_fullfsync", 1)?;
    }
    // This connection never commits, so it never auto-checkpoints; say so anyway.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}
