//! Rows to domain types, and the column encodings: times as microseconds since the epoch,
//! ids as UUID blobs, enums as their text form.

use chrono::DateTime;
use kiln_core::store::ApiToken;
use kiln_core::{
    ChatMessage, ChatSession, Node, Project, StoreError, StoredMessage, Task, Timestamp, User,
    Workspace,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite};
use uuid::Uuid;

use super::map_err;
use crate::sql_common::{attempt, parse_enum, parse_tool};

/// A time as stored: microseconds since the Unix epoch.
pub(super) fn us(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

fn ts(micros: i64) -> Result<Timestamp, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Backend {
        message: format!("stored time {micros} out of range"),
    })
}

fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column).map_err(map_err)
}

fn time(row: &SqliteRow, column: &str) -> Result<Timestamp, StoreError> {
    ts(get(row, column)?)
}

fn opt_time(row: &SqliteRow, column: &str) -> Result<Option<Timestamp>, StoreError> {
    get::<Option<i64>>(row, column)?.map(ts).transpose()
}

fn id<T: From<Uuid>>(row: &SqliteRow, column: &str) -> Result<T, StoreError> {
    Ok(T::from(get::<Uuid>(row, column)?))
}

fn opt_id<T: From<Uuid>>(row: &SqliteRow, column: &str) -> Result<Option<T>, StoreError> {
    Ok(get::<Option<Uuid>>(row, column)?.map(T::from))
}

pub(super) const PROJECT_COLUMNS: &str =
    "id, owner, name, repository_url, default_vm_size, provider, created_at, updated_at";

pub(super) fn project(row: &SqliteRow) -> Result<Project, StoreError> {
    Ok(Project {
        id: id(row, "id")?,
        owner: id(row, "owner")?,
        name: get(row, "name")?,
        repository_url: get(row, "repository_url")?,
        default_vm_size: parse_enum(&get::<String>(row, "default_vm_size")?)?,
        provider: get(row, "provider")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(super) const TASK_COLUMNS: &str = "id, project_id, owner, title, description, priority, \
     status, status_changed_at, output_branch, pr_url, summary, error_message, session_id, \
     workspace_id, node_id, vm_size_override, agent_hint, attempt, created_at, updated_at, status_detail";

pub(super) fn task(row: &SqliteRow) -> Result<Task, StoreError> {
    Ok(Task {
        id: id(row, "id")?,
        project_id: id(row, "project_id")?,
        owner: id(row, "owner")?,
        title: get(row, "title")?,
        description: get(row, "description")?,
        priority: get(row, "priority")?,
        status: parse_enum(&get::<String>(row, "status")?)?,
        status_detail: get(row, "status_detail")?,
        status_changed_at: time(row, "status_changed_at")?,
        output_branch: get(row, "output_branch")?,
        pr_url: get(row, "pr_url")?,
        summary: get(row, "summary")?,
        error_message: get(row, "error_message")?,
        session_id: opt_id(row, "session_id")?,
        workspace_id: opt_id(row, "workspace_id")?,
        node_id: opt_id(row, "node_id")?,
        vm_size_override: get::<Option<String>>(row, "vm_size_override")?
            .map(|s| parse_enum(&s))
            .transpose()?,
        agent_hint: get(row, "agent_hint")?,
        attempt: attempt(get(row, "attempt")?)?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(super) const SESSION_COLUMNS: &str = "id, project_id, owner, task_id, workspace_id, topic, \
     status, agent_hint, vm_size, message_count, created_at, updated_at";

pub(super) fn session(row: &SqliteRow) -> Result<ChatSession, StoreError> {
    Ok(ChatSession {
        id: id(row, "id")?,
        project_id: id(row, "project_id")?,
        owner: id(row, "owner")?,
        task_id: opt_id(row, "task_id")?,
        workspace_id: opt_id(row, "workspace_id")?,
        topic: get(row, "topic")?,
        status: parse_enum(&get::<String>(row, "status")?)?,
        agent_hint: get(row, "agent_hint")?,
        vm_size: get::<Option<String>>(row, "vm_size")?
            .map(|s| parse_enum(&s))
            .transpose()?,
        message_count: get(row, "message_count")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(super) const MESSAGE_COLUMNS: &str =
    "id, session_id, cursor, role, content, tool, seq, created_at";

pub(super) fn message(row: &SqliteRow) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        cursor: get(row, "cursor")?,
        message: ChatMessage {
            id: id(row, "id")?,
            session_id: id(row, "session_id")?,
            role: parse_enum(&get::<String>(row, "role")?)?,
            content: get(row, "content")?,
            tool: parse_tool(get::<Option<&str>>(row, "tool")?)?,
            seq: get(row, "seq")?,
            created_at: time(row, "created_at")?,
        },
    })
}

pub(super) const NODE_COLUMNS: &str = "id, owner, size, location, provider, provider_id, state, \
     warm_until, claimed_by, auto_provisioned, last_heartbeat_at, error_message, created_at, \
     updated_at";

pub(super) fn node(row: &SqliteRow) -> Result<Node, StoreError> {
    Ok(Node {
        id: id(row, "id")?,
        owner: id(row, "owner")?,
        size: parse_enum(&get::<String>(row, "size")?)?,
        location: get(row, "location")?,
        provider: get(row, "provider")?,
        provider_id: get(row, "provider_id")?,
        state: parse_enum(&get::<String>(row, "state")?)?,
        warm_until: opt_time(row, "warm_until")?,
        claimed_by: opt_id(row, "claimed_by")?,
        auto_provisioned: get(row, "auto_provisioned")?,
        last_heartbeat_at: opt_time(row, "last_heartbeat_at")?,
        error_message: get(row, "error_message")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(super) const WORKSPACE_COLUMNS: &str = "id, node_id, owner, project_id, task_id, session_id, \
     branch, status, created_at, updated_at";

pub(super) fn workspace(row: &SqliteRow) -> Result<Workspace, StoreError> {
    Ok(Workspace {
        id: id(row, "id")?,
        node_id: id(row, "node_id")?,
        owner: id(row, "owner")?,
        project_id: opt_id(row, "project_id")?,
        task_id: opt_id(row, "task_id")?,
        session_id: opt_id(row, "session_id")?,
        branch: get(row, "branch")?,
        status: parse_enum(&get::<String>(row, "status")?)?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(super) fn user(row: &SqliteRow) -> Result<User, StoreError> {
    Ok(User {
        id: id(row, "id")?,
        name: get(row, "name")?,
        created_at: time(row, "created_at")?,
    })
}

pub(super) fn api_token(row: &SqliteRow) -> Result<ApiToken, StoreError> {
    Ok(ApiToken {
        id: get(row, "id")?,
        user_id: id(row, "user_id")?,
        token_hash: get(row, "token_hash")?,
        name: get(row, "name")?,
        created_at: time(row, "created_at")?,
        expires_at: opt_time(row, "expires_at")?,
    })
}

pub(super) const SECRET_COLUMNS: &str =
    "owner, project_id, kind, sealed, hint, created_at, updated_at";

pub(super) fn secret(row: &SqliteRow) -> Result<kiln_core::StoredSecret, StoreError> {
    Ok(kiln_core::StoredSecret {
        key: kiln_core::SecretKey {
            owner: id(row, "owner")?,
            project_id: opt_id(row, "project_id")?,
            kind: parse_enum(&get::<String>(row, "kind")?)?,
        },
        sealed: get(row, "sealed")?,
        hint: get(row, "hint")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}
