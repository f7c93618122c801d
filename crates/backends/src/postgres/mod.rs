//! The PostgreSQL store: the store several server replicas share. Claims are single
//! `UPDATE … FOR UPDATE SKIP LOCKED` statements; the change feed travels over
//! `LISTEN/NOTIFY`, so every replica hears of messages any replica stored.

mod error;
mod feed;
mod nodes;
mod rows;
mod secrets;
mod sessions;
mod tasks;
mod users;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::StoreError;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::sql_common::{Feed, env_u64};

pub(crate) use error::map_err;

/// How to open a [`PostgresStore`]. Every field has a default and an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// A `postgres://` URL.
    pub url: String,
    /// Connections in the pool (`KILN_POSTGRES_MAX_CONNECTIONS`, default 10); the change
    /// feed holds one more of its own.
    pub max_connections: u32,
    /// How long a call waits for a free connection before failing with a retryable error
    /// (`KILN_POSTGRES_ACQUIRE_TIMEOUT_MS`, default 5000).
    pub acquire_timeout: Duration,
    /// The `LISTEN/NOTIFY` channel of the change feed (`KILN_POSTGRES_CHANNEL`, default
    /// `kiln_events`). Replicas sharing a database must use the same one.
    pub channel: String,
}

impl PostgresConfig {
    /// The defaults for `url`, overridden by the environment.
    #[must_use]
    pub fn from_env(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: u32::try_from(env_u64("KILN_POSTGRES_MAX_CONNECTIONS", 10))
                .unwrap_or(10)
                .max(1),
            acquire_timeout: Duration::from_millis(env_u64(
                "KILN_POSTGRES_ACQUIRE_TIMEOUT_MS",
                5000,
            )),
            channel: std::env::var("KILN_POSTGRES_CHANNEL")
                .ok()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "kiln_events".into()),
        }
    }
}

/// A [`Store`](kiln_core::Store) in PostgreSQL, safe to share between server replicas.
///
/// Cloning is cheap and shares the pool and the change feed; the feed's listener stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    feed: Feed,
    channel: Arc<str>,
    _listener: Arc<feed::ListenerTask>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("connections", &self.pool.size())
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` with the settings from the environment, applies the migrations and
    /// starts listening for changes.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(PostgresConfig::from_env(url)).await
    }

    /// Connects as `config` says, applies the migrations and starts listening for changes.
    pub async fn connect_with(config: PostgresConfig) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect(&config.url)
            .await
            .map_err(map_err)?;
        // sqlx takes an advisory lock, so replicas starting together migrate once.
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend {
                message: format!("migrating the PostgreSQL store: {e}"),
            })?;
        let feed = Feed::new();
        // Listening starts before `connect` returns, so nothing stored afterwards is missed.
        let listener =
            feed::ListenerTask::start(&config.url, &config.channel, feed.clone()).await?;
        tracing::debug!(channel = %config.channel, "PostgreSQL store ready");
        Ok(Self {
            pool,
            feed,
            channel: config.channel.into(),
            _listener: Arc::new(listener),
        })
    }

    /// The connection pool, for queries this crate does not offer.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every pooled connection; later calls fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
