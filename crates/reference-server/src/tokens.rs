//! Callback tokens for nodes and workspaces: compact JWTs (HS256, HMAC-SHA256 with the
//! server's secret key) carrying the node id, the workspace id for workspace tokens, and an
//! expiry. A token for node A is useless for node B, and a node token cannot post messages.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use kiln_core::{NodeId, Timestamp, WorkspaceId};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The fixed header of every token Kiln signs.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// What a callback token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// The node protocol endpoints of one node.
    Node,
    /// The messages endpoint of one workspace.
    Workspace,
}

/// The claims of a callback token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackClaims {
    /// What the token is for.
    pub scope: TokenScope,
    /// The node (`sub` is the node for node tokens).
    pub node: NodeId,
    /// The workspace, for workspace tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceId>,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, bad JSON or an unexpected header.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match (forged, or signed with another key).
    #[error("invalid token signature")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
}

/// Signs and verifies callback tokens with one secret key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer over `key` (at least 32 bytes recommended).
    #[must_use]
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into() }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// A signed token with these claims.
    #[must_use]
    pub fn sign(&self, claims: &CallbackClaims) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// A node token for `node`, valid until `expires`.
    #[must_use]
    pub fn node_token(&self, node: NodeId, now: Timestamp, expires: Timestamp) -> String {
        self.sign(&CallbackClaims {
            scope: TokenScope::Node,
            node,
            workspace: None,
            iat: now.timestamp(),
            exp: expires.timestamp(),
        })
    }

    /// A workspace token for `workspace` on `node`, valid until `expires`.
    #[must_use]
    pub fn workspace_token(
        &self,
        node: NodeId,
        workspace: WorkspaceId,
        now: Timestamp,
        expires: Timestamp,
    ) -> String {
        self.sign(&CallbackClaims {
            scope: TokenScope::Workspace,
            node,
            workspace: Some(workspace),
            iat: now.timestamp(),
            exp: expires.timestamp(),
        })
    }

    /// The claims of a token signed by this key and not expired at `now`.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<CallbackClaims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed)?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(serde_json::Value::as_str) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: CallbackClaims =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{LifecycleClock, ManualClock};
    use std::time::Duration;

    fn now() -> Timestamp {
        ManualClock::starting_at_epoch().now()
    }

    #[test]
    fn a_signed_token_verifies_with_its_claims() {
        let signer = TokenSigner::new(b"k".repeat(32));
        let node = NodeId::new();
        let ws = WorkspaceId::new();
        let t = now();
        let token = signer.workspace_token(node, ws, t, t + chrono::Duration::hours(1));
        let claims = signer.verify(&token, t).unwrap();
        assert_eq!(claims.scope, TokenScope::Workspace);
        assert_eq!(claims.node, node);
        assert_eq!(claims.workspace, Some(ws));
    }

    #[test]
    fn expired_forged_and_malformed_tokens_are_refused() {
        let signer = TokenSigner::new(b"k".repeat(32));
        let other = TokenSigner::new(b"x".repeat(32));
        let t = now();
        let token = signer.node_token(NodeId::new(), t, t + chrono::Duration::seconds(60));
        let later = kiln_core::clock::add_duration(t, Duration::from_secs(61));
        assert_eq!(signer.verify(&token, later), Err(TokenError::Expired));
        assert_eq!(other.verify(&token, t), Err(TokenError::BadSignature));
        assert_eq!(signer.verify("a.b", t), Err(TokenError::Malformed));
        // A payload swapped under the original signature is refused.
        let forged_claims = CallbackClaims {
            scope: TokenScope::Node,
            node: NodeId::new(),
            workspace: None,
            iat: 0,
            exp: i64::MAX,
        };
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged_payload;
        assert_eq!(
            signer.verify(&parts.join("."), t),
            Err(TokenError::BadSignature)
        );
    }
}
