//! Chat sessions: list (newest first, `taskId` filter), get, messages by cursor, a
//! follow-up prompt into an active session, and chats without a task (open, close).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kiln_core::protocol::{NodeCommand, Prompt};
use kiln_core::{
    ChatMessage, ChatSession, MessageId, MessagePage, Role, SessionId, SessionQuery, SessionStatus,
    StoredMessage, TaskId, VmSize, WorkspaceStatus,
};
use kiln_pool::NewChat;
use serde::{Deserialize, Serialize};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, parse_id};
use crate::state::AppState;

/// Default page size of message reads.
const DEFAULT_PAGE: u32 = 100;
/// Largest page size of message reads.
const MAX_PAGE: u32 = 500;

/// Query of `GET /api/projects/{id}/sessions`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListSessions {
    task_id: Option<String>,
    limit: Option<u32>,
}

/// Query of `GET /api/sessions/{id}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListMessages {
    before: Option<i64>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// A page of messages, oldest first.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagesPage {
    /// The messages.
    pub messages: Vec<StoredMessage>,
    /// Whether more messages lie beyond this page in the direction read.
    pub has_more: bool,
}

/// Body of `POST /api/sessions/{id}/prompt`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUp {
    text: String,
}

/// Body of `POST /api/projects/{id}/sessions`: a chat without a task.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenChat {
    #[serde(default)]
    vm_size: Option<VmSize>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    agent_hint: Option<String>,
}

/// The longest prompt, in bytes (as a task description).
const MAX_PROMPT_BYTES: usize = 200 * 1024;

fn check_prompt(text: &str, field: &str) -> Result<(), ApiError> {
    let invalid = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", m);
    if text.trim().is_empty() {
        return Err(invalid(format!("{field} must not be empty")));
    }
    if text.len() > MAX_PROMPT_BYTES {
        return Err(invalid(format!(
            "{field} is longer than {MAX_PROMPT_BYTES} bytes"
        )));
    }
    Ok(())
}

async fn owned_session(state: &AppState, user: &CurrentUser, raw: &str) -> ApiResult<ChatSession> {
    let id: SessionId = parse_id(raw, "session")?;
    match state.store.get_session(id).await? {
        Some(s) if s.owner == user.id() => Ok(s),
        _ => Err(ApiError::not_found("session")),
    }
}

pub(crate) async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(project_id): Path<String>,
    ApiQuery(query): ApiQuery<ListSessions>,
) -> ApiResult<Json<Vec<ChatSession>>> {
    let project = state
        .owned_project(user.id(), parse_id(&project_id, "project")?)
        .await?;
    // As the messages endpoint: a page of nothing is a mistake, not a question.
    if query.limit == Some(0) {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    let task_id = match query.task_id {
        Some(raw) => Some(
            raw.parse::<TaskId>()
                .map_err(|_| ApiError::bad_request("taskId is not a task id"))?,
        ),
        None => None,
    };
    Ok(Json(
        state
            .store
            .list_sessions(
                project.id,
                &SessionQuery {
                    task_id,
                    limit: query.limit,
                },
            )
            .await?,
    ))
}

pub(crate) async fn open(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(project_id): Path<String>,
    ApiJson(body): ApiJson<OpenChat>,
) -> ApiResult<impl IntoResponse> {
    let project = state
        .owned_project(user.id(), parse_id(&project_id, "project")?)
        .await?;
    if let Some(prompt) = &body.prompt {
        check_prompt(prompt, "prompt")?;
    }
    // Like Run Now: refused before anything is stored.
    crate::credentials::require_runnable(&state, &project).await?;
    let session = state
        .driver
        .open_chat(NewChat {
            project_id: project.id,
            vm_size: body.vm_size,
            prompt: body.prompt,
            agent_hint: body.agent_hint,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(session)))
}

pub(crate) async fn close(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ChatSession>> {
    let session = owned_session(&state, &user, &id).await?;
    if session.task_id.is_some() {
        return Err(ApiError::conflict(
            "this session belongs to a task; cancel the task instead of closing its session",
        ));
    }
    Ok(Json(state.driver.close_chat(session.id).await?))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ChatSession>> {
    Ok(Json(owned_session(&state, &user, &id).await?))
}

pub(crate) async fn messages(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListMessages>,
) -> ApiResult<Json<MessagesPage>> {
    let session = owned_session(&state, &user, &id).await?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let page = match (query.before, query.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give before or after, not both"));
        }
        (Some(cursor), None) => MessagePage::Before { cursor, limit },
        (None, Some(cursor)) => MessagePage::After {
            cursor,
            limit: limit + 1,
        },
        (None, None) => MessagePage::Latest { limit },
    };
    let mut messages = state.store.list_messages(session.id, page).await?;
    let has_more = match page {
        MessagePage::After { .. } => {
            let more = messages.len() > limit as usize;
            messages.truncate(limit as usize);
            more
        }
        _ => messages.first().is_some_and(|m| m.cursor > 1),
    };
    Ok(Json(MessagesPage { messages, has_more }))
}

pub(crate) async fn prompt(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<FollowUp>,
) -> ApiResult<impl IntoResponse> {
    let session = owned_session(&state, &user, &id).await?;
    check_prompt(&body.text, "text")?;
    let not_active = || ApiError::conflict("the session has no running agent to prompt");
    match session.status {
        SessionStatus::Closed => return Err(ApiError::conflict("the chat is closed")),
        SessionStatus::Completed | SessionStatus::Stopped => return Err(not_active()),
        SessionStatus::Pending | SessionStatus::Active => {}
    }
    let Some(workspace_id) = session.workspace_id else {
        return Err(ApiError::conflict(
            "the session's agent is still starting (no workspace yet); retry in a moment",
        ));
    };
    // A workspace still being created takes the prompt too: the node queues it behind the
    // checkout and the agent's start.
    let workspace = state
        .store
        .get_workspace(workspace_id)
        .await?
        .filter(|w| {
            matches!(
                w.status,
                WorkspaceStatus::Creating | WorkspaceStatus::Running
            )
        })
        .ok_or_else(not_active)?;
    let now = state.clock.now();
    let message = ChatMessage {
        id: MessageId::new(),
        session_id: session.id,
        role: Role::User,
        content: body.text.clone(),
        tool: None,
        seq: None,
        created_at: now,
    };
    // Stored first so viewers see it at once; the node captures it under the same id.
    state
        .store
        .insert_messages(std::slice::from_ref(&message), now)
        .await?;
    crate::commands::dispatch(
        &state.store,
        &state.commands,
        workspace.node_id,
        NodeCommand::Prompt {
            workspace_id: workspace.id,
            prompt: Prompt {
                message_id: message.id,
                text: body.text,
            },
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(message)))
}
