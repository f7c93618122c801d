//! Projects, chat sessions, messages and the change feed.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use futures::stream::BoxStream;
use kiln_core::{
    ChatMessage, ChatSession, InsertOutcome, MessageId, MessagePage, Project, ProjectId, SessionId,
    SessionPatch, SessionQuery, SessionStatus, SessionStore, StoreError, StoreEvent, StoredMessage,
    Timestamp, UserId,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::rows::{self, MESSAGE_COLUMNS, PROJECT_COLUMNS, SESSION_COLUMNS, us};
use super::{SqliteStore, map_err};
use crate::sql_common::{
    SessionHead, distinct_sessions, missing_session, plan_messages, tool_json,
};

/// Rows per multi-row statement: well under SQLite's limit of bound variables.
const ROWS_PER_STATEMENT: usize = 500;

/// A project's sessions, newest first (the sidebar).
pub(super) fn sessions_query(project: ProjectId, query: &SessionQuery) -> QueryBuilder<Sqlite> {
    let mut sql = QueryBuilder::<Sqlite>::new(format!(
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
    sql
}

/// A page of messages: the SQL (binding session `?1`, cursor `?2`, limit `?3`), the cursor,
/// the limit, and whether rows come newest first. Latest and Before read newest first
/// through the (session_id, cursor) index and are reversed after reading, so every page
/// comes back oldest first.
pub(super) fn page_query(page: MessagePage) -> (String, i64, u32, bool) {
    let (condition, cursor, limit, newest_first) = match page {
        MessagePage::Latest { limit } => {
            ("cursor < ?2 ORDER BY cursor DESC", i64::MAX, limit, true)
        }
        MessagePage::Before { cursor, limit } => {
            ("cursor < ?2 ORDER BY cursor DESC", cursor, limit, true)
        }
        MessagePage::After { cursor, limit } => {
            ("cursor > ?2 ORDER BY cursor", cursor, limit, false)
        }
    };
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = ?1 AND {condition} \
         LIMIT ?3"
    );
    (sql, cursor, limit, newest_first)
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_project(&self, project: &Project) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO projects (id, owner, name, repository_url, default_vm_size, created_at, \
             updated_at, provider) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(project.id.0)
        .bind(project.owner.0)
        .bind(&project.name)
        .bind(&project.repository_url)
        .bind(project.default_vm_size.as_str())
        .bind(us(project.created_at))
        .bind(us(project.updated_at))
        .bind(&project.provider)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"
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
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE owner = ?1 ORDER BY created_at, id"
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
            "UPDATE projects SET name = ?2, repository_url = ?3, default_vm_size = ?4, \
             updated_at = ?5, provider = ?6 WHERE id = ?1",
        )
        .bind(project.id.0)
        .bind(&project.name)
        .bind(&project.repository_url)
        .bind(project.default_vm_size.as_str())
        .bind(us(project.updated_at))
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
        let done = sqlx::query("DELETE FROM projects WHERE id = ?1")
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
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12 \
             WHERE EXISTS (SELECT 1 FROM projects WHERE id = ?2)",
        )
        .bind(session.id.0)
        .bind(session.project_id.0)
        .bind(session.owner.0)
        .bind(session.task_id.map(|t| t.0))
        .bind(session.workspace_id.map(|w| w.0))
        .bind(&session.topic)
        .bind(session.status.as_str())
        .bind(session.message_count)
        .bind(us(session.created_at))
        .bind(us(session.updated_at))
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
            "SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE id = ?1"
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
        let mut sql = sessions_query(project, query);
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
        let mut sql = QueryBuilder::<Sqlite>::new(format!(
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
            "UPDATE chat_sessions SET status = COALESCE(?2, status), \
             workspace_id = CASE WHEN ?3 THEN ?4 ELSE workspace_id END, \
             topic = CASE WHEN ?5 THEN ?6 ELSE topic END, updated_at = ?7 \
             WHERE id = ?1 RETURNING {SESSION_COLUMNS}"
        )))
        .bind(id.0)
        .bind(patch.status.map(|s| s.as_str()))
        .bind(patch.workspace_id.is_some())
        .bind(patch.workspace_id.flatten().map(|w| w.0))
        .bind(patch.topic.is_some())
        .bind(patch.topic.clone().flatten())
        .bind(us(now))
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
        let mut tx = self.begin_write().await?;
        let sessions = distinct_sessions(messages);
        let mut heads = HashMap::with_capacity(sessions.len());
        let mut sql = QueryBuilder::<Sqlite>::new(
            "SELECT id, owner, project_id, message_count, topic IS NOT NULL AS has_topic \
             FROM chat_sessions WHERE id IN (",
        );
        let mut list = sql.separated(", ");
        for s in &sessions {
            list.push_bind(s.0);
        }
        sql.push(")");
        for row in sql.build().fetch_all(&mut *tx).await.map_err(map_err)? {
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

        let mut existing = HashSet::new();
        for chunk in messages.chunks(ROWS_PER_STATEMENT) {
            let mut sql = QueryBuilder::<Sqlite>::new("SELECT id FROM chat_messages WHERE id IN (");
            let mut list = sql.separated(", ");
            for m in chunk {
                list.push_bind(m.id.0);
            }
            sql.push(")");
            for row in sql.build().fetch_all(&mut *tx).await.map_err(map_err)? {
                existing.insert(MessageId(row.try_get::<Uuid, _>(0).map_err(map_err)?));
            }
        }

        let plan = plan_messages(messages, &heads, &existing);
        for chunk in plan.stored.chunks(ROWS_PER_STATEMENT) {
            let mut sql = QueryBuilder::<Sqlite>::new(
                "INSERT INTO chat_messages (id, session_id, cursor, role, content, tool, seq, \
                 created_at, stored_at) ",
            );
            sql.push_values(chunk, |mut row, m: &StoredMessage| {
                row.push_bind(m.message.id.0)
                    .push_bind(m.message.session_id.0)
                    .push_bind(m.cursor)
                    .push_bind(m.message.role.as_str())
                    .push_bind(m.message.content.clone())
                    .push_bind(tool_json(&m.message))
                    .push_bind(m.message.seq)
                    .push_bind(us(m.message.created_at))
                    .push_bind(us(now));
            });
            // The write lock makes the check above exact; the clause keeps the statement
            // idempotent on its own.
            sql.push(" ON CONFLICT (id) DO NOTHING");
            let done = sql.build().execute(&mut *tx).await.map_err(map_err)?;
            if done.rows_affected() != chunk.len() as u64 {
                return Err(StoreError::Backend {
                    message: "message ids changed under the write lock".into(),
                });
            }
        }
        for advance in &plan.sessions {
            sqlx::query(
                "UPDATE chat_sessions SET message_count = ?2, updated_at = ?3, \
                 topic = COALESCE(topic, ?4) WHERE id = ?1",
            )
            .bind(advance.session_id.0)
            .bind(advance.message_count)
            .bind(us(now))
            .bind(&advance.topic)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;

        for event in plan.events {
            self.feed.send(event);
        }
        Ok(InsertOutcome {
            persisted: plan.stored.len() as u64,
            duplicates: plan.duplicates,
            stored: plan.stored,
        })
    }

    async fn list_messages(
        &self,
        session: SessionId,
        page: MessagePage,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let (sql, cursor, limit, reverse) = page_query(page);
        let mut page = sqlx::query(AssertSqlSafe(sql))
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
        let mut tx = self.begin_write().await?;
        let session: Uuid = sqlx::query_scalar(
            "UPDATE chat_messages SET content = ?2 WHERE id = ?1 RETURNING session_id",
        )
        .bind(id.0)
        .bind(content)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::not_found("message", id))?;
        sqlx::query("UPDATE chat_sessions SET updated_at = ?2 WHERE id = ?1")
            .bind(session)
            .bind(us(now))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn publish(&self, event: &StoreEvent) -> Result<(), StoreError> {
        self.feed.send(event.clone());
        Ok(())
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, StoreEvent>, StoreError> {
        Ok(self.feed.subscribe())
    }
}
