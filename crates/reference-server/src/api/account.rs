//! The signed-in user, API tokens, and the browser login and logout.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use kiln_core::User;
use serde::{Deserialize, Serialize};

use crate::auth::{
    BROWSER_TOKEN_NAME, CurrentUser, LOGIN_TOKEN_NAME, SESSION_COOKIE, find_token, issue_token,
    session_cookie,
};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, parse_id};
use crate::state::AppState;

/// The longest token lifetime (100 years): beyond it the expiry would leave the range of
/// RFC 3339 timestamps.
const MAX_TOKEN_LIFETIME_SECS: u64 = 100 * 365 * 24 * 3600;

/// Body of `POST /api/tokens`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    /// Lifetime in seconds (none: until revoked).
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

/// A new token; the secret is shown only here.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewToken {
    id: uuid::Uuid,
    name: String,
    token: String,
    expires_at: Option<kiln_core::Timestamp>,
}

/// A token as listed: never its secret nor its hash.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    id: uuid::Uuid,
    name: String,
    created_at: kiln_core::Timestamp,
    expires_at: Option<kiln_core::Timestamp>,
    /// Whether the request was made with this token (revoking it signs this client out).
    current: bool,
}

/// Query of `GET /login`.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    token: String,
}

pub(crate) async fn me(user: CurrentUser) -> Json<User> {
    Json(user.0)
}

/// `GET /api/providers`: the node providers projects on this server may choose, the
/// default (new projects') first.
pub(crate) async fn providers(
    State(state): State<AppState>,
    _user: CurrentUser,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "providers": state.settings.providers,
        "default": state.settings.default_provider(),
    }))
}

pub(crate) async fn create_token(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<impl IntoResponse> {
    let name = body.name.trim();
    if name.is_empty() || name == LOGIN_TOKEN_NAME || name == BROWSER_TOKEN_NAME {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "name must be non-empty and not a reserved name (first-run, browser)",
        ));
    }
    // 0 would issue a token already expired: refused like a lifetime past the limit.
    if body
        .expires_in_secs
        .is_some_and(|s| s == 0 || s > MAX_TOKEN_LIFETIME_SECS)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!(
                "expiresInSecs must be from 1 to {MAX_TOKEN_LIFETIME_SECS} (100 years); \
                 leave it out for a token that lasts until revoked"
            ),
        ));
    }
    let expires_at = body.expires_in_secs.map(|s| {
        kiln_core::clock::add_duration(state.clock.now(), std::time::Duration::from_secs(s))
    });
    let (token, secret) = issue_token(&state, user.id(), name, expires_at).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            id: token.id,
            name: token.name,
            token: secret,
            expires_at,
        }),
    ))
}

/// `GET /api/tokens`: the signed-in user's API tokens and browser sessions, newest first
/// (expired ones left out).
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: axum::http::HeaderMap,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    let current = current_token(&state, &headers).await?;
    let now = state.clock.now();
    let tokens = state
        .store
        .list_api_tokens(user.id())
        .await?
        .into_iter()
        .filter(|t| t.expires_at.is_none_or(|e| e > now))
        .map(|t| TokenInfo {
            current: current == Some(t.id),
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            expires_at: t.expires_at,
        })
        .collect();
    Ok(Json(tokens))
}

/// `DELETE /api/tokens/{tokenId}`: revokes one of the signed-in user's tokens at once
/// (another user's, like a malformed id, is not found).
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    user: CurrentUser,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<StatusCode> {
    let id: uuid::Uuid = parse_id(&id, "token")?;
    let owned = state
        .store
        .list_api_tokens(user.id())
        .await?
        .iter()
        .any(|t| t.id == id);
    if !owned || !state.store.delete_api_token(id).await? {
        return Err(ApiError::not_found("token"));
    }
    tracing::info!(user = %user.id(), token = %id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The id of the token this request was made with (bearer or session cookie).
async fn current_token(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<uuid::Uuid>, ApiError> {
    let Some(secret) = crate::auth::bearer(headers).or_else(|| session_cookie(headers)) else {
        return Ok(None);
    };
    Ok(find_token(state, secret).await?.map(|t| t.id))
}

/// Where a browser that opened a refused login link is sent: the sign-in page says why.
const REFUSED_LOGIN_PAGE: &str = "/?login=invalid";

/// `GET /login?token=…`: trades a one-time login token for a browser session cookie. A link
/// that is invalid, used or expired is a 401 JSON error, one without a token a 400, except
/// for a browser opening it (`Accept: text/html`), which is redirected to the sign-in page
/// instead of shown raw JSON.
pub(crate) async fn login(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    query: Result<ApiQuery<LoginQuery>, ApiError>,
) -> ApiResult<Response> {
    let answer = match query {
        Ok(ApiQuery(query)) => trade_login_token(&state, &query.token).await,
        Err(no_token) => Err(no_token),
    };
    match answer {
        Err(err)
            if matches!(
                err.status,
                StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST
            ) && accepts_html(&headers) =>
        {
            Ok(Redirect::to(REFUSED_LOGIN_PAGE).into_response())
        }
        answer => answer,
    }
}

fn accepts_html(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

async fn trade_login_token(state: &AppState, secret: &str) -> ApiResult<Response> {
    let token = find_token(state, secret)
        .await?
        .filter(|t| t.name == LOGIN_TOKEN_NAME)
        .ok_or_else(|| ApiError::unauthorized("this login link is invalid, used or expired"))?;
    // One-time: whoever deletes it first logs in.
    if !state.store.delete_api_token(token.id).await? {
        return Err(ApiError::unauthorized("this login link was already used"));
    }
    let expires = kiln_core::clock::add_duration(state.clock.now(), state.settings.session_ttl);
    let (_, secret) = issue_token(state, token.user_id, BROWSER_TOKEN_NAME, Some(expires)).await?;
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        state.settings.session_ttl.as_secs(),
        if state.settings.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    Ok(response)
}

/// `POST /api/logout`: ends the browser session.
pub(crate) async fn logout(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    if let Some(secret) = session_cookie(&headers)
        && let Some(token) = find_token(&state, secret).await?
    {
        state.store.delete_api_token(token.id).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("kiln_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    Ok(response)
}
