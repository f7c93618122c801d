//! Where nodes come from: the [`NodeProvider`] trait (Hetzner Cloud, local processes, fakes).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{NodeId, UserId};
use crate::model::VmSize;

/// What a node's agent host needs to start and reach the control plane. Everything here
/// ends up on the node, so it holds no secret but the node's own short-lived token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeBootstrap {
    /// Where the control plane listens, as the node reaches it.
    pub control_plane_url: String,
    /// The node's callback token (scoped to this node, expiring).
    pub callback_token: String,
    /// Extra environment for the agent host (for example the agent command).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A request to create a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Kiln's id for the node (labelled at the provider, so orphans can be matched).
    pub node_id: NodeId,
    /// Its owner (labelled at the provider).
    pub owner: UserId,
    /// Its size.
    pub size: VmSize,
    /// Where to create it, when the provider has locations.
    pub location: Option<String>,
    /// How its agent host starts.
    pub bootstrap: NodeBootstrap,
}

/// What the provider says a server is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderNodeStatus {
    /// Being created or booting.
    Starting,
    /// Running.
    Running,
    /// Stopping or being deleted.
    Stopping,
    /// Stopped but still existing (and billed).
    Stopped,
}

/// A server as the provider knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionedNode {
    /// The provider's id for it.
    pub provider_id: String,
    /// Kiln's node id, read back from its labels (none if the labels are missing).
    pub node_id: Option<NodeId>,
    /// Its owner, read back from its labels.
    pub owner: Option<UserId>,
    /// What it is doing.
    pub status: ProviderNodeStatus,
    /// When the provider created it.
    pub created_at: Option<Timestamp>,
}

/// A provider failure, classified once at the provider's boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// Too many requests; retry no sooner than `retry_after`.
    #[error("rate limited by the provider")]
    RateLimited {
        /// When the limit resets, if the provider said.
        retry_after: Option<Duration>,
    },
    /// A transient failure (5xx, timeout, network): retry with backoff.
    #[error("provider unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
    },
    /// The account is out of quota or hit a resource limit: permanent until the user acts.
    #[error("provider quota exceeded ({code}): {message}")]
    Quota {
        /// The provider's own error code.
        code: String,
        /// The provider's own message.
        message: String,
    },
    /// The credentials were refused: permanent until the user fixes them.
    #[error("provider refused the credentials ({code}): {message}")]
    Unauthorized {
        /// The provider's own error code.
        code: String,
        /// The provider's own message.
        message: String,
    },
    /// The request was invalid (unknown server type, location, image…): permanent.
    #[error("provider rejected the request ({code}): {message}")]
    Invalid {
        /// The provider's own error code.
        code: String,
        /// The provider's own message.
        message: String,
    },
}

impl ProviderError {
    /// Whether retrying the same call may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Unavailable { .. })
    }
}

/// Creates, inspects and destroys nodes.
#[async_trait]
pub trait NodeProvider: Send + Sync + fmt::Debug + 'static {
    /// The provider's name as stored on nodes (`local`, `hetzner`, …).
    fn name(&self) -> &str;

    /// Creates a server for `spec` and returns once the provider accepted it (the node's
    /// agent host reports ready to the control plane by itself later).
    /// Creating the same `spec.node_id` twice returns the existing server.
    async fn create(&self, spec: &NodeSpec) -> Result<ProvisionedNode, ProviderError>;

    /// Looks a server up by the provider's id; `None` when it does not exist.
    async fn get(&self, provider_id: &str) -> Result<Option<ProvisionedNode>, ProviderError>;

    /// Deletes a server. Idempotent: a server that is already gone is a success.
    async fn destroy(&self, provider_id: &str) -> Result<(), ProviderError>;

    /// Every server this provider holds that is labelled as Kiln's (for orphan detection).
    async fn list(&self) -> Result<Vec<ProvisionedNode>, ProviderError>;
}

#[async_trait]
impl<T: NodeProvider + ?Sized> NodeProvider for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn create(&self, spec: &NodeSpec) -> Result<ProvisionedNode, ProviderError> {
        (**self).create(spec).await
    }
    async fn get(&self, provider_id: &str) -> Result<Option<ProvisionedNode>, ProviderError> {
        (**self).get(provider_id).await
    }
    async fn destroy(&self, provider_id: &str) -> Result<(), ProviderError> {
        (**self).destroy(provider_id).await
    }
    async fn list(&self) -> Result<Vec<ProvisionedNode>, ProviderError> {
        (**self).list().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_provider_is_object_safe() {
        fn takes(_: Option<Arc<dyn NodeProvider>>) {}
        takes(None);
    }

    #[test]
    fn permanent_errors_are_not_retryable() {
        assert!(ProviderError::RateLimited { retry_after: None }.is_retryable());
        assert!(
            ProviderError::Unavailable {
                message: "502".into()
            }
            .is_retryable()
        );
        let quota = ProviderError::Quota {
            code: "resource_limit_exceeded".into(),
            message: "limit".into(),
        };
        assert!(!quota.is_retryable());
        assert!(quota.to_string().contains("resource_limit_exceeded"));
    }
}
