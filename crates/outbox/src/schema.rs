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

/// What `PRAGMA quick_check` found.
pub(crate) enum Health {
    Ok,
    Corrupt(String),
}

/// Runs `PRAGMA quick_check` on the file (a missing file is healthy). Corruption is an
/// answer, not an error; other failures (permissions, I/O) are errors.
pub(crate) fn quick_check(path: &Path) -> Result<Health, OutboxError> {
    if !path.exists() {
        return Ok(Health::Ok);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let found = (|| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    })();
    match found {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(Health::Ok),
        Ok(rows) => Ok(Health::Corrupt(rows.join("; "))),
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ) =>
        {
            Ok(Health::Corrupt(e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Renames the file (and its `-wal` and `-shm`) to `<path>.corrupt-<stamp>`; returns the
/// new path of the database file. Nothing is deleted.
pub(crate) fn set_aside(path: &Path, stamp: &str) -> Result<std::path::PathBuf, OutboxError> {
    let with = |base: &Path, suffix: &str| {
        let mut p = base.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    // Never over an earlier one (a rename would replace it).
    let mut aside = with(path, &format!(".corrupt-{stamp}"));
    let mut n = 1;
    while ["", "-wal", "-shm"]
        .iter()
        .any(|suffix| with(&aside, suffix).exists())
    {
        aside = with(path, &format!(".corrupt-{stamp}-{n}"));
        n += 1;
    }
    for suffix in ["", "-wal", "-shm"] {
        let from = with(path, suffix);
        if from.exists() {
            std::fs::rename(&from, with(&aside, suffix))?;
        }
    }
    Ok(aside)
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
