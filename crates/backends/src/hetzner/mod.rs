//! # Hetzner Cloud node provider (feature `hetzner`)
//!
//! [`HetznerProvider`] implements [`NodeProvider`] on the public
//! [Hetzner Cloud API v1](https://docs.hetzner.cloud/) with a small typed `reqwest` client
//! ([`HetznerClient`]). Kiln builds one provider per Hetzner API token — a user's or a
//! project's token, kept sealed by the [`vault`](crate::vault) and opened only to build it.
//!
//! Why not the `hcloud` crate (0.26, generated from the OpenAPI document): it depends on
//! reqwest 0.12 while the workspace uses 0.13 (two HTTP stacks in one binary), and its error
//! type keeps the status and body but not the response headers, so `RateLimit-Reset` could
//! not be honoured. Kiln needs five calls; a typed client of its own is smaller than the
//! glue around a generated one, and the same [`api`] types serve the fake server.
//!
//! ## How Kiln uses it
//!
//! - **create** — the pool asks for a node of a size for an owner. The provider first looks
//!   for a server labelled `kiln-node-id={node id}` (so a retried create never makes a second
//!   server), otherwise `POST /servers` with name `{prefix}-{node id}`, the size's server
//!   type, the image, the location (the spec's, else the setting), labels
//!   `managed-by=kiln`, `kiln-node-id`, `kiln-owner`, and the [`cloud_init`] user data. It
//!   then follows the `create_server` action and its `next_actions` (`GET /actions/{id}`
//!   every `poll_interval`), then the server until it is `running`, all within
//!   `create_timeout`. A transient failure while polling is waited out within that bound. If
//!   an action ends in an error the half-made server is deleted and Hetzner's code and
//!   message are returned (if that delete fails too, the next create finds the server `off`,
//!   deletes it and answers a retryable error; the one after starts over). Two racing creates for one node meet at Hetzner's
//!   `uniqueness_error` on the name; the loser returns the winner's server.
//! - **get** — `GET /servers/{id}`; 404 is `None`.
//! - **destroy** — `DELETE /servers/{id}` then follows the `delete_server` action within
//!   `delete_timeout`; 404 (already gone) is success.
//! - **list** — `GET /servers?label_selector=managed-by=kiln`, every page (`page_size` per
//!   page, following `meta.pagination.next_page`), for the orphan sweep.
//!
//! Every failure is classified once by [`classify`]: 429 (`retry_after` from
//! `RateLimit-Reset`), 5xx, timeouts and network failures are retryable;
//! `resource_limit_exceeded` is [`ProviderError::Quota`]; 401/403 `unauthorized`/`forbidden`
//! are [`ProviderError::Unauthorized`]; `invalid_input`, `uniqueness_error`, 422 and other
//! 4xx are [`ProviderError::Invalid`] — each with Hetzner's own code and message, which is
//! what a task that failed to get a node shows.
//!
//! ## Settings
//!
//! | setting | variable | default | meaning |
//! |---|---|---|---|
//! | `api_url` | `KILN_HETZNER_API_URL` | `https://api.hetzner.cloud/v1` | API base URL (tests point it at [`fake`](self#the-fake)) |
//! | `server_type_small` | `KILN_HETZNER_SERVER_TYPE_SMALL` | `cx23` | server type for `small` (2 vCPU, 4 GB) |
//! | `server_type_medium` | `KILN_HETZNER_SERVER_TYPE_MEDIUM` | `cx33` | server type for `medium` (4 vCPU, 8 GB) |
//! | `server_type_large` | `KILN_HETZNER_SERVER_TYPE_LARGE` | `cx43` | server type for `large` (8 vCPU, 16 GB) |
//! | `image` | `KILN_HETZNER_IMAGE` | `debian-12` | image every node boots (needs cloud-init and systemd) |
//! | `location` | `KILN_HETZNER_LOCATION` | `nbg1` | location when the spec names none |
//! | `server_name_prefix` | `KILN_HETZNER_SERVER_NAME_PREFIX` | `kiln` | servers are named `{prefix}-{node id}` |
//! | `connect_timeout` | `KILN_HETZNER_CONNECT_TIMEOUT_MS` | 10 000 | bound on connecting to the API |
//! | `request_timeout` | `KILN_HETZNER_REQUEST_TIMEOUT_MS` | 30 000 | bound on one API call (then retryable) |
//! | `poll_interval` | `KILN_HETZNER_POLL_INTERVAL_MS` | 1 000 | how often actions and booting servers are polled |
//! | `create_timeout` | `KILN_HETZNER_CREATE_TIMEOUT_MS` | 300 000 | how long create waits for `running` (a cold boot takes about a minute) |
//! | `delete_timeout` | `KILN_HETZNER_DELETE_TIMEOUT_MS` | 120 000 | how long destroy waits for the delete action |
//! | `page_size` | `KILN_HETZNER_PAGE_SIZE` | 50 | servers per page when listing (1–50) |
//! | `journal_max_use` | `KILN_HETZNER_JOURNAL_MAX_USE` | `200M` | journald `SystemMaxUse=` on nodes |
//!
//! The API token is not a setting: it is the credential of whoever owns the node, passed to
//! [`HetznerProvider::new`].
//!
//! ## The fake
//!
//! With the `hetzner-fake` feature, `fake::FakeHetzner` serves the same API shapes on
//! 127.0.0.1 (servers boot after a delay, actions progress, label selectors and pagination
//! work, failures can be injected), so no test ever contacts the real Hetzner API.
//!
//! ```
//! # #[cfg(feature = "hetzner-fake")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kiln_backends::hetzner::{fake::FakeHetzner, HetznerProvider, HetznerSettings};
//! use kiln_core::{NodeProvider, SystemClock};
//!
//! let fake = FakeHetzner::start().await.unwrap();
//! let settings = HetznerSettings {
//!     api_url: fake.api_url(),
//!     poll_interval: Duration::from_millis(10),
//!     ..HetznerSettings::default()
//! };
//! let provider = HetznerProvider::new(settings, fake.token(), Arc::new(SystemClock)).unwrap();
//! assert!(provider.list().await.unwrap().is_empty());
//! # });
//! ```

pub mod api;
mod client;
pub mod cloud_init;
mod config;
mod error;
#[cfg(feature = "hetzner-fake")]
pub mod fake;

use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::clock::add_duration;
use kiln_core::{
    LifecycleClock, NodeId, NodeProvider, NodeSpec, ProviderError, ProviderNodeStatus,
    ProvisionedNode, Timestamp, UserId,
};

pub use client::HetznerClient;
pub use config::{DEFAULT_API_URL, HetznerSettings, InvalidSetting};
pub use error::{Failure, classify};

use api::{Action, CreateServerRequest, Server};

/// The label every Kiln server carries: `managed-by=kiln`.
pub const LABEL_MANAGED_BY: &str = "managed-by";
/// The label holding Kiln's node id.
pub const LABEL_NODE_ID: &str = "kiln-node-id";
/// The label holding the node owner's user id.
pub const LABEL_OWNER: &str = "kiln-owner";
const MANAGED_BY_KILN: &str = "managed-by=kiln";
/// Guards `list` against an API that never stops paginating.
const MAX_PAGES: u32 = 1_000;

/// Nodes as Hetzner Cloud servers (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct HetznerProvider {
    client: HetznerClient,
    settings: Arc<HetznerSettings>,
    clock: Arc<dyn LifecycleClock>,
}

impl HetznerProvider {
    /// A provider creating servers with `settings`, authenticated with `token`. Waiting and
    /// rate-limit arithmetic go through `clock`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        settings: HetznerSettings,
        token: impl Into<String>,
        clock: Arc<dyn LifecycleClock>,
    ) -> Result<Self, ProviderError> {
        let client = HetznerClient::new(&settings, token, clock.clone())?;
        Ok(Self {
            client,
            settings: Arc::new(settings),
            clock,
        })
    }

    /// A provider with the same settings and HTTP connection pool, authenticated with
    /// another `token` (the server keeps one provider and derives one per credential).
    #[must_use]
    pub fn for_token(&self, token: impl Into<String>) -> Self {
        Self {
            client: self.client.with_token(token),
            settings: self.settings.clone(),
            clock: self.clock.clone(),
        }
    }

    /// The settings in use.
    #[must_use]
    pub fn settings(&self) -> &HetznerSettings {
        &self.settings
    }

    /// The API client (for calls the trait does not cover).
    #[must_use]
    pub fn client(&self) -> &HetznerClient {
        &self.client
    }

    /// Checks that the token is accepted (one cheap read), for when a user saves it.
    ///
    /// # Errors
    /// [`ProviderError::Unauthorized`] for a refused token; other classified failures.
    pub async fn verify_token(&self) -> Result<(), ProviderError> {
        self.client
            .list_servers(MANAGED_BY_KILN, 1, 1)
            .await
            .map(|_| ())
    }

    async fn find_by_node_id(&self, node_id: NodeId) -> Result<Option<Server>, ProviderError> {
        let selector = format!("{MANAGED_BY_KILN},{LABEL_NODE_ID}={node_id}");
        let page = self
            .client
            .list_servers(&selector, 1, self.settings.page_size)
            .await?;
        Ok(page.servers.into_iter().min_by_key(|s| s.id))
    }

    /// Polls `action` until it ends or `deadline` passes. `Ok` carries how the action
    /// ended; `Err` means it could not be followed to its end.
    async fn follow_action(
        &self,
        mut action: Action,
        deadline: Timestamp,
    ) -> Result<ActionEnd, ProviderError> {
        loop {
            match action.status.as_str() {
                "success" => return Ok(ActionEnd::Succeeded),
                "error" => {
                    let (code, message) = action.error.as_ref().map_or(
                        ("action_failed", "the action failed without a reason"),
                        |e| (e.code.as_str(), e.message.as_str()),
                    );
                    return Ok(ActionEnd::Failed(classify(
                        &Failure::Action {
                            command: &action.command,
                            code,
                            message,
                        },
                        self.clock.now(),
                    )));
                }
                _ => {}
            }
            self.wait_before_polling(
                deadline,
                &format!("action {} ({})", action.id, action.command),
                None,
            )
            .await?;
            match self.client.get_action(action.id).await {
                Ok(polled) => action = polled,
                Err(e) if e.is_retryable() => {
                    tracing::debug!(action = action.id, error = %e, "polling the action failed; polling again");
                    self.wait_out(&e, deadline).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Polls the server until it runs or `deadline` passes.
    async fn wait_until_running(
        &self,
        mut server: Server,
        deadline: Timestamp,
    ) -> Result<Server, ProviderError> {
        loop {
            match server.status.as_str() {
                "running" => return Ok(server),
                "deleting" | "stopping" | "off" => {
                    return Err(ProviderError::Unavailable {
                        message: format!(
                            "Hetzner server {} is {} instead of starting",
                            server.id, server.status
                        ),
                    });
                }
                _ => {}
            }
            self.wait_before_polling(
                deadline,
                &format!("server {} ({})", server.id, server.status),
                None,
            )
            .await?;
            match self.client.get_server(server.id).await {
                Ok(Some(polled)) => server = polled,
                Ok(None) => {
                    return Err(ProviderError::Unavailable {
                        message: format!("Hetzner server {} disappeared while starting", server.id),
                    });
                }
                Err(e) if e.is_retryable() => self.wait_out(&e, deadline).await?,
                Err(e) => return Err(e),
            }
        }
    }

    async fn wait_before_polling(
        &self,
        deadline: Timestamp,
        what: &str,
        at_least: Option<std::time::Duration>,
    ) -> Result<(), ProviderError> {
        let now = self.clock.now();
        if now >= deadline {
            return Err(ProviderError::Unavailable {
                message: format!("gave up waiting for Hetzner {what}: not done in time"),
            });
        }
        let wait = at_least
            .unwrap_or(self.settings.poll_interval)
            .max(self.settings.poll_interval);
        self.clock
            .sleep_until(add_duration(now, wait).min(deadline))
            .await;
        Ok(())
    }

    /// Sleeps through a transient polling failure (a rate limit's reset if it is sooner
    /// than the deadline).
    async fn wait_out(
        &self,
        error: &ProviderError,
        deadline: Timestamp,
    ) -> Result<(), ProviderError> {
        let retry_after = match error {
            ProviderError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        if let Some(after) = retry_after
            && add_duration(self.clock.now(), after) > deadline
        {
            return Err(error.clone());
        }
        self.wait_before_polling(deadline, "a retry", retry_after)
            .await
    }

    async fn create_new(
        &self,
        spec: &NodeSpec,
        deadline: Timestamp,
    ) -> Result<Server, ProviderError> {
        let user_data =
            cloud_init::user_data(spec, &self.settings.journal_max_use).map_err(|e| {
                ProviderError::Invalid {
                    code: "invalid_bootstrap".into(),
                    message: e.to_string(),
                }
            })?;
        let request = CreateServerRequest {
            name: format!("{}-{}", self.settings.server_name_prefix, spec.node_id),
            server_type: self.settings.server_type(spec.size).to_owned(),
            image: self.settings.image.clone(),
            location: Some(
                spec.location
                    .clone()
                    .unwrap_or_else(|| self.settings.location.clone()),
            ),
            labels: [
                (LABEL_MANAGED_BY.to_owned(), "kiln".to_owned()),
                (LABEL_NODE_ID.to_owned(), spec.node_id.to_string()),
                (LABEL_OWNER.to_owned(), spec.owner.to_string()),
            ]
            .into(),
            user_data: Some(user_data),
            start_after_create: true,
        };
        let created = match self.client.create_server(&request).await {
            Ok(created) => created,
            Err(ProviderError::Invalid { code, message }) if code == "uniqueness_error" => {
                // Another create for this node won the race for the name: join it.
                return match self.find_by_node_id(spec.node_id).await? {
                    Some(server) => Ok(server),
                    None => Err(ProviderError::Invalid { code, message }),
                };
            }
            Err(e) => return Err(e),
        };
        let server_id = created.server.id;
        tracing::info!(node = %spec.node_id, server = server_id, server_type = %request.server_type,
            location = ?request.location, "Hetzner server created; waiting for it to run");
        for action in std::iter::once(created.action).chain(created.next_actions) {
            // A timeout here leaves the server: a later create finds it by its label.
            if let ActionEnd::Failed(error) = self.follow_action(action, deadline).await? {
                self.discard_failed(server_id, &error).await;
                return Err(error);
            }
        }
        Ok(created.server)
    }

    /// Deletes a server whose creation failed, so it neither bills nor lingers.
    async fn discard_failed(&self, server_id: i64, cause: &ProviderError) {
        tracing::warn!(server = server_id, error = %cause, "Hetzner server creation failed; deleting it");
        if let Err(e) = self.client.delete_server(server_id).await {
            tracing::warn!(server = server_id, error = %e, "could not delete the failed server; the sweep will");
        }
    }
}

#[async_trait]
impl NodeProvider for HetznerProvider {
    fn name(&self) -> &str {
        "hetzner"
    }

    async fn create(&self, spec: &NodeSpec) -> Result<ProvisionedNode, ProviderError> {
        let deadline = add_duration(self.clock.now(), self.settings.create_timeout);
        let server = match self.find_by_node_id(spec.node_id).await? {
            // Kiln never powers servers off: an `off` server is what a failed create left
            // behind when deleting it failed too. Delete it now; the next create starts over.
            Some(stale) if stale.status == "off" => {
                let cause = ProviderError::Unavailable {
                    message: format!(
                        "Hetzner server {} for this node was left off by a failed create; \
                         deleting it before trying again",
                        stale.id
                    ),
                };
                self.discard_failed(stale.id, &cause).await;
                return Err(cause);
            }
            Some(existing) => {
                tracing::debug!(node = %spec.node_id, server = existing.id, "Hetzner server exists for this node");
                existing
            }
            None => self.create_new(spec, deadline).await?,
        };
        let server = self.wait_until_running(server, deadline).await?;
        Ok(provisioned(&server))
    }

    async fn get(&self, provider_id: &str) -> Result<Option<ProvisionedNode>, ProviderError> {
        let Ok(id) = provider_id.parse::<i64>() else {
            return Ok(None);
        };
        Ok(self.client.get_server(id).await?.as_ref().map(provisioned))
    }

    async fn destroy(&self, provider_id: &str) -> Result<(), ProviderError> {
        let Ok(id) = provider_id.parse::<i64>() else {
            tracing::warn!(provider_id, "not a Hetzner server id; nothing to delete");
            return Ok(());
        };
        let Some(action) = self.client.delete_server(id).await? else {
            tracing::debug!(server = id, "Hetzner server already gone");
            return Ok(());
        };
        let deadline = add_duration(self.clock.now(), self.settings.delete_timeout);
        match self.follow_action(action, deadline).await? {
            ActionEnd::Succeeded => {
                tracing::info!(server = id, "Hetzner server deleted");
                Ok(())
            }
            ActionEnd::Failed(error) => Err(error),
        }
    }

    async fn list(&self) -> Result<Vec<ProvisionedNode>, ProviderError> {
        let mut nodes = Vec::new();
        let mut page = 1;
        for _ in 0..MAX_PAGES {
            let response = self
                .client
                .list_servers(MANAGED_BY_KILN, page, self.settings.page_size)
                .await?;
            nodes.extend(response.servers.iter().map(provisioned));
            match response.meta.pagination.next_page {
                Some(next) if next > page => page = next,
                _ => return Ok(nodes),
            }
        }
        Err(ProviderError::Unavailable {
            message: format!("Hetzner server list did not end after {MAX_PAGES} pages"),
        })
    }
}

/// How an action ended.
enum ActionEnd {
    Succeeded,
    Failed(ProviderError),
}

/// What Kiln knows of a Hetzner server.
fn provisioned(server: &Server) -> ProvisionedNode {
    ProvisionedNode {
        provider_id: server.id.to_string(),
        node_id: server
            .labels
            .get(LABEL_NODE_ID)
            .and_then(|v| v.parse::<NodeId>().ok()),
        owner: server
            .labels
            .get(LABEL_OWNER)
            .and_then(|v| v.parse::<UserId>().ok()),
        status: node_status(&server.status),
        created_at: chrono::DateTime::parse_from_rfc3339(&server.created)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
    }
}

/// Hetzner's server status as a [`ProviderNodeStatus`].
fn node_status(status: &str) -> ProviderNodeStatus {
    match status {
        "running" | "migrating" => ProviderNodeStatus::Running,
        "stopping" | "deleting" => ProviderNodeStatus::Stopping,
        "off" => ProviderNodeStatus::Stopped,
        // initializing, starting, rebuilding, unknown
        _ => ProviderNodeStatus::Starting,
    }
}
