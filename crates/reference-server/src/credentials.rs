//! Stored credentials: [`Credentials`] seals what users give (a Hetzner API token, a git
//! token) with the server's vault key and checks a Hetzner token against the API before it is
//! stored; [`HetznerFleet`] is the `hetzner` node provider, which creates each owner's nodes
//! with that owner's token, opened only for the call.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use axum::http::StatusCode;
use kiln_backends::hetzner::{HetznerProvider, HetznerSettings};
use kiln_backends::vault::{self, Vault};
use kiln_core::{
    LifecycleClock, NodeProvider, NodeSpec, Project, ProviderError, ProvisionedNode, SecretKey,
    SecretKind, SecretStoreExt, Store, StoredSecret, UserId,
};

use crate::error::ApiError;
use crate::state::AppState;

/// The name projects and nodes use for Hetzner Cloud.
pub const HETZNER: &str = "hetzner";

/// The longest token accepted (Hetzner's are 64 characters).
const MAX_TOKEN_LEN: usize = 4096;

/// Seals and opens stored credentials, and checks Hetzner tokens.
#[derive(Clone)]
pub struct Credentials {
    vault: Vault,
    hetzner: HetznerProvider,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("vault_key", &self.vault.key_id())
            .field("hetzner_api", &self.hetzner.settings().api_url)
            .finish()
    }
}

impl Credentials {
    /// Credentials sealed with `vault`, Hetzner tokens checked at `hetzner.api_url`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        vault: Vault,
        hetzner: HetznerSettings,
        clock: Arc<dyn LifecycleClock>,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            vault,
            hetzner: HetznerProvider::new(hetzner, String::new(), clock)?,
        })
    }

    /// The vault.
    #[must_use]
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// A provider for Hetzner Cloud with this server's settings and `token`.
    #[must_use]
    pub fn hetzner_for(&self, token: &str) -> HetznerProvider {
        self.hetzner.for_token(token)
    }

    /// `secret` sealed under `key`, with its hint, set at `now`.
    #[must_use]
    pub fn seal(&self, key: SecretKey, secret: &str, now: kiln_core::Timestamp) -> StoredSecret {
        StoredSecret {
            key,
            sealed: self.vault.seal(secret.as_bytes()),
            hint: vault::hint(secret),
            created_at: now,
            updated_at: now,
        }
    }

    /// Opens a stored secret.
    ///
    /// # Errors
    /// When it was sealed with a key this server does not hold (a lost or rotated-out key).
    pub fn open(&self, secret: &StoredSecret) -> Result<String, vault::VaultError> {
        self.vault.open_string(&secret.sealed)
    }

    /// Checks a user-given token's form: 422 for an empty or oversized one.
    ///
    /// # Errors
    /// A 422 naming what is wrong.
    pub fn check_form(token: &str) -> Result<&str, ApiError> {
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_LEN || token.chars().any(char::is_control) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!(
                    "token must be 1 to {MAX_TOKEN_LEN} bytes without control characters or \
                     surrounding spaces"
                ),
            ));
        }
        Ok(token)
    }

    /// Asks the Hetzner API whether it accepts `token`: a refused token is a 422 with
    /// Hetzner's own message; an unreachable API is a 502 (nothing is stored either way).
    ///
    /// # Errors
    /// As described.
    pub async fn verify_hetzner(&self, token: &str) -> Result<(), ApiError> {
        match self.hetzner_for(token).verify_token().await {
            Ok(()) => Ok(()),
            Err(ProviderError::Unauthorized { code, message }) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_token",
                format!("the Hetzner API refused this token ({code}): {message}"),
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "hetzner_unavailable",
                format!("the token could not be checked with the Hetzner API: {e}"),
            )),
        }
    }
}

/// Refuses to start work (a task run, a chat) of `project` when this server does not enable
/// its provider (`409 provider_disabled`), or when the provider needs a credential its owner
/// has not stored (`409 no_provider_credentials`, saying where to set it).
///
/// # Errors
/// As described; store failures.
pub async fn require_runnable(state: &AppState, project: &Project) -> Result<(), ApiError> {
    if !state.settings.providers.contains(&project.provider) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "provider_disabled",
            format!(
                "this project's node provider {:?} is not enabled on this server (enabled: {}); \
                 change the project's provider",
                project.provider,
                state.settings.providers.join(", ")
            ),
        ));
    }
    if project.provider != HETZNER {
        return Ok(());
    }
    let token = state
        .store
        .effective_secret(project.owner, None, SecretKind::HetznerToken)
        .await?;
    if token.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_provider_credentials",
            "no Hetzner API token: set one in Settings (PUT /api/account/hetzner-token) before \
             running tasks of a Hetzner project",
        ));
    }
    Ok(())
}

/// The `hetzner` node provider of a server: each owner's servers are created, listed and
/// deleted with that owner's stored token (opened for the call, never kept). Provider ids are
/// `{owner}/{server id}`, so a delete finds the token of the server's owner.
#[derive(Clone)]
pub struct HetznerFleet {
    store: Arc<dyn Store>,
    credentials: Arc<Credentials>,
}

impl fmt::Debug for HetznerFleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HetznerFleet")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl HetznerFleet {
    /// The fleet of every owner in `store`, with tokens opened by `credentials`.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, credentials: Arc<Credentials>) -> Self {
        Self { store, credentials }
    }

    /// The provider authenticated as `owner`, or [`ProviderError::Unauthorized`] when the
    /// owner has no usable token.
    async fn provider_of(&self, owner: UserId) -> Result<HetznerProvider, ProviderError> {
        let missing = |message: String| ProviderError::Unauthorized {
            code: "no_token".into(),
            message,
        };
        let secret = self
            .store
            .effective_secret(owner, None, SecretKind::HetznerToken)
            .await
            .map_err(|e| ProviderError::Unavailable {
                message: format!("reading the owner's Hetzner token: {e}"),
            })?
            .ok_or_else(|| missing("the owner has no Hetzner API token stored".into()))?;
        let token = self.credentials.open(&secret).map_err(|e| {
            missing(format!(
                "the stored Hetzner token cannot be opened ({e}); set it again"
            ))
        })?;
        Ok(self.credentials.hetzner_for(&token))
    }
}

fn fleet_id(owner: UserId, server: &str) -> String {
    format!("{owner}/{server}")
}

fn split_id(provider_id: &str) -> Result<(UserId, &str), ProviderError> {
    provider_id
        .split_once('/')
        .and_then(|(owner, server)| Some((owner.parse().ok()?, server)))
        .ok_or_else(|| ProviderError::Invalid {
            code: "invalid_id".into(),
            message: format!("{provider_id:?} is not an {{owner}}/{{server}} id"),
        })
}

fn scoped(owner: UserId, mut node: ProvisionedNode) -> ProvisionedNode {
    node.provider_id = fleet_id(owner, &node.provider_id);
    node
}

#[async_trait]
impl NodeProvider for HetznerFleet {
    fn name(&self) -> &str {
        HETZNER
    }

    async fn create(&self, spec: &NodeSpec) -> Result<ProvisionedNode, ProviderError> {
        let provider = self.provider_of(spec.owner).await?;
        Ok(scoped(spec.owner, provider.create(spec).await?))
    }

    async fn get(&self, provider_id: &str) -> Result<Option<ProvisionedNode>, ProviderError> {
        let (owner, server) = split_id(provider_id)?;
        let provider = self.provider_of(owner).await?;
        Ok(provider.get(server).await?.map(|n| scoped(owner, n)))
    }

    async fn destroy(&self, provider_id: &str) -> Result<(), ProviderError> {
        let (owner, server) = split_id(provider_id)?;
        self.provider_of(owner).await?.destroy(server).await
    }

    /// The servers of every owner with a stored token, each under the owner its `kiln-owner`
    /// label names; an owner whose listing fails is skipped (logged), so one revoked token
    /// does not stop the orphan sweep for the rest.
    async fn list(&self) -> Result<Vec<ProvisionedNode>, ProviderError> {
        let owners = self
            .store
            .secret_owners(SecretKind::HetznerToken)
            .await
            .map_err(|e| ProviderError::Unavailable {
                message: e.to_string(),
            })?;
        let mut servers = Vec::new();
        for owner in owners {
            let listed = match self.provider_of(owner).await {
                Ok(provider) => provider.list().await,
                Err(e) => Err(e),
            };
            match listed {
                // Owners may share a Hetzner project: each server is listed under the owner
                // its labels name (one without the label, under every owner who sees it).
                Ok(found) => servers.extend(
                    found
                        .into_iter()
                        .filter(|n| n.owner.is_none_or(|o| o == owner))
                        .map(|n| scoped(owner, n)),
                ),
                Err(e) => {
                    tracing::warn!(%owner, error = %e, "could not list the owner's Hetzner servers");
                }
            }
        }
        Ok(servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_carry_their_owner() {
        let owner = UserId::new();
        let id = fleet_id(owner, "4711");
        assert_eq!(split_id(&id).unwrap(), (owner, "4711"));
        assert!(matches!(
            split_id("4711"),
            Err(ProviderError::Invalid { .. })
        ));
    }
}
