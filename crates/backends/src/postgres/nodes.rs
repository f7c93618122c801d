//! Nodes: the atomic claim and the guarded lifecycle transitions.

use async_trait::async_trait;
use kiln_core::{
    DestroyGuard, Node, NodeId, NodeQuery, NodeState, NodeStore, StoreError, TaskId, Timestamp,
    UserId, VmSize,
};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, QueryBuilder};

use super::rows::{self, NODE_COLUMNS};
use super::{PostgresStore, map_err};
use crate::sql_common::{destroy_conflict, destroy_guard_sql, wrong_state};

async fn fetch_node(conn: &mut PgConnection, id: NodeId) -> Result<Option<Node>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"
    )))
    .bind(id.0)
    .fetch_optional(conn)
    .await
    .map_err(map_err)?
    .as_ref()
    .map(rows::node)
    .transpose()
}

fn one_node(row: Option<PgRow>) -> Result<Option<Node>, StoreError> {
    row.as_ref().map(rows::node).transpose()
}

impl PostgresStore {
    /// Runs a guarded `UPDATE nodes SET {set} WHERE id = $1 AND {guard} RETURNING *` with
    /// `now` as `$2` (and `extra` as `$3`); when no row changed, reads the node so the caller
    /// can tell a missing node from one in the wrong state.
    async fn guarded_update(
        &self,
        id: NodeId,
        set: &str,
        guard: &str,
        now: Timestamp,
        extra: Option<&str>,
    ) -> Result<Result<Node, Option<Node>>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let sql = format!(
            "UPDATE nodes SET {set}, updated_at = $2 WHERE id = $1 AND {guard} \
             RETURNING {NODE_COLUMNS}"
        );
        let query = sqlx::query(AssertSqlSafe(sql)).bind(id.0).bind(now);
        let query = match extra {
            Some(extra) => query.bind(extra),
            None => query,
        };
        let updated = query.fetch_optional(&mut *conn).await.map_err(map_err)?;
        match one_node(updated)? {
            Some(node) => Ok(Ok(node)),
            None => Ok(Err(fetch_node(&mut conn, id).await?)),
        }
    }

    /// Applies `set` if `guard` holds, in one statement that locks the row and returns it as
    /// it was before; `conflict` explains a guard that does not hold.
    async fn guarded_update_returning_before(
        &self,
        id: NodeId,
        set: &str,
        guard: &str,
        now: Timestamp,
        extra: Option<&str>,
        conflict: impl FnOnce(&Node) -> StoreError,
    ) -> Result<Node, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let sql = format!(
            "WITH before AS (SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1 FOR UPDATE) \
             UPDATE nodes SET {set}, updated_at = $2 FROM before \
             WHERE nodes.id = before.id AND {guard} RETURNING before.*"
        );
        let query = sqlx::query(AssertSqlSafe(sql)).bind(id.0).bind(now);
        let query = match extra {
            Some(extra) => query.bind(extra),
            None => query,
        };
        let before = query.fetch_optional(&mut *conn).await.map_err(map_err)?;
        if let Some(node) = one_node(before)? {
            return Ok(node);
        }
        match fetch_node(&mut conn, id).await? {
            None => Err(StoreError::not_found("node", id)),
            Some(node) => Err(conflict(&node)),
        }
    }
}

#[async_trait]
impl NodeStore for PostgresStore {
    async fn insert_node(&self, node: &Node) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO nodes ({NODE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        )))
        .bind(node.id.0)
        .bind(node.owner.0)
        .bind(node.size.as_str())
        .bind(&node.location)
        .bind(&node.provider)
        .bind(&node.provider_id)
        .bind(node.state.as_str())
        .bind(node.warm_until)
        .bind(node.claimed_by.map(|t| t.0))
        .bind(node.auto_provisioned)
        .bind(node.last_heartbeat_at)
        .bind(&node.error_message)
        .bind(node.created_at)
        .bind(node.updated_at)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn get_node(&self, id: NodeId) -> Result<Option<Node>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        fetch_node(&mut conn, id).await
    }

    async fn list_nodes(&self, query: &NodeQuery) -> Result<Vec<Node>, StoreError> {
        let mut sql =
            QueryBuilder::<Postgres>::new(format!("SELECT {NODE_COLUMNS} FROM nodes WHERE 1 = 1"));
        if let Some(owner) = query.owner {
            sql.push(" AND owner = ").push_bind(owner.0);
        }
        if !query.states.is_empty() {
            sql.push(" AND state IN (");
            let mut list = sql.separated(", ");
            for state in &query.states {
                list.push_bind(state.as_str());
            }
            sql.push(")");
        }
        if let Some(t) = query.warm_until_at_or_before {
            sql.push(" AND state = 'warm' AND warm_until <= ")
                .push_bind(t);
        }
        if let Some(t) = query.created_at_or_before {
            sql.push(" AND created_at <= ").push_bind(t);
        }
        if let Some(t) = query.updated_at_or_before {
            sql.push(" AND updated_at <= ").push_bind(t);
        }
        if let Some(t) = query.heartbeat_at_or_before {
            sql.push(" AND COALESCE(last_heartbeat_at, created_at) <= ")
                .push_bind(t);
        }
        if let Some(provider) = &query.provider {
            sql.push(" AND provider = ").push_bind(provider.clone());
        }
        sql.push(" ORDER BY created_at, id");
        sql.build()
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::node)
            .collect()
    }

    async fn claim_warm_node(
        &self,
        owner: UserId,
        size: VmSize,
        provider: &str,
        location: Option<&str>,
        task: TaskId,
        now: Timestamp,
    ) -> Result<Option<Node>, StoreError> {
        // One statement: the pick locks its row and skips rows other claimers hold, and the
        // outer guard re-checks the state, so two claimers (on any replica) never share one.
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE nodes SET state = 'active', warm_until = NULL, claimed_by = $4, \
             updated_at = $5 \
             WHERE id = (SELECT id FROM nodes WHERE owner = $1 AND size = $2 \
                 AND state = 'warm' AND warm_until > $5 \
                 AND ($3::text IS NULL OR location = $3) AND provider = $6 \
                 ORDER BY warm_until, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             AND state = 'warm' RETURNING {NODE_COLUMNS}"
        )))
        .bind(owner.0)
        .bind(size.as_str())
        .bind(location)
        .bind(task.0)
        .bind(now)
        .bind(provider)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let claimed = one_node(row)?;
        if let Some(node) = &claimed {
            tracing::debug!(node = %node.id, %task, "claimed warm node");
        }
        Ok(claimed)
    }

    async fn set_node_provider_id(
        &self,
        id: NodeId,
        provider_id: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        match self
            .guarded_update(id, "provider_id = $3", "1 = 1", now, Some(provider_id))
            .await?
        {
            Ok(_) => Ok(()),
            Err(_) => Err(StoreError::not_found("node", id)),
        }
    }

    async fn mark_node_ready(&self, id: NodeId, now: Timestamp) -> Result<Node, StoreError> {
        match self
            .guarded_update(id, "state = 'active'", "state = 'provisioning'", now, None)
            .await?
        {
            Ok(node) => Ok(node),
            Err(None) => Err(StoreError::not_found("node", id)),
            Err(Some(node)) if node.state == NodeState::Active => Ok(node),
            Err(Some(node)) => Err(wrong_state(&node, "provisioning")),
        }
    }

    async fn release_node(
        &self,
        id: NodeId,
        warm_until: Timestamp,
        now: Timestamp,
    ) -> Result<Node, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let updated = sqlx::query(AssertSqlSafe(format!(
            "UPDATE nodes SET state = 'warm', warm_until = $3, claimed_by = NULL, \
             updated_at = $2 WHERE id = $1 AND state = 'active' RETURNING {NODE_COLUMNS}"
        )))
        .bind(id.0)
        .bind(now)
        .bind(warm_until)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
        if let Some(node) = one_node(updated)? {
            return Ok(node);
        }
        match fetch_node(&mut conn, id).await? {
            None => Err(StoreError::not_found("node", id)),
            Some(node) => Err(wrong_state(&node, "active")),
        }
    }

    async fn begin_destroy_node(
        &self,
        id: NodeId,
        guard: DestroyGuard,
        now: Timestamp,
    ) -> Result<Node, StoreError> {
        self.guarded_update_returning_before(
            id,
            "state = 'destroying', warm_until = NULL, claimed_by = NULL",
            &destroy_guard_sql(guard, "nodes.", "$2"),
            now,
            None,
            |node| destroy_conflict(node, guard),
        )
        .await
    }

    async fn mark_node_destroyed(&self, id: NodeId, now: Timestamp) -> Result<(), StoreError> {
        match self
            .guarded_update(id, "state = 'destroyed'", "state = 'destroying'", now, None)
            .await?
        {
            Ok(_) => Ok(()),
            Err(None) => Err(StoreError::not_found("node", id)),
            Err(Some(node)) if node.state == NodeState::Destroyed => Ok(()),
            Err(Some(node)) => Err(wrong_state(&node, "destroying")),
        }
    }

    async fn mark_node_failed(
        &self,
        id: NodeId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Node, StoreError> {
        self.guarded_update_returning_before(
            id,
            "state = 'failed', error_message = $3, warm_until = NULL, claimed_by = NULL",
            "nodes.state IN ('provisioning', 'active', 'warm')",
            now,
            Some(reason),
            |node| wrong_state(node, "provisioning, active or warm"),
        )
        .await
    }

    async fn record_heartbeat(&self, id: NodeId, now: Timestamp) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE nodes SET last_heartbeat_at = $2 WHERE id = $1")
            .bind(id.0)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("node", id));
        }
        Ok(())
    }
}
