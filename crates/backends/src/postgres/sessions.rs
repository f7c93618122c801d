//! Projects, chat sessions, messages and the change feed.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use futures::stream::BoxStream;
use kiln_core::{
    ChatMessage, ChatSession, InsertOutcome, MessageId, MessagePage, Project, ProjectId, SessionId,
    SessionPatch, SessionQuery, SessionStatus, SessionStore, StoreError, StoreEvent, StoredMessage,
    Timestamp, UserId,
};
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::feed::{notify, payload};
use super::rows::{self, MESSAGE_COLUMNS, PROJECT_COLUMNS, SESSION_COLUMNS};
use super::{PostgresStore, map_err};
use crate::sql_common::{
    SessionHead, distinct_sessions, missing_session, plan_messages, tool_json,
};

/// How often a batch is re-planned when one of its ids was stored concurrently under
/// another session (a producer bug; the duplicate is then counted as such).
const INSERT_ATTEMPTS: usize = 3;

/// The page below a cursor, newest first (reversed after reading).
const NEWEST_BELOW: &str = "WHERE session_id = $1 AND cursor < $2 ORDER BY cursor DESC LIMIT $3";

#[async_trait]
impl SessionStore for PostgresStore {
    async fn create_project(&self, project: &Project) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO projects (id, owner, name, repository_url, default_vm_size, created_at, \
             updated_at, provider) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(project.id.0)
        .bind(project.owner.0)
        .bind(&project.name)
        .bind(&project.repository_url)
        .bind(project.default_vm_size.as_str())
        .bind(project.created_at)
        .bind(project.updated_at)
        .bind(&project.provider)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .as_ref()
        .map(rows::project)
        .transpose()
    }

    async fn list_projects(&self, owner: UserId) -> Result<Vec<Project>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE owner = $1 ORDER BY created_at, id"
        )))
        .bind(owner.0)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?
        .iter()
        .map(rows::project)
        .collect()
    }

    async fn update_project(&self, project: &Project) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE projects SET name = $2, repository_url = $3, default_vm_size = $4, \
             updated_at = $5, provider = $6 WHERE id = $1",
        )
        .bind(project.id.0)
        .bind(&project.name)
        .bind(&project.repository_url)
        .bind(project.default_vm_size.as_str())
        .bind(project.updated_at)
        .bind(&project.provider)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("project", project.id));
        }
        Ok(())
    }

    async fn delete_project(&self, id: ProjectId) -> Result<bool, StoreError> {
        // Tasks, sessions and their messages go with it (ON DELETE CASCADE).
        let done = sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_session(&self, session: &ChatSession) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO chat_sessions (id, project_id, owner, task_id, workspace_id, topic, \
             status, message_count, created_at, updated_at, agent_hint, vm_size) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 \
             WHERE EXISTS (SELECT 1 FROM projects WHERE id = $2)",
        )
        .bind(session.id.0)
        .bind(session.project_id.0)
        .bind(session.owner.0)
        .bind(session.task_id.map(|t| t.0))
        .bind(session.workspace_id.map(|w| w.0))
        .bind(&session.topic)
        .bind(session.status.as_str())
        .bind(session.message_count)
        .bind(session.created_at)
        .bind(session.updated_at)
        .bind(&session.agent_hint)
        .bind(session.vm_size.map(|v| v.as_str()))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("project", session.project_id));
        }
        Ok(())
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<ChatSession>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .as_ref()
        .map(rows::session)
        .transpose()
    }

    async fn list_sessions(
        &self,
        project: ProjectId,
        query: &SessionQuery,
    ) -> Result<Vec<ChatSession>, StoreError> {
        let mut sql = QueryBuilder::<Postgres>::new(format!(
            "SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE project_id = "
        ));
        sql.push_bind(project.0);
        if let Some(task) = query.task_id {
            sql.push(" AND task_id = ").push_bind(task.0);
        }
        sql.push(" ORDER BY created_at DESC, id DESC");
        if let Some(limit) = query.limit {
            sql.push(" LIMIT ").push_bind(i64::from(limit));
        }
        sql.build()
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::session)
            .collect()
    }

    async fn list_chats_by_status(
        &self,
        statuses: &[SessionStatus],
    ) -> Result<Vec<ChatSession>, StoreError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = QueryBuilder::<Postgres>::new(format!(
            "SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE task_id IS NULL AND status IN ("
        ));
        let mut list = sql.separated(", ");
        for status in statuses {
            list.push_bind(status.as_str());
        }
        sql.push(") ORDER BY created_at, id");
        sql.build()
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::session)
            .collect()
    }

    async fn update_session(
        &self,
        id: SessionId,
        patch: &SessionPatch,
        now: Timestamp,
    ) -> Result<ChatSession, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE chat_sessions SET status = COALESCE($2, status), \
             workspace_id = CASE WHEN $3 THEN $4 ELSE workspace_id END, \
             topic = CASE WHEN $5 THEN $6 ELSE topic END, updated_at = $7 \
             WHERE id = $1 RETURNING {SESSION_COLUMNS}"
        )))
        .bind(id.0)
        .bind(patch.status.map(|s| s.as_str()))
        .bind(patch.workspace_id.is_some())
        .bind(patch.workspace_id.flatten().map(|w| w.0))
        .bind(patch.topic.is_some())
        .bind(patch.topic.clone().flatten())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::not_found("session", id))?;
        rows::session(&row)
    }

    async fn insert_messages(
        &self,
        messages: &[ChatMessage],
        now: Timestamp,
    ) -> Result<InsertOutcome, StoreError> {
        if messages.is_empty() {
            return Ok(InsertOutcome::default());
        }
        for _ in 0..INSERT_ATTEMPTS {
            if let Some(outcome) = self.try_insert_messages(messages, now).await? {
                return Ok(outcome);
            }
        }
        Err(StoreError::Unavailable {
            message: "message ids kept being stored concurrently; retry the batch".into(),
        })
    }

    async fn list_messages(
        &self,
        session: SessionId,
        page: MessagePage,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        // Latest and Before read newest first through the (session_id, cursor) index and
        // are reversed here, so every page comes back oldest first.
        let (sql, cursor, limit, reverse) = match page {
            MessagePage::Latest { limit } => (NEWEST_BELOW, i64::MAX, limit, true),
            MessagePage::Before { cursor, limit } => (NEWEST_BELOW, cursor, limit, true),
            MessagePage::After { cursor, limit } => (
                "WHERE session_id = $1 AND cursor > $2 ORDER BY cursor LIMIT $3",
                cursor,
                limit,
                false,
            ),
        };
        let mut page = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages {sql}"
        )))
        .bind(session.0)
        .bind(cursor)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?
        .iter()
        .map(rows::message)
        .collect::<Result<Vec<_>, _>>()?;
        if reverse {
            page.reverse();
        }
        Ok(page)
    }

    async fn update_message_content(
        &self,
        id: MessageId,
        content: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let session: Uuid = sqlx::query_scalar(
            "UPDATE chat_messages SET content = $2 WHERE id = $1 RETURNING session_id",
        )
        .bind(id.0)
        .bind(content)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::not_found("message", id))?;
        sqlx::query("UPDATE chat_sessions SET updated_at = $2 WHERE id = $1")
            .bind(session)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn publish(&self, event: &StoreEvent) -> Result<(), StoreError> {
        // Local subscribers hear it back through the listener, like every other replica.
        notify(&self.pool, &self.channel, event).await
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, StoreEvent>, StoreError> {
        Ok(self.feed.subscribe())
    }
}

/// One column of a multi-row statement, as the array `UNNEST` takes.
fn column<'a, T, C>(items: &'a [T], get: impl Fn(&'a T) -> C) -> Vec<C> {
    items.iter().map(get).collect()
}

impl PostgresStore {
    /// One attempt at a batch insert in one transaction. `None` when a message id was stored
    /// concurrently by a transaction this one could not see when planning; nothing is kept
    /// and the caller plans again.
    async fn try_insert_messages(
        &self,
        messages: &[ChatMessage],
        now: Timestamp,
    ) -> Result<Option<InsertOutcome>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let sessions: Vec<Uuid> = distinct_sessions(messages).iter().map(|s| s.0).collect();
        // Locking the sessions (in id order, so batches never deadlock) serializes inserts
        // into one session: cursors stay contiguous and the duplicate check below is exact.
        let mut heads = HashMap::with_capacity(sessions.len());
        for row in sqlx::query(
            "SELECT id, owner, project_id, message_count, topic IS NOT NULL AS has_topic \
             FROM chat_sessions WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&sessions)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?
        {
            heads.insert(
                SessionId(row.try_get("id").map_err(map_err)?),
                SessionHead {
                    owner: UserId(row.try_get("owner").map_err(map_err)?),
                    project_id: ProjectId(row.try_get("project_id").map_err(map_err)?),
                    message_count: row.try_get("message_count").map_err(map_err)?,
                    has_topic: row.try_get("has_topic").map_err(map_err)?,
                },
            );
        }
        if let Some(missing) = missing_session(messages, &heads) {
            return Err(missing);
        }
        let ids: Vec<Uuid> = messages.iter().map(|m| m.id.0).collect();
        let existing: HashSet<MessageId> =
            sqlx::query_scalar::<_, Uuid>("SELECT id FROM chat_messages WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?
                .into_iter()
                .map(MessageId)
                .collect();

        let plan = plan_messages(messages, &heads, &existing);
        let rows = &plan.stored;
        if rows.is_empty() {
            // Nothing new (an outbox re-sending what was stored): nothing to write or announce.
            tx.commit().await.map_err(map_err)?;
            return Ok(Some(InsertOutcome {
                persisted: 0,
                duplicates: plan.duplicates,
                stored: Vec::new(),
            }));
        }
        let payloads = plan
            .events
            .iter()
            .map(payload)
            .collect::<Result<Vec<_>, _>>()?;
        // Rows, session counters and the announcement (sent on commit) in one round trip;
        // counting `announced` is what makes PostgreSQL evaluate it.
        let (inserted, _announced): (i64, i64) = sqlx::query_as(
            "WITH inserted AS (INSERT INTO chat_messages (id, session_id, cursor, role, \
                     content, tool, seq, created_at, stored_at) \
                 SELECT id, session_id, cursor, role, content, tool::jsonb, seq, created_at, $9 \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[], \
                     $6::text[], $7::int8[], $8::timestamptz[]) \
                     AS m (id, session_id, cursor, role, content, tool, seq, created_at) \
                 ON CONFLICT (id) DO NOTHING RETURNING 1), \
             advanced AS (UPDATE chat_sessions AS s \
                 SET message_count = u.message_count, updated_at = $9, \
                     topic = COALESCE(s.topic, u.topic) \
                 FROM UNNEST($10::uuid[], $11::int8[], $12::text[]) \
                     AS u (id, message_count, topic) \
                 WHERE s.id = u.id RETURNING 1), \
             announced AS MATERIALIZED (SELECT pg_notify($13, payload) \
                 FROM UNNEST($14::text[]) AS payload) \
             SELECT (SELECT COUNT(*) FROM inserted), (SELECT COUNT(*) FROM announced)",
        )
        .bind(column(rows, |m| m.message.id.0))
        .bind(column(rows, |m| m.message.session_id.0))
        .bind(column(rows, |m| m.cursor))
        .bind(column(rows, |m| m.message.role.as_str()))
        .bind(column(rows, |m| m.message.content.as_str()))
        .bind(column(rows, |m| tool_json(&m.message)))
        .bind(column(rows, |m| m.message.seq))
        .bind(column(rows, |m| m.message.created_at))
        .bind(now)
        .bind(column(&plan.sessions, |a| a.session_id.0))
        .bind(column(&plan.sessions, |a| a.message_count))
        .bind(column(&plan.sessions, |a| a.topic.clone()))
        .bind(&*self.channel)
        .bind(payloads)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if inserted != rows.len() as i64 {
            // Dropping the transaction rolls back the rows, counters and announcement.
            tracing::debug!("a message id of the batch was stored concurrently; planning again");
            return Ok(None);
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Some(InsertOutcome {
            persisted: rows.len() as u64,
            duplicates: plan.duplicates,
            stored: plan.stored,
        }))
    }
}
