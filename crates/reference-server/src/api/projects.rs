//! `/api/projects`: create, list, get, update (incl. `defaultVmSize` and `provider`), delete.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kiln_core::{Project, ProjectId, TaskQuery, VmSize};
use serde::Deserialize;

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiJson, ApiResult, parse_id};
use crate::state::AppState;

/// Body of `POST /api/projects`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProject {
    name: String,
    repository_url: String,
    #[serde(default)]
    default_vm_size: Option<VmSize>,
    /// `local` or `hetzner` (those the server enables); default: the server's default.
    #[serde(default)]
    provider: Option<String>,
}

/// Body of `PATCH /api/projects/{id}`: an absent field is unchanged; every field a project
/// always has, so `null` is refused (422 naming the field) rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateProject {
    #[serde(default, deserialize_with = "not_null")]
    name: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    repository_url: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    default_vm_size: Option<VmSize>,
    #[serde(default, deserialize_with = "not_null")]
    provider: Option<String>,
}

/// A field that is given must hold a `T`; `None` only when it is absent (`serde(default)`).
/// Read as an `Option` first: serde_json takes a `null` where an enum belongs for a syntax
/// error, which would be a 400 `invalid_json` instead of a 422 naming the field.
fn not_null<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    match Option::<T>::deserialize(d)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(
            "must not be null (leave it out to keep it unchanged)",
        )),
    }
}

/// `provider` if this server enables it, else a 422 naming the ones it does.
fn check_provider(state: &AppState, provider: &str) -> Result<String, ApiError> {
    if state.settings.providers.iter().any(|p| p == provider) {
        return Ok(provider.to_owned());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        format!(
            "provider {provider:?} is not enabled on this server; expected one of: {}",
            state.settings.providers.join(", ")
        ),
    ))
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("{field} must not be empty"),
        ));
    }
    if value.len() > max {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("{field} is longer than {max} bytes"),
        ));
    }
    Ok(())
}

pub(crate) async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<CreateProject>,
) -> ApiResult<impl IntoResponse> {
    check_text("name", &body.name, 200)?;
    check_text("repositoryUrl", &body.repository_url, 4096)?;
    let provider = check_provider(
        &state,
        body.provider
            .as_deref()
            .unwrap_or(state.settings.default_provider()),
    )?;
    let now = state.clock.now();
    let project = Project {
        id: ProjectId::new(),
        owner: user.id(),
        name: body.name.trim().to_owned(),
        repository_url: body.repository_url.trim().to_owned(),
        default_vm_size: body.default_vm_size.unwrap_or_default(),
        provider,
        created_at: now,
        updated_at: now,
    };
    state.store.create_project(&project).await?;
    Ok((StatusCode::CREATED, Json(project)))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
) -> ApiResult<Json<Vec<Project>>> {
    Ok(Json(state.store.list_projects(user.id()).await?))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Project>> {
    let id = parse_id(&id, "project")?;
    Ok(Json(state.owned_project(user.id(), id).await?))
}

pub(crate) async fn update(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateProject>,
) -> ApiResult<Json<Project>> {
    let id = parse_id(&id, "project")?;
    let mut project = state.owned_project(user.id(), id).await?;
    if let Some(name) = body.name {
        check_text("name", &name, 200)?;
        project.name = name.trim().to_owned();
    }
    if let Some(url) = body.repository_url {
        check_text("repositoryUrl", &url, 4096)?;
        project.repository_url = url.trim().to_owned();
    }
    if let Some(size) = body.default_vm_size {
        project.default_vm_size = size;
    }
    if let Some(provider) = body.provider {
        project.provider = check_provider(&state, &provider)?;
    }
    project.updated_at = state.clock.now();
    state.store.update_project(&project).await?;
    Ok(Json(project))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "project")?;
    let project = state.owned_project(user.id(), id).await?;
    let tasks = state
        .store
        .list_tasks(project.id, &TaskQuery::default())
        .await?;
    let running = tasks.iter().filter(|t| t.status.is_running()).count();
    if running > 0 {
        return Err(ApiError::conflict(format!(
            "{running} task(s) of this project are running; cancel them first"
        )));
    }
    // Kept workspaces would otherwise hold their nodes for tasks that no longer exist.
    for task in &tasks {
        state.driver.discard_kept_workspaces(task.id).await?;
    }
    if !state.store.delete_project(project.id).await? {
        return Err(ApiError::not_found("project"));
    }
    Ok(StatusCode::NO_CONTENT)
}
