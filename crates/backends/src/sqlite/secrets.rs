//! Sealed secrets (the plaintext never reaches the database).

use async_trait::async_trait;
use kiln_core::{SecretKey, SecretKind, SecretStore, StoreError, StoredSecret, UserId};
use sqlx::AssertSqlSafe;

use super::rows::{self, SECRET_COLUMNS, us};
use super::{SqliteStore, map_err};

/// The `WHERE` of one key: user-level secrets have no project (`?2` is then unused).
fn key_condition(key: &SecretKey) -> &'static str {
    if key.project_id.is_some() {
        "owner = ?1 AND project_id = ?2 AND kind = ?3"
    } else {
        "owner = ?1 AND project_id IS NULL AND kind = ?3 AND ?2 IS NULL"
    }
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn put_secret(&self, secret: &StoredSecret) -> Result<StoredSecret, StoreError> {
        let key = &secret.key;
        // A project secret needs its project, of the same owner; the conflict target is the
        // partial unique index of the key's kind.
        let (guard, target) = if key.project_id.is_some() {
            (
                "EXISTS (SELECT 1 FROM projects WHERE id = ?2 AND owner = ?1)",
                "(owner, project_id, kind) WHERE project_id IS NOT NULL",
            )
        } else {
            ("?2 IS NULL", "(owner, kind) WHERE project_id IS NULL")
        };
        let sql = format!(
            "INSERT INTO secrets ({SECRET_COLUMNS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 \
             WHERE {guard} \
             ON CONFLICT {target} DO UPDATE SET sealed = excluded.sealed, \
                 hint = excluded.hint, updated_at = excluded.updated_at \
             RETURNING {SECRET_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(key.owner.0)
            .bind(key.project_id.map(|p| p.0))
            .bind(key.kind.as_str())
            .bind(&secret.sealed)
            .bind(&secret.hint)
            .bind(us(secret.created_at))
            .bind(us(secret.updated_at))
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        match row {
            Some(row) => rows::secret(&row),
            None => Err(StoreError::not_found(
                "project",
                key.project_id.map(|p| p.to_string()).unwrap_or_default(),
            )),
        }
    }

    async fn get_secret(&self, key: &SecretKey) -> Result<Option<StoredSecret>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {SECRET_COLUMNS} FROM secrets WHERE {}",
            key_condition(key)
        )))
        .bind(key.owner.0)
        .bind(key.project_id.map(|p| p.0))
        .bind(key.kind.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .as_ref()
        .map(rows::secret)
        .transpose()
    }

    async fn delete_secret(&self, key: &SecretKey) -> Result<bool, StoreError> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM secrets WHERE {}",
            key_condition(key)
        )))
        .bind(key.owner.0)
        .bind(key.project_id.map(|p| p.0))
        .bind(key.kind.as_str())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn secret_owners(&self, kind: SecretKind) -> Result<Vec<UserId>, StoreError> {
        let owners: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT DISTINCT owner FROM secrets WHERE kind = ?1 ORDER BY owner")
                .bind(kind.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(owners.into_iter().map(UserId::from).collect())
    }
}
