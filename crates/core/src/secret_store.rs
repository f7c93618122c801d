//! Credentials a user stores for Kiln to use on their behalf (a Hetzner API token, a git
//! token for private repositories): the [`SecretStore`] trait and its row, [`StoredSecret`].
//!
//! A store only ever holds a secret **sealed** (encrypted by the caller, for example with
//! `kiln_backends::vault::Vault`) and a short hint for display; it never sees the plaintext.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::ids::{ProjectId, UserId};
use crate::model::string_enum;
use crate::store::StoreError;

string_enum!(
    /// What a stored secret is for.
    SecretKind, "secret kind" {
        /// A Hetzner Cloud API token: nodes of the owner's Hetzner projects are created with it.
        HetznerToken => "hetzner_token",
        /// A git token: workspaces clone and push the project's private repository with it.
        GitToken => "git_token",
    }
);

/// Which secret: an owner's, for all their projects (`project_id: None`), or one project's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretKey {
    /// Whose it is.
    pub owner: UserId,
    /// The project it is for; `None` for the owner's default.
    pub project_id: Option<ProjectId>,
    /// What it is for.
    pub kind: SecretKind,
}

impl SecretKey {
    /// The owner's secret of `kind` for all their projects.
    #[must_use]
    pub fn user(owner: UserId, kind: SecretKind) -> Self {
        Self {
            owner,
            project_id: None,
            kind,
        }
    }

    /// The secret of `kind` for one project of `owner`.
    #[must_use]
    pub fn project(owner: UserId, project_id: ProjectId, kind: SecretKind) -> Self {
        Self {
            owner,
            project_id: Some(project_id),
            kind,
        }
    }
}

/// A stored secret: sealed bytes and what may be shown about it. `Debug` never prints the
/// sealed bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSecret {
    /// Which secret.
    pub key: SecretKey,
    /// The secret, encrypted by the caller (the store never sees the plaintext).
    pub sealed: Vec<u8>,
    /// What may be shown: the last 4 characters of the plaintext, or nothing for a short one
    /// (`kiln_backends::vault::hint` makes it).
    pub hint: String,
    /// When it was first set.
    pub created_at: Timestamp,
    /// When it was last replaced.
    pub updated_at: Timestamp,
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSecret")
            .field("key", &self.key)
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .field("hint", &self.hint)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// Sealed secrets keyed by (owner, optional project, kind). A project's secrets go with the
/// project when it is deleted.
#[async_trait]
pub trait SecretStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `secret`, replacing the one with the same key (whose `created_at` is kept);
    /// returns what is stored. [`StoreError::NotFound`] when its project does not exist.
    async fn put_secret(&self, secret: &StoredSecret) -> Result<StoredSecret, StoreError>;
    /// Reads a secret.
    async fn get_secret(&self, key: &SecretKey) -> Result<Option<StoredSecret>, StoreError>;
    /// Deletes a secret. `false` if there was none.
    async fn delete_secret(&self, key: &SecretKey) -> Result<bool, StoreError>;
    /// The owners that have a secret of `kind` (user-level or for a project), each once.
    async fn secret_owners(&self, kind: SecretKind) -> Result<Vec<UserId>, StoreError>;
}

/// Sugar over [`SecretStore`].
#[async_trait]
pub trait SecretStoreExt: SecretStore {
    /// The secret of `kind` that applies to `project` of `owner`: the project's own, else
    /// the owner's default.
    async fn effective_secret(
        &self,
        owner: UserId,
        project: Option<ProjectId>,
        kind: SecretKind,
    ) -> Result<Option<StoredSecret>, StoreError> {
        if let Some(project) = project
            && let Some(secret) = self
                .get_secret(&SecretKey::project(owner, project, kind))
                .await?
        {
            return Ok(Some(secret));
        }
        self.get_secret(&SecretKey::user(owner, kind)).await
    }
}

impl<T: SecretStore + ?Sized> SecretStoreExt for T {}

#[async_trait]
impl<T: SecretStore + ?Sized> SecretStore for Arc<T> {
    async fn put_secret(&self, secret: &StoredSecret) -> Result<StoredSecret, StoreError> {
        (**self).put_secret(secret).await
    }
    async fn get_secret(&self, key: &SecretKey) -> Result<Option<StoredSecret>, StoreError> {
        (**self).get_secret(key).await
    }
    async fn delete_secret(&self, key: &SecretKey) -> Result<bool, StoreError> {
        (**self).delete_secret(key).await
    }
    async fn secret_owners(&self, kind: SecretKind) -> Result<Vec<UserId>, StoreError> {
        (**self).secret_owners(kind).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_store_is_object_safe() {
        fn takes(_: Option<Arc<dyn SecretStore>>) {}
        takes(None);
    }

    #[test]
    fn kinds_round_trip() {
        for kind in SecretKind::ALL {
            assert_eq!(kind.as_str().parse::<SecretKind>().unwrap(), *kind);
        }
        assert!("ssh_key".parse::<SecretKind>().is_err());
    }

    #[test]
    fn debug_output_never_shows_the_sealed_bytes() {
        let secret = StoredSecret {
            key: SecretKey::user(UserId::new(), SecretKind::GitToken),
            sealed: b"SEALED-BYTES".to_vec(),
            hint: "abcd".into(),
            created_at: crate::ManualClock::starting_at_epoch().now(),
            updated_at: crate::ManualClock::starting_at_epoch().now(),
        };
        let shown = format!("{secret:?}");
        assert!(
            !shown.contains("83, 69") && shown.contains("<12 bytes>"),
            "{shown}"
        );
    }
    use crate::LifecycleClock;
}
