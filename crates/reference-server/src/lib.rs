//! # kiln-server
//!
//! The Kiln control plane as a library: [`app`] builds the axum [`Router`] of the HTTP API,
//! the node protocol, the WebSocket live updates and the web UI over an [`AppState`]; the
//! `kiln` binary only reads its [configuration](config) and serves it.
//!
//! Errors are JSON everywhere: `{"error": code, "message": …}` with a precise status.

pub mod api;
pub mod auth;
pub mod client;
pub mod commands;
pub mod config;
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
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
