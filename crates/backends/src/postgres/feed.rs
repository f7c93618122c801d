//! The change feed over `LISTEN/NOTIFY`: events are published with `pg_notify` (inside the
//! transaction that made the change, so they arrive only if it commits) and every store
//! instance listening on the database, this one included, hands them to its subscribers.

use std::time::Duration;

use kiln_core::{StoreError, StoreEvent};
use sqlx::postgres::PgListener;
use sqlx::{Executor, Postgres};
use tokio::task::JoinHandle;

use super::map_err;
use crate::sql_common::Feed;

/// PostgreSQL's limit on a notification payload, in bytes (less one for the terminator).
const MAX_PAYLOAD: usize = 7999;

/// The notification payload of `event`: its JSON, small by design.
pub(super) fn payload(event: &StoreEvent) -> Result<String, StoreError> {
    let payload = serde_json::to_string(event).map_err(|e| StoreError::Invalid {
        message: format!("event not serializable: {e}"),
    })?;
    if payload.len() > MAX_PAYLOAD {
        return Err(StoreError::Invalid {
            message: format!("event of {} bytes exceeds the notify limit", payload.len()),
        });
    }
    Ok(payload)
}

/// Announces `event` on `channel` through `executor` (a transaction or the pool).
pub(super) async fn notify<'e>(
    executor: impl Executor<'e, Database = Postgres>,
    channel: &str,
    event: &StoreEvent,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload(event)?)
        .execute(executor)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// The background task that listens on the channel; stops when dropped.
#[derive(Debug)]
pub(super) struct ListenerTask {
    handle: JoinHandle<()>,
}

impl ListenerTask {
    /// Connects a dedicated listening connection, subscribes to `channel`, and forwards
    /// every event heard to `feed`.
    pub(super) async fn start(url: &str, channel: &str, feed: Feed) -> Result<Self, StoreError> {
        let mut listener = PgListener::connect(url).await.map_err(map_err)?;
        listener.listen(channel).await.map_err(map_err)?;
        let channel = channel.to_owned();
        let handle = tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        match serde_json::from_str::<StoreEvent>(notification.payload()) {
                            Ok(event) => feed.send(event),
                            Err(e) => tracing::warn!(
                                %channel,
                                error = %e,
                                "ignoring a notification that is not a store event"
                            ),
                        }
                    }
                    // The connection dropped; the next call reconnects and listens again.
                    // Events in between are lost: viewers catch up by cursor.
                    Ok(None) => {
                        tracing::warn!(%channel, "change feed connection lost; reconnecting");
                    }
                    Err(e) => {
                        tracing::warn!(%channel, error = %e, "change feed cannot listen; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self { handle })
    }
}

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
