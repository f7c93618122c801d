//! Opening the SQLite file: pragmas (set explicitly and read back) and the transactional
//! schema migration. Nothing here ever deletes a row.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::config::Durability;
use crate::error::OutboxError;

/// The schema version this crate writes (`PRAGMA user_version`).
pub(crate) const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = r"
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY NOT NULL,
    workspace  TEXT NOT NULL,
    next_seq   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS message_outbox (
    pos             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    workspace       TEXT NOT NULL,
    project         TEXT,
    session_id      TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    tool            TEXT,
    kind            TEXT NOT NULL DEFAULT 'message',
    dropped_count   INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_attempt_at INTEGER,
    next_attempt_at INTEGER,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS message_outbox_workspace ON message_outbox (workspace, pos);

CREATE TABLE IF NOT EXISTS dead (
    pos           INTEGER PRIMARY KEY,
    id            TEXT NOT NULL,
    workspace     TEXT NOT NULL,
    project       TEXT,
    session_id    TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    role          TEXT NOT NULL,
    content       TEXT NOT NULL,
    tool          TEXT,
    kind          TEXT NOT NULL,
    dropped_count INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    detail        TEXT,
    dead_at       INTEGER NOT NULL
);
";

/// Opens the writer connection: WAL, the durability level, the schema.
pub(crate) fn open_writer(path: &Path, durability: Durability) -> Result<Connection, OutboxError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OutboxError::Pragma {
            pragma: "journal_mode",
            wanted: "wal".into(),
            got: mode,
        });
    }
    set_and_check(&conn, "synchronous", durability.synchronous())?;
    if durability == Durability::PowerLoss {
        // Only macOS honours it (F_FULLFSYNC); elsewhere FULL already fsyncs.
        conn.pragma_update(None, "fullfsync", 1)?;
        conn.pragma_update(None, "checkpoint_fullfsync", 1)?;
    }
    // The outbox relies on the integer-key monotonicity of AUTOINCREMENT, not on FKs.
    set_and_check(&conn, "foreign_keys", 0)?;
    // Checkpoints run on their own thread (see `checkpoint`); this is only the fallback.
    set_and_check(
        &conn,
        "wal_autocheckpoint",
        crate::checkpoint::WRITER_AUTOCHECKPOINT_PAGES,
    )?;
    migrate(&conn)?;
    reconcile_sessions(&conn)?;
    Ok(conn)
}

/// Brings each session's `next_seq` up to `MAX(seq) + 1` of its pending rows. The writer
/// persists `next_seq` only when it removes rows (an insert-only commit saves that page), so
/// after a crash the newest seqs may live only in `message_outbox`. Only raises values;
/// never deletes.
fn reconcile_sessions(conn: &Connection) -> Result<(), OutboxError> {
    conn.execute(
        "INSERT INTO sessions (session_id, workspace, next_seq) \
         SELECT session_id, workspace, MAX(seq) + 1 FROM message_outbox WHERE true \
         GROUP BY session_id \
         ON CONFLICT (session_id) DO UPDATE SET next_seq = excluded.next_seq \
         WHERE excluded.next_seq > sessions.next_seq",
        [],
    )?;
    Ok(())
}

/// Opens a read-only connection for the flusher and the metrics.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, OutboxError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

pub(crate) fn set_and_check(
    conn: &Connection,
    pragma: &'static str,
    value: i64,
) -> Result<(), OutboxError> {
    conn.pragma_update(None, pragma, value)?;
    let got: i64 = conn.pragma_query_value(None, pragma, |r| r.get(0))?;
    if got == value {
        Ok(())
    } else {
        Err(OutboxError::Pragma {
            pragma,
            wanted: value.to_string(),
            got: got.to_string(),
        })
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction. A file written by a newer
/// version is refused rather than touched.
fn migrate(conn: &Connection) -> Result<(), OutboxError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(OutboxError::InvalidConfig(format!(
            "the outbox file has schema version {version}, newer than this build's {SCHEMA_VERSION}"
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_V1)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pragmas_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.sqlite");
        let conn = open_writer(&path, Durability::PowerLoss).unwrap();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
        drop(conn);
        let conn = open_writer(&path, Durability::Process).unwrap();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_newer_schema_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = open_writer(&path, Durability::Process).unwrap_err();
        assert!(err.to_string().contains("99"), "{err}");
    }
}
