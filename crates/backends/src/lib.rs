//! # kiln-backends
//!
//! Adapters behind cargo features:
//!
//! - `sqlite`: the SQLite store (sqlx, embedded migrations, WAL mode);
//! - `postgres`: the PostgreSQL store (sqlx, `FOR UPDATE SKIP LOCKED` claims, `LISTEN/NOTIFY`);
//! - `local`: the local node provider (nodes are `kiln-node` processes on this machine);
//! - `hetzner`: the Hetzner Cloud node provider.
//!
//! Each is being built under its own issue; until then the crate exports nothing.
//!
//! ```
//! let _ = std::any::type_name::<dyn kiln_core::Store>();
//! ```
