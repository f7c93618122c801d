//! The SQLite store: one database file (or `sqlite::memory:`), WAL mode, migrations applied on
//! connect, writes serialized by `BEGIN IMMEDIATE`, and an in-process change feed.

mod error;
mod nodes;
mod rows;
mod secrets;
mod sessions;
mod tasks;
mod users;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use kiln_core::StoreError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::sql_common::{Feed, env_u64};

pub(crate) use error::map_err;

/// How to open a [`SqliteStore`]. Every field has a default and an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// A `sqlite:` URL (`sqlite://kiln.db`, `sqlite::memory:`) or a file path. The file is
    /// created when missing.
    pub url: String,
    /// Connections in the pool (`KILN_SQLITE_MAX_CONNECTIONS`, default 8). An in-memory
    /// database always uses one, since each connection would see its own database.
    pub max_connections: u32,
    /// How long a writer waits for another writer's lock before failing with a retryable
    /// error (`KILN_SQLITE_BUSY_TIMEOUT_MS`, default 5000).
    pub busy_timeout: Duration,
    /// Whether every commit waits for the disk (`synchronous = FULL`), so an acknowledged
    /// message survives a power loss, not only a crash; `false` trades that for throughput
    /// (`synchronous = NORMAL`). `KILN_SQLITE_FSYNC_EVERY_COMMIT`, default true.
    pub fsync_every_commit: bool,
}

impl SqliteConfig {
    /// The defaults for `url`, overridden by the environment.
    #[must_use]
    pub fn from_env(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: u32::try_from(env_u64("KILN_SQLITE_MAX_CONNECTIONS", 8))
                .unwrap_or(8)
                .max(1),
            busy_timeout: Duration::from_millis(env_u64("KILN_SQLITE_BUSY_TIMEOUT_MS", 5000)),
            fsync_every_commit: env_u64("KILN_SQLITE_FSYNC_EVERY_COMMIT", 1) != 0,
        }
    }

    fn is_in_memory(&self) -> bool {
        self.url.contains(":memory:") || self.url.contains("mode=memory")
    }
}

/// A [`Store`](kiln_core::Store) in SQLite: the embedded, single-machine default.
///
/// Cloning is cheap and shares the pool and the change feed.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    feed: Feed,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("connections", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `url_or_path` with the settings from
    /// the environment, and applies the migrations.
    pub async fn connect(url_or_path: &str) -> Result<Self, StoreError> {
        Self::connect_with(SqliteConfig::from_env(url_or_path)).await
    }

    /// Opens the database described by `config` and applies the migrations.
    pub async fn connect_with(config: SqliteConfig) -> Result<Self, StoreError> {
        let options = if config.url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(&config.url).map_err(map_err)?
        } else {
            SqliteConnectOptions::new().filename(&config.url)
        }
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if config.fsync_every_commit {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        })
        .foreign_keys(true)
        .busy_timeout(config.busy_timeout);
        let in_memory = config.is_in_memory();
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { config.max_connections })
            // An in-memory database lives as long as its one connection.
            .idle_timeout((!in_memory).then_some(Duration::from_secs(600)))
            .max_lifetime((!in_memory).then_some(Duration::from_secs(1800)))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend {
                message: format!("migrating the SQLite store: {e}"),
            })?;
        tracing::debug!(url = %config.url, in_memory, "SQLite store ready");
        Ok(Self {
            pool,
            feed: Feed::new(),
        })
    }

    /// The connection pool, for queries this crate does not offer.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection; later calls fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction that takes the database's write lock up front, so two writers
    /// never deadlock upgrading read locks; a busy database waits up to the busy timeout.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)
    }
}

#[cfg(test)]
mod tests {
    use kiln_core::{MessagePage, ProjectId, SessionQuery};
    use sqlx::{AssertSqlSafe, Row};

    use super::SqliteStore;
    use super::nodes::claim_sql;
    use super::sessions::{page_query, sessions_query};

    async fn plan(store: &SqliteStore, sql: &str) -> String {
        sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
            .fetch_all(store.pool())
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The page load (sessions of a project, latest messages of a session) and the claim
    /// read through their indexes, in index order, without sorting.
    #[tokio::test]
    async fn the_page_load_and_the_claim_are_index_backed() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let query = SessionQuery {
            task_id: None,
            limit: Some(100),
        };
        let sessions = plan(
            &store,
            sessions_query(ProjectId::new(), &query).sql().as_str(),
        )
        .await;
        assert!(
            sessions.contains("USING INDEX chat_sessions_by_project")
                && !sessions.contains("B-TREE"),
            "{sessions}"
        );
        for page in [
            MessagePage::Latest { limit: 200 },
            MessagePage::After {
                cursor: 5,
                limit: 200,
            },
        ] {
            let messages = plan(&store, &page_query(page).0).await;
            assert!(
                messages.contains("USING INDEX sqlite_autoindex_chat_messages")
                    && messages.contains("session_id=? AND cursor")
                    && !messages.contains("B-TREE"),
                "{messages}"
            );
        }
        let claim = plan(&store, &claim_sql()).await;
        assert!(
            claim.contains("USING INDEX nodes_warm_by_owner_size") && !claim.contains("B-TREE"),
            "{claim}"
        );
    }
}
