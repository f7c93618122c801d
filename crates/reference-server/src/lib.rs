//! # kiln-server
//!
//! The Kiln control plane as a library: [`app`] builds the axum [`Router`] of the HTTP API,
//! the node protocol, the WebSocket live updates and the web UI over an [`AppState`]; the
//! `kiln` binary only reads its [configuration](config) and serves it.
//!
//! Errors are JSON everywhere: `{"error": code, "message": …}` with a precise status.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use axum::body::Body;
//! use axum::http::Request;
//! use kiln_core::memory::{MemoryProvider, MemoryStore};
//! use kiln_server::{Config, app, server};
//! use tower::ServiceExt;
//!
//! // The whole server over in-memory parts (a real one uses SQLite or PostgreSQL and the
//! // local provider: see `server::serve`).
//! let data = tempfile::tempdir()?; // the vault key is generated in the data directory
//! let config = Config { data_dir: data.path().into(), ..Config::default() };
//! let config = Config { vault: kiln_backends::vault::VaultSettings::new(data.path()), ..config };
//! let parts = server::assemble(
//!     &config,
//!     Arc::new(MemoryStore::new()),
//!     Arc::new(MemoryProvider::new()),
//!     b"a secret key of some length".to_vec(),
//!     "http://127.0.0.1:8080",
//! )
//! .await?;
//! let response = app(parts.state)
//!     .oneshot(Request::get("/api/projects").body(Body::empty())?)
//!     .await?;
//! assert_eq!(response.status(), 401); // every user endpoint needs a token or a session
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## Modules
//!
//! - [`api`]: the HTTP API (projects, tasks, sessions, nodes, workspaces, accounts), the node
//!   protocol's server side and the messages endpoint; [`openapi`] describes all of it.
//! - [`auth`] (users: API tokens and browser sessions) and [`tokens`] (node and workspace
//!   callback JWTs).
//! - [`ws`]: the project WebSocket; [`live`] holds streaming text and fresh messages.
//! - [`commands`]: per-node command queues behind the long poll, relayed across replicas.
//! - [`runner`]: the task runner's server side (driver, workspace controller, node bootstrap).
//! - [`credentials`]: stored credentials (sealed by the vault, checked with Hetzner when
//!   saved) and the `hetzner` node provider that uses each owner's own token.
//! - [`server`] and [`config`]: wiring from configuration, and graceful serving.
//! - [`client`]: the operator CLI's client (`kiln task run`, `kiln task list`, `kiln node list`).

pub mod api;
pub mod auth;
pub mod client;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod error;
pub mod live;
pub mod openapi;
pub mod runner;
pub mod server;
pub mod state;
pub mod tokens;
pub mod ui;
pub mod ws;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

pub use config::{Config, ServeArgs};
pub use error::ApiError;
pub use state::{AppState, Settings, TaskDriver};

/// The whole HTTP surface of a server over `state`.
pub fn app(state: AppState) -> Router {
    api::router()
        .route("/api/openapi.json", get(openapi::serve))
        .route(
            "/api/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .merge(ui::router())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(axum::middleware::map_response(error::json_rejections))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
