//! A fake Hetzner Cloud API on 127.0.0.1 (feature `hetzner-fake`), following the public
//! API documentation's request and response shapes, so tests and end-to-end runs never
//! contact the real API.
//!
//! What it does:
//!
//! - `POST /v1/servers` validates the request like Hetzner (unique name, known server type,
//!   image and location, label syntax, user data ≤ 32 KiB, a server limit answering
//!   `resource_limit_exceeded`) and answers `201` with the server (`initializing`), its
//!   `create_server` action and a `start_server` next action;
//! - servers go `initializing` → `starting` (after `action_delay`) → `running` (after
//!   `boot_delay`); actions go `running` → `success` (or `error` when told so);
//! - `DELETE /v1/servers/{id}` answers a `delete_server` action; the server is `deleting`
//!   until the action finishes, then gone (404);
//! - `GET /v1/servers` filters by `label_selector` (`k=v`, `k!=v`, `k`, `!k`, `in`, `notin`,
//!   comma = and) and `name`, and paginates (`page`, `per_page` ≤ 50, `meta.pagination`);
//! - every answer carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`;
//! - a wrong bearer token gets `401 unauthorized`;
//! - [`FakeHetzner::fail_next`] makes the next N calls of an endpoint answer 429 (with
//!   `RateLimit-Reset`), any error status and code, or hang past the client's timeout;
//! - [`FakeHetzner::on_create`] / [`FakeHetzner::on_delete`] hooks see each server's user
//!   data, so an end-to-end test can "boot" a server by starting a local `kiln-node` with
//!   [`FakeServer::node_env`].
//!
//! Time comes from the [`LifecycleClock`] in [`FakeOptions`]; state advances lazily on each
//! request.

mod labels;
mod routes;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kiln_core::{LifecycleClock, SystemClock, Timestamp};
use tokio::sync::oneshot;

pub use labels::LabelSelector;

use state::{ServerRecord, State};

use super::api::CreateServerRequest;
use super::cloud_init::{self, CloudInitError};

/// The token the fake accepts unless told otherwise.
pub const DEFAULT_TOKEN: &str = "fake-hetzner-token";

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// The only bearer token accepted.
    pub token: String,
    /// From creation to `running`.
    pub boot_delay: Duration,
    /// How long `create_server` and `delete_server` actions run.
    pub action_delay: Duration,
    /// More servers than this answer `403 resource_limit_exceeded`.
    pub max_servers: usize,
    /// Server types that exist.
    pub server_types: Vec<String>,
    /// Images that exist.
    pub images: Vec<String>,
    /// Locations that exist.
    pub locations: Vec<String>,
    /// The source of time.
    pub clock: Arc<dyn LifecycleClock>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        Self {
            token: DEFAULT_TOKEN.into(),
            boot_delay: Duration::from_millis(80),
            action_delay: Duration::from_millis(30),
            max_servers: 100,
            server_types: names(&[
                "cx23", "cx33", "cx43", "cx53", "cx22", "cx32", "cx42", "cpx11", "cpx21", "cpx31",
                "cax11", "cax21",
            ]),
            images: names(&["debian-12", "debian-13", "ubuntu-22.04", "ubuntu-24.04"]),
            locations: names(&["nbg1", "fsn1", "hel1", "ash", "hil", "sin"]),
            clock: Arc::new(SystemClock),
        }
    }
}

/// An endpoint of the fake, for failure injection and call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// `POST /v1/servers`.
    CreateServer,
    /// `GET /v1/servers/{id}`.
    GetServer,
    /// `GET /v1/servers`.
    ListServers,
    /// `DELETE /v1/servers/{id}`.
    DeleteServer,
    /// `GET /v1/actions/{id}`.
    GetAction,
}

/// An answer the fake gives instead of doing its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeFailure {
    /// `429 rate_limit_exceeded` with `RateLimit-Remaining: 0` and `RateLimit-Reset` this far
    /// ahead.
    RateLimited {
        /// Until the limit resets.
        reset_in: Duration,
    },
    /// An error status with Hetzner's error body.
    Status {
        /// HTTP status.
        status: u16,
        /// Hetzner's error code.
        code: String,
        /// Hetzner's message.
        message: String,
    },
    /// Answers normally, but only after this long (past the client's timeout).
    Hang(Duration),
}

impl FakeFailure {
    /// `500 service_error`.
    #[must_use]
    pub fn server_error() -> Self {
        Self::status(500, "service_error", "Internal service error")
    }
    /// `422` with `code` and `message` (an invalid request).
    #[must_use]
    pub fn unprocessable(code: &str, message: &str) -> Self {
        Self::status(422, code, message)
    }
    /// `403 forbidden`.
    #[must_use]
    pub fn forbidden() -> Self {
        Self::status(
            403,
            "forbidden",
            "insufficient permissions for this request",
        )
    }
    /// `403 resource_limit_exceeded`.
    #[must_use]
    pub fn resource_limit() -> Self {
        Self::status(
            403,
            "resource_limit_exceeded",
            "server limit exceeded for this project",
        )
    }
    /// Any status, code and message.
    #[must_use]
    pub fn status(status: u16, code: &str, message: &str) -> Self {
        Self::Status {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A server as the fake holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeServer {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its status now (`initializing`, `starting`, `running`, `deleting`, `off`).
    pub status: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its server type.
    pub server_type: String,
    /// Its image.
    pub image: String,
    /// Its location.
    pub location: String,
    /// The user data it was created with.
    pub user_data: Option<String>,
    /// When it was created.
    pub created: Timestamp,
}

impl FakeServer {
    /// The `kiln-node` environment in its cloud-init user data (to "boot" it locally; set
    /// `KILN_NODE_DATA_DIR` to a temporary directory instead of the node's path).
    ///
    /// # Errors
    /// When it has no user data made by Kiln.
    pub fn node_env(&self) -> Result<BTreeMap<String, String>, CloudInitError> {
        cloud_init::parse_node_env(self.user_data.as_deref().unwrap_or_default())
    }
}

type Hook = Arc<dyn Fn(&FakeServer) + Send + Sync>;

/// The fake API server; it stops when dropped.
pub struct FakeHetzner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _shutdown: oneshot::Sender<()>,
}

impl std::fmt::Debug for FakeHetzner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHetzner")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    options: FakeOptions,
    state: Mutex<State>,
    on_create: Mutex<Vec<Hook>>,
    on_delete: Mutex<Vec<Hook>>,
}

impl FakeHetzner {
    /// Starts a fake with the default options on a random port of 127.0.0.1.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(FakeOptions::default()).await
    }

    /// Starts a fake with `options` on a random port of 127.0.0.1.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start_with(options: FakeOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            state: Mutex::new(State {
                next_id: 1000,
                ..State::default()
            }),
            on_create: Mutex::new(Vec::new()),
            on_delete: Mutex::new(Vec::new()),
        });
        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = routes::router(shared.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "fake Hetzner API stopped");
            }
        });
        tracing::debug!(%addr, "fake Hetzner API listening");
        Ok(Self {
            addr,
            shared,
            _shutdown: shutdown,
        })
    }

    /// The API base URL, e.g. `http://127.0.0.1:41234/v1`.
    #[must_use]
    pub fn api_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bearer token it accepts.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.shared.options.token
    }

    /// Makes the next `times` calls of `endpoint` answer with `failure`.
    pub fn fail_next(&self, endpoint: Endpoint, times: usize, failure: FakeFailure) {
        let mut state = self.shared.lock();
        let queue = state.failures.entry(endpoint).or_default();
        queue.extend(std::iter::repeat_n(failure, times));
    }

    /// Makes the next action running `command` (`create_server`, `start_server`,
    /// `delete_server`) end in `status: error` with `code` and `message`.
    pub fn fail_next_action(&self, command: &str, code: &str, message: &str) {
        self.shared
            .lock()
            .action_failures
            .entry(command.to_owned())
            .or_default()
            .push_back((code.to_owned(), message.to_owned()));
    }

    /// Calls `hook` with every server created from now on (right after `POST /servers`).
    pub fn on_create(&self, hook: impl Fn(&FakeServer) + Send + Sync + 'static) {
        self.shared
            .on_create
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(hook));
    }

    /// Calls `hook` with every server whose deletion completes from now on.
    pub fn on_delete(&self, hook: impl Fn(&FakeServer) + Send + Sync + 'static) {
        self.shared
            .on_delete
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(hook));
    }

    /// How many times `endpoint` was called (failed calls included).
    #[must_use]
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.shared
            .lock()
            .calls
            .get(&endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// Every accepted `POST /servers` body, oldest first.
    #[must_use]
    pub fn create_requests(&self) -> Vec<CreateServerRequest> {
        self.shared.lock().create_requests.clone()
    }

    /// The servers that exist now (deletions that completed are applied first).
    #[must_use]
    pub fn servers(&self) -> Vec<FakeServer> {
        let now = self.shared.options.clock.now();
        self.shared.settle(now);
        let state = self.shared.lock();
        state
            .servers
            .values()
            .map(|s| state.snapshot(s, now))
            .collect()
    }

    /// Plants a server directly (an orphan, or many for pagination); it is `running`.
    pub fn insert_server(&self, name: &str, labels: BTreeMap<String, String>) -> i64 {
        let now = self.shared.options.clock.now();
        let request = CreateServerRequest {
            name: name.to_owned(),
            server_type: "cx23".into(),
            image: "debian-12".into(),
            location: Some("nbg1".into()),
            labels,
            user_data: None,
            start_after_create: true,
        };
        let mut state = self.shared.lock();
        let id = state.next_id();
        state.servers.insert(
            id,
            ServerRecord {
                request,
                id,
                created: now,
                started_at: now,
                running_at: now,
                create_action: 0,
                start_action: 0,
                delete_action: None,
            },
        );
        id
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies completed deletions and tells the delete hooks (outside the state lock).
    fn settle(&self, now: Timestamp) {
        let deleted = self.lock().advance(now);
        self.run_hooks(&self.on_delete, &deleted);
    }

    fn run_hooks(&self, hooks: &Mutex<Vec<Hook>>, servers: &[FakeServer]) {
        if servers.is_empty() {
            return;
        }
        let hooks = hooks.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for server in servers {
            for hook in &hooks {
                hook(server);
            }
        }
    }
}
