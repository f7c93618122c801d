//! Stored credentials: the user's Hetzner API token (`/api/account/hetzner-token`, checked
//! against the Hetzner API when saved) and a project's git token
//! (`/api/projects/{id}/git-token`). Only a hint (the last 4 characters) and when it was set
//! ever come back; the token itself is sealed by the vault and never answered.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_core::{SecretKey, SecretKind, Timestamp};
use serde::{Deserialize, Serialize};

use crate::auth::CurrentUser;
use crate::credentials::Credentials;
use crate::error::{ApiJson, ApiResult, parse_id};
use crate::state::AppState;

/// Body of the `PUT`s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetToken {
    token: String,
}

/// What is shown of a stored token.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    /// Whether one is stored.
    set: bool,
    /// Its last 4 characters (`…abcd`; `…` alone for a short token).
    hint: Option<String>,
    /// When it was last set.
    set_at: Option<Timestamp>,
}

async fn status(state: &AppState, key: SecretKey) -> ApiResult<Json<TokenStatus>> {
    let stored = state.store.get_secret(&key).await?;
    Ok(Json(TokenStatus {
        set: stored.is_some(),
        hint: stored.as_ref().map(|s| s.hint.clone()),
        set_at: stored.map(|s| s.updated_at),
    }))
}

async fn store(state: &AppState, key: SecretKey, token: &str) -> ApiResult<Json<TokenStatus>> {
    let stored = state
        .store
        .put_secret(&state.credentials.seal(key, token, state.clock.now()))
        .await?;
    tracing::info!(owner = %key.owner, project = ?key.project_id, kind = %key.kind, "credential stored");
    Ok(Json(TokenStatus {
        set: true,
        hint: Some(stored.hint),
        set_at: Some(stored.updated_at),
    }))
}

async fn clear(state: &AppState, key: SecretKey) -> ApiResult<StatusCode> {
    if state.store.delete_secret(&key).await? {
        tracing::info!(owner = %key.owner, project = ?key.project_id, kind = %key.kind, "credential cleared");
    }
    Ok(StatusCode::NO_CONTENT)
}

fn hetzner_key(user: &CurrentUser) -> SecretKey {
    SecretKey::user(user.id(), SecretKind::HetznerToken)
}

pub(crate) async fn get_hetzner(
    State(state): State<AppState>,
    user: CurrentUser,
) -> ApiResult<Json<TokenStatus>> {
    status(&state, hetzner_key(&user)).await
}

pub(crate) async fn put_hetzner(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<SetToken>,
) -> ApiResult<Json<TokenStatus>> {
    let token = Credentials::check_form(&body.token)?;
    state.credentials.verify_hetzner(token).await?;
    store(&state, hetzner_key(&user), token).await
}

pub(crate) async fn delete_hetzner(
    State(state): State<AppState>,
    user: CurrentUser,
) -> ApiResult<StatusCode> {
    clear(&state, hetzner_key(&user)).await
}

async fn git_key(state: &AppState, user: &CurrentUser, id: &str) -> ApiResult<SecretKey> {
    let project = state
        .owned_project(user.id(), parse_id(id, "project")?)
        .await?;
    Ok(SecretKey::project(
        project.owner,
        project.id,
        SecretKind::GitToken,
    ))
}

pub(crate) async fn get_git(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenStatus>> {
    let key = git_key(&state, &user, &id).await?;
    status(&state, key).await
}

pub(crate) async fn put_git(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetToken>,
) -> ApiResult<Json<TokenStatus>> {
    let key = git_key(&state, &user, &id).await?;
    let token = Credentials::check_form(&body.token)?;
    store(&state, key, token).await
}

pub(crate) async fn delete_git(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let key = git_key(&state, &user, &id).await?;
    clear(&state, key).await
}
