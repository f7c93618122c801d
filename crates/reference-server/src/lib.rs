//! # kiln-server
//!
//! The control plane: the HTTP API (axum), callback-token auth for nodes, user auth, the
//! WebSocket broadcast of live updates, the embedded web UI and the wiring of store, pool,
//! runner and providers from configuration. The `kiln` binary lives here.
//!
//! This crate is being built under the server issue; until then it exports nothing.
//!
//! ```
//! let _ = std::any::type_name::<dyn kiln_core::Store>();
//! ```
