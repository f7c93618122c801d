//! Tasks (compare-and-set on status) and workspaces.

use async_trait::async_trait;
use kiln_core::{
    ProjectId, StoreError, Task, TaskId, TaskQuery, TaskStatus, TaskStore, Workspace, WorkspaceId,
    WorkspaceQuery,
};
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder};

use super::rows::{self, TASK_COLUMNS, WORKSPACE_COLUMNS};
use super::{PostgresStore, map_err};

/// Binds a task's columns as `$1..=$21` in [`TASK_COLUMNS`] order.
fn bind_task<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    task: &'q Task,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(task.id.0)
        .bind(task.project_id.0)
        .bind(task.owner.0)
        .bind(&task.title)
        .bind(&task.description)
        .bind(task.priority)
        .bind(task.status.as_str())
        .bind(task.status_changed_at)
        .bind(&task.output_branch)
        .bind(&task.pr_url)
        .bind(&task.summary)
        .bind(&task.error_message)
        .bind(task.session_id.map(|s| s.0))
        .bind(task.workspace_id.map(|w| w.0))
        .bind(task.node_id.map(|n| n.0))
        .bind(task.vm_size_override.map(|v| v.as_str()))
        .bind(&task.agent_hint)
        .bind(i64::from(task.attempt))
        .bind(task.created_at)
        .bind(task.updated_at)
        .bind(&task.status_detail)
}

#[async_trait]
impl TaskStore for PostgresStore {
    async fn create_task(&self, task: &Task) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO tasks ({TASK_COLUMNS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21 \
             WHERE EXISTS (SELECT 1 FROM projects WHERE id = $2)"
        );
        let done = bind_task(sqlx::query(AssertSqlSafe(sql)), task)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("project", task.project_id));
        }
        Ok(())
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .as_ref()
        .map(rows::task)
        .transpose()
    }

    async fn list_tasks(
        &self,
        project: ProjectId,
        query: &TaskQuery,
    ) -> Result<Vec<Task>, StoreError> {
        let mut sql = QueryBuilder::<Postgres>::new(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE project_id = "
        ));
        sql.push_bind(project.0);
        if !query.statuses.is_empty() {
            sql.push(" AND status IN (");
            let mut list = sql.separated(", ");
            for status in &query.statuses {
                list.push_bind(status.as_str());
            }
            sql.push(")");
        }
        sql.push(" ORDER BY priority DESC, created_at, id");
        sql.build()
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::task)
            .collect()
    }

    async fn update_task(&self, task: &Task, expected: TaskStatus) -> Result<(), StoreError> {
        let sql = "UPDATE tasks SET project_id = $2, owner = $3, title = $4, description = $5, \
             priority = $6, status = $7, status_changed_at = $8, output_branch = $9, \
             pr_url = $10, summary = $11, error_message = $12, session_id = $13, \
             workspace_id = $14, node_id = $15, vm_size_override = $16, agent_hint = $17, \
             attempt = $18, created_at = $19, updated_at = $20, status_detail = $21 \
             WHERE id = $1 AND status = $22";
        let done = bind_task(sqlx::query(sql), task)
            .bind(expected.as_str())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1")
            .bind(task.id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        Err(match status {
            None => StoreError::not_found("task", task.id),
            Some(status) => {
                StoreError::conflict(format!("task {} is {status}, not {expected}", task.id))
            }
        })
    }

    async fn delete_task(&self, id: TaskId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_tasks_by_status(&self, statuses: &[TaskStatus]) -> Result<Vec<Task>, StoreError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = QueryBuilder::<Postgres>::new(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE status IN ("
        ));
        let mut list = sql.separated(", ");
        for status in statuses {
            list.push_bind(status.as_str());
        }
        sql.push(") ORDER BY status_changed_at, id");
        sql.build()
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::task)
            .collect()
    }

    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO workspaces ({WORKSPACE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(workspace.id.0)
        .bind(workspace.node_id.0)
        .bind(workspace.owner.0)
        .bind(workspace.project_id.map(|p| p.0))
        .bind(workspace.task_id.map(|t| t.0))
        .bind(workspace.session_id.map(|s| s.0))
        .bind(&workspace.branch)
        .bind(workspace.status.as_str())
        .bind(workspace.created_at)
        .bind(workspace.updated_at)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .as_ref()
        .map(rows::workspace)
        .transpose()
    }

    async fn update_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE workspaces SET branch = $2, status = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(workspace.id.0)
        .bind(&workspace.branch)
        .bind(workspace.status.as_str())
        .bind(workspace.updated_at)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("workspace", workspace.id));
        }
        Ok(())
    }

    async fn list_workspaces(&self, query: &WorkspaceQuery) -> Result<Vec<Workspace>, StoreError> {
        let mut sql = QueryBuilder::<Postgres>::new(format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE 1 = 1"
        ));
        if let Some(owner) = query.owner {
            sql.push(" AND owner = ").push_bind(owner.0);
        }
        if let Some(node) = query.node_id {
            sql.push(" AND node_id = ").push_bind(node.0);
        }
        if let Some(task) = query.task_id {
            sql.push(" AND task_id = ").push_bind(task.0);
        }
        if !query.statuses.is_empty() {
            sql.push(" AND status IN (");
            let mut list = sql.separated(", ");
            for status in &query.statuses {
                list.push_bind(status.as_str());
            }
            sql.push(")");
        }
        sql.push(" ORDER BY created_at, id");
        sql.build()
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::workspace)
            .collect()
    }
}
