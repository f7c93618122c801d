//! The client side of the node protocol ([`kiln_core::protocol`]): hello, heartbeats, the
//! command long-poll, workspace events and live text deltas, over HTTP with the node's token;
//! and a workspace's git token again after a restart ([`ControlPlaneClient::git_token`]).

use std::time::Duration;

use kiln_core::protocol::{
    CommandBatch, DeltaBatch, Heartbeat, NODE_STOPPED, NodeHello, WorkspaceEvent,
};
use kiln_core::secret::Secret;
use kiln_core::{NodeId, WorkspaceId};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::error::{NodeError, Result, shorten};

/// Talks to the control plane on behalf of one node.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    http: reqwest::Client,
    base_url: String,
    node_id: NodeId,
    token: String,
}

impl ControlPlaneClient {
    /// A client for `node_id` at `base_url` authenticating with `token`.
    ///
    /// # Errors
    /// [`NodeError::InvalidConfig`] if the HTTP client cannot be built.
    pub fn new(base_url: &str, node_id: NodeId, token: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| NodeError::InvalidConfig(format!("http client: {e}")))?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            node_id,
            token: token.to_owned(),
        })
    }

    /// The base URL of the control plane.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn node_url(&self, tail: &str) -> String {
        format!("{}/api/nodes/{}/{tail}", self.base_url, self.node_id)
    }

    /// `POST /api/nodes/{id}/hello`.
    ///
    /// # Errors
    /// [`NodeError::Stopped`] on 410, [`NodeError::Unavailable`] when it should be retried.
    pub async fn hello(&self, hello: &NodeHello) -> Result<()> {
        self.post(&self.node_url("hello"), hello, Duration::from_secs(30))
            .await
    }

    /// `POST /api/nodes/{id}/heartbeat`.
    ///
    /// # Errors
    /// As [`hello`](Self::hello).
    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<()> {
        self.post(
            &self.node_url("heartbeat"),
            heartbeat,
            Duration::from_secs(30),
        )
        .await
    }

    /// `POST /api/nodes/{id}/events` (idempotent at the server).
    ///
    /// # Errors
    /// As [`hello`](Self::hello).
    pub async fn event(&self, event: &WorkspaceEvent) -> Result<()> {
        self.post(&self.node_url("events"), event, Duration::from_secs(30))
            .await
    }

    /// `POST /api/nodes/{id}/deltas` (ephemeral; the caller ignores failures).
    ///
    /// # Errors
    /// As [`hello`](Self::hello).
    pub async fn deltas(&self, batch: &DeltaBatch) -> Result<()> {
        self.post(&self.node_url("deltas"), batch, Duration::from_secs(5))
            .await
    }

    /// `GET /api/nodes/{id}/commands?after=&waitMs=`: waits up to `wait` at the server for
    /// commands after `after` (which acknowledges everything up to it).
    ///
    /// # Errors
    /// As [`hello`](Self::hello).
    pub async fn commands(&self, after: u64, wait: Duration) -> Result<CommandBatch> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let response = self
            .http
            .get(self.node_url("commands"))
            .bearer_auth(&self.token)
            .query(&[("after", after), ("waitMs", wait_ms)])
            .timeout(wait + Duration::from_secs(15))
            .send()
            .await
            .map_err(transport_error)?;
        let response = check(response).await?;
        response.json().await.map_err(|e| NodeError::Unavailable {
            message: format!("undecodable command batch: {e}"),
            retry_after: None,
        })
    }

    /// `GET /api/nodes/{id}/workspaces/{workspace}/git-token`: the git token of a
    /// workspace's project, for a restarted node that no longer holds it (see
    /// [`crate::credentials`]). The token is held in memory only, never written or logged.
    ///
    /// # Errors
    /// As [`hello`](Self::hello); [`NodeError::Rejected`] with status 404 when the control
    /// plane has no token for the workspace (or no such workspace on this node).
    pub async fn git_token(&self, workspace: WorkspaceId) -> Result<Secret> {
        #[derive(Deserialize)]
        struct GitToken {
            token: Secret,
        }
        let response = self
            .http
            .get(self.node_url(&format!("workspaces/{workspace}/git-token")))
            .bearer_auth(&self.token)
            // The workspace waits on it (a clone, a push, an agent's start).
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(transport_error)?;
        let response = check(response).await?;
        // The body is not shown on failure: it would be the token.
        let body: GitToken = response.json().await.map_err(|_| NodeError::Unavailable {
            message: "undecodable git token answer".into(),
            retry_after: None,
        })?;
        Ok(body.token)
    }

    async fn post<B: Serialize + ?Sized>(
        &self,
        url: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<()> {
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(transport_error)?;
        check(response).await.map(drop)
    }
}

fn transport_error(e: reqwest::Error) -> NodeError {
    NodeError::Unavailable {
        message: e.to_string(),
        retry_after: None,
    }
}

/// Classifies a response once: 2xx passes, 410 stops the node, 5xx/429 retry, other 4xx reject.
async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    if status == StatusCode::GONE {
        if !body.contains(NODE_STOPPED) {
            tracing::warn!(%body, "410 without the node_stopped code; stopping anyway");
        }
        return Err(NodeError::Stopped);
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(NodeError::Unavailable {
            message: format!("{status}: {}", shorten(&body, 300)),
            retry_after,
        });
    }
    Err(NodeError::Rejected {
        status: status.as_u16(),
        message: shorten(&body, 300),
    })
}
