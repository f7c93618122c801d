//! User authentication: API tokens (`Authorization: Bearer kiln_…`) for the CLI and scripts,
//! and a session cookie for the browser. Only SHA-256 hashes of secrets are stored.
//!
//! A one-time login link (`/login?token=…`, printed at start) turns into a browser session.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kiln_core::{ApiToken, Timestamp, User, UserId};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The browser session cookie.
pub const SESSION_COOKIE: &str = "kiln_session";
/// The name of one-time login tokens; they work only at `/login`.
pub const LOGIN_TOKEN_NAME: &str = "first-run";
/// The name of browser session tokens.
pub const BROWSER_TOKEN_NAME: &str = "browser";

/// A new random secret: `kiln_` and 32 random bytes, base64url.
#[must_use]
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("kiln_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a secret: SHA-256, hex.
#[must_use]
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a token for `user` and returns its secret (shown once).
pub async fn issue_token(
    state: &AppState,
    user: UserId,
    name: &str,
    expires_at: Option<Timestamp>,
) -> Result<(ApiToken, String), ApiError> {
    let secret = new_secret();
    let token = ApiToken {
        id: uuid::Uuid::now_v7(),
        user_id: user,
        token_hash: hash_secret(&secret),
        name: name.to_owned(),
        created_at: state.clock.now(),
        expires_at,
    };
    state.store.create_api_token(&token).await?;
    Ok((token, secret))
}

/// The user making the request, from the bearer token or the session cookie.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub User);

impl CurrentUser {
    /// The user's id.
    #[must_use]
    pub fn id(&self) -> UserId {
        self.0.id
    }
}

/// The bearer token of a request, if any.
#[must_use]
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The session cookie of a request, if any.
#[must_use]
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
}

/// Finds the live token with this secret.
pub async fn find_token(state: &AppState, secret: &str) -> Result<Option<ApiToken>, ApiError> {
    let Some(token) = state.store.find_api_token(&hash_secret(secret)).await? else {
        return Ok(None);
    };
    if token.expires_at.is_some_and(|exp| exp <= state.clock.now()) {
        return Ok(None);
    }
    Ok(Some(token))
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = bearer(&parts.headers)
            .or_else(|| session_cookie(&parts.headers))
            .ok_or_else(|| {
                ApiError::unauthorized("sign in: a bearer token or session cookie is required")
            })?;
        let token = find_token(state, secret)
            .await?
            .filter(|t| t.name != LOGIN_TOKEN_NAME)
            .ok_or_else(|| ApiError::unauthorized("invalid or expired credentials"))?;
        let user = state
            .store
            .get_user(token.user_id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid or expired credentials"))?;
        Ok(Self(user))
    }
}

/// Creates the user `name` if it does not exist; returns it.
pub async fn ensure_user(state: &AppState, name: &str) -> Result<User, ApiError> {
    if let Some(user) = state.store.get_user_by_name(name).await? {
        return Ok(user);
    }
    let user = User {
        id: UserId::new(),
        name: name.to_owned(),
        created_at: state.clock.now(),
    };
    match state.store.create_user(&user).await {
        Ok(()) => Ok(user),
        // Another replica created it first.
        Err(kiln_core::StoreError::Conflict { .. }) => state
            .store
            .get_user_by_name(name)
            .await?
            .ok_or_else(|| ApiError::internal("user vanished after a conflict")),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed_as_hex() {
        let a = new_secret();
        assert!(a.starts_with("kiln_"));
        assert_ne!(a, new_secret());
        let h = hash_secret(&a);
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash_secret(&a));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; kiln_session=abc; b=2".parse().unwrap());
        assert_eq!(session_cookie(&headers), Some("abc"));
        headers.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(bearer(&headers), Some("xyz"));
    }
}
