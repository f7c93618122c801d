//! Tasks: create (draft, or `runNow`), list with a status filter, get, update while draft or
//! ready, run, cancel, re-run, delete.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kiln_core::task::TaskEvent;
use kiln_core::{
    Change, ChatMessage, ChatSession, MessageId, Role, SessionId, SessionPatch, SessionStatus,
    StoreError, Task, TaskId, TaskQuery, TaskStatus, VmSize, model::topic_from_message,
};
use serde::Deserialize;

use crate::auth::CurrentUser;
use crate::credentials::require_runnable;
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, parse_id};
use crate::state::AppState;

/// The longest task description, in bytes (it is the agent's first prompt).
const MAX_DESCRIPTION_BYTES: usize = 200 * 1024;

/// Body of `POST /api/projects/{id}/tasks`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTask {
    #[serde(default)]
    title: Option<String>,
    description: String,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    vm_size: Option<VmSize>,
    #[serde(default)]
    agent_hint: Option<String>,
    #[serde(default)]
    run_now: bool,
}

/// Body of `PATCH /api/tasks/{id}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateTask {
    title: Option<String>,
    description: Option<String>,
    priority: Option<i32>,
    /// `null` clears the override.
    #[serde(default, with = "double_option")]
    vm_size: Option<Option<VmSize>>,
    #[serde(default, with = "double_option")]
    agent_hint: Option<Option<String>>,
    /// Only `ready` (from draft).
    status: Option<TaskStatus>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// Query of `GET /api/projects/{id}/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListTasks {
    /// Comma-separated statuses.
    status: Option<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
}

fn check_description(text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(invalid("description must not be empty"));
    }
    if text.len() > MAX_DESCRIPTION_BYTES {
        return Err(invalid(format!(
            "description is longer than {MAX_DESCRIPTION_BYTES} bytes"
        )));
    }
    Ok(())
}

pub(crate) async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(project_id): Path<String>,
    ApiJson(body): ApiJson<CreateTask>,
) -> ApiResult<impl IntoResponse> {
    let project = state
        .owned_project(user.id(), parse_id(&project_id, "project")?)
        .await?;
    check_description(&body.description)?;
    if body.run_now {
        // Refused before anything is stored: a refused Run Now leaves no draft behind.
        require_runnable(&state, &project).await?;
    }
    let title = match body.title.as_deref().map(str::trim) {
        Some("") => return Err(invalid("title must not be empty")),
        Some(t) => t.to_owned(),
        None => topic_from_message(&body.description),
    };
    let now = state.clock.now();
    let task_id = TaskId::new();
    let session = ChatSession {
        id: SessionId::new(),
        project_id: project.id,
        owner: user.id(),
        task_id: Some(task_id),
        workspace_id: None,
        topic: Some(title.clone()),
        status: SessionStatus::Pending,
        agent_hint: None,
        vm_size: None,
        message_count: 0,
        created_at: now,
        updated_at: now,
    };
    let mut task = Task {
        id: task_id,
        project_id: project.id,
        owner: user.id(),
        title,
        description: body.description.clone(),
        priority: body.priority.unwrap_or(0),
        status: TaskStatus::Draft,
        status_detail: None,
        status_changed_at: now,
        output_branch: None,
        pr_url: None,
        summary: None,
        error_message: None,
        session_id: Some(session.id),
        workspace_id: None,
        node_id: None,
        vm_size_override: body.vm_size,
        agent_hint: body.agent_hint.filter(|h| !h.trim().is_empty()),
        attempt: 0,
        created_at: now,
        updated_at: now,
    };
    if body.run_now {
        // Written `queued` in one step: a server stopping right after leaves a run that its
        // restart resumes, never a draft the user did not ask for.
        task.apply(&kiln_core::task::TaskEvent::Run, now)?;
    }
    state.store.create_session(&session).await?;
    state.store.create_task(&task).await?;
    state
        .store
        .insert_messages(
            &[ChatMessage {
                id: MessageId::for_task_prompt(task.id),
                session_id: session.id,
                role: Role::User,
                content: body.description,
                tool: None,
                seq: None,
                created_at: now,
            }],
            now,
        )
        .await?;
    // A Run Now task is announced by the runner as it queues it (never as a draft).
    let task = if body.run_now {
        state.driver.run_queued(task.id).await?
    } else {
        state.announce_task(&task).await;
        task
    };
    Ok((StatusCode::CREATED, Json(task)))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(project_id): Path<String>,
    ApiQuery(query): ApiQuery<ListTasks>,
) -> ApiResult<Json<Vec<Task>>> {
    let project = state
        .owned_project(user.id(), parse_id(&project_id, "project")?)
        .await?;
    let mut statuses = Vec::new();
    for s in query.status.iter().flat_map(|s| s.split(',')) {
        let s = s.trim();
        if !s.is_empty() {
            statuses
                .push(s.parse().map_err(|e: kiln_core::ParseEnumError| {
                    ApiError::bad_request(e.to_string())
                })?);
        }
    }
    Ok(Json(
        state
            .store
            .list_tasks(project.id, &TaskQuery { statuses })
            .await?,
    ))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    Ok(Json(
        state.owned_task(user.id(), parse_id(&id, "task")?).await?,
    ))
}

pub(crate) async fn update(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateTask>,
) -> ApiResult<Json<Task>> {
    let mut task = state.owned_task(user.id(), parse_id(&id, "task")?).await?;
    let expected = task.status;
    if !expected.is_editable() {
        return Err(ApiError::conflict(format!(
            "a task that is {expected} cannot be edited"
        )));
    }
    let now = state.clock.now();
    if let Some(title) = body.title {
        if title.trim().is_empty() {
            return Err(invalid("title must not be empty"));
        }
        task.title = title.trim().to_owned();
    }
    let new_description = match body.description {
        Some(d) => {
            check_description(&d)?;
            task.description.clone_from(&d);
            Some(d)
        }
        None => None,
    };
    if let Some(p) = body.priority {
        task.priority = p;
    }
    if let Some(size) = body.vm_size {
        task.vm_size_override = size;
    }
    if let Some(hint) = body.agent_hint {
        task.agent_hint = hint;
    }
    match body.status {
        None => {}
        Some(TaskStatus::Ready) if expected == TaskStatus::Draft => {
            task.apply(&TaskEvent::MarkReady, now)?;
        }
        Some(s) if s == expected => {}
        Some(s) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("status can only be set to ready (from draft), not {s}; use run/cancel"),
            ));
        }
    }
    task.updated_at = now;
    state
        .store
        .update_task(&task, expected)
        .await
        .map_err(conflict_as_changed)?;
    if let Some(d) = new_description {
        state
            .store
            .update_message_content(MessageId::for_task_prompt(task.id), &d, now)
            .await?;
    }
    state.announce_task(&task).await;
    Ok(Json(task))
}

fn conflict_as_changed(err: StoreError) -> ApiError {
    match err {
        StoreError::Conflict { .. } => {
            ApiError::conflict("the task changed meanwhile; reload and retry")
        }
        e => e.into(),
    }
}

/// A task runs only on an enabled provider, with the credential it needs stored.
async fn check_credentials(state: &AppState, task: &Task) -> ApiResult<()> {
    let project = state.owned_project(task.owner, task.project_id).await?;
    require_runnable(state, &project).await
}

pub(crate) async fn run(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    let task = state.owned_task(user.id(), parse_id(&id, "task")?).await?;
    check_credentials(&state, &task).await?;
    Ok(Json(state.driver.run(task.id).await?))
}

pub(crate) async fn rerun(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    let task = state.owned_task(user.id(), parse_id(&id, "task")?).await?;
    check_credentials(&state, &task).await?;
    Ok(Json(state.driver.rerun(task.id).await?))
}

pub(crate) async fn cancel(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    let task = state.owned_task(user.id(), parse_id(&id, "task")?).await?;
    Ok(Json(state.driver.cancel(task.id).await?))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let task = state.owned_task(user.id(), parse_id(&id, "task")?).await?;
    if task.status.is_running() {
        return Err(ApiError::conflict(format!(
            "a task that is {} cannot be deleted; cancel it first",
            task.status
        )));
    }
    // Its kept workspaces would otherwise hold their nodes for a task that no longer exists.
    state.driver.discard_kept_workspaces(task.id).await?;
    state.store.delete_task(task.id).await?;
    state.announce_task(&task).await;
    if let Some(session_id) = task.session_id {
        close_orphaned_session(&state, &task, session_id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The session of a deleted task stays, so its conversation can still be read; one left
/// `pending` (a draft's) or `active` would wait forever for a task that no longer exists, so
/// it is closed.
async fn close_orphaned_session(
    state: &AppState,
    task: &Task,
    session_id: SessionId,
) -> ApiResult<()> {
    let Some(session) = state.store.get_session(session_id).await? else {
        return Ok(());
    };
    if !matches!(
        session.status,
        SessionStatus::Pending | SessionStatus::Active
    ) {
        return Ok(());
    }
    let patch = SessionPatch {
        status: Some(SessionStatus::Closed),
        ..SessionPatch::default()
    };
    state
        .store
        .update_session(session_id, &patch, state.clock.now())
        .await?;
    state
        .announce(
            task.owner,
            Some(task.project_id),
            Change::Session { session_id },
        )
        .await;
    Ok(())
}
