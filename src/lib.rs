//! # kiln
//!
//! The facade over Kiln's SDK crates. Depend on this one crate and pick what you embed with
//! cargo features:
//!
//! | module | feature | crate |
//! |---|---|---|
//! | [`core`] | always | `kiln-core`: domain, state machines, the four traits, in-memory backends |
//! | `outbox` | `outbox` | `kiln-outbox`: the crash-safe SQLite message outbox and its flusher |
//! | `pool` | `pool` | `kiln-pool`: the warm node pool, the sweep, the task runner |
//! | `backends` | `backends` (+ `sqlite`, `postgres`, `local`, `hetzner`) | `kiln-backends`: stores and node providers |
//! | `node` | `node` | `kiln-node`: the agent host that runs on nodes |
//! | `server` | `server` | `kiln-server`: the control plane as a library |
//!
//! `full` turns everything on.
//!
//! ```
//! use kiln::core::{VmSize, task::TaskStatus};
//! assert_eq!(VmSize::default(), VmSize::Small);
//! assert!(TaskStatus::Completed.is_terminal());
//! ```

pub use kiln_core as core;

#[cfg(feature = "outbox")]
pub use kiln_outbox as outbox;

#[cfg(feature = "pool")]
pub use kiln_pool as pool;

#[cfg(feature = "backends")]
pub use kiln_backends as backends;

#[cfg(feature = "node")]
pub use kiln_node as node;

#[cfg(feature = "server")]
pub use kiln_server as server;
