//! # kiln-backends
//!
//! Kiln's adapters, each behind a cargo feature:
//!
//! - `sqlite`: [`SqliteStore`], the embedded single-machine store: one SQLite file in WAL
//!   mode, writes serialized by `BEGIN IMMEDIATE`, an in-process change feed;
//! - `postgres`: [`PostgresStore`], the store several server replicas share: claims with
//!   `FOR UPDATE SKIP LOCKED`, the change feed over `LISTEN/NOTIFY`;
//! - `local`: the local node provider (nodes are `kiln-node` processes on this machine);
//! - `hetzner`: the Hetzner Cloud node provider (`hetzner` module: API client, cloud-init
//!   generation; enables `vault`);
//! - `hetzner-fake`: a fake Hetzner Cloud API on 127.0.0.1 for tests and end-to-end runs;
//! - `vault`: AES-256-GCM sealing of provider credentials at rest (`vault` module).
//!
//! Both stores implement every store trait of `kiln-core` ([`Store`](kiln_core::Store)) and
//! pass its conformance suite. Their schemas are embedded migrations
//! (`migrations/sqlite`, `migrations/postgres`) applied on connect. Both keep the same rules:
//!
//! - every time is a bound parameter from the caller's clock, never the database's `now()`,
//!   and is kept to the microsecond (SQLite stores microseconds since the epoch);
//! - message inserts are idempotent by message id, and give each new message the next
//!   contiguous cursor of its session in the same transaction that moves the session's
//!   message count, `updated_at` and topic;
//! - the warm-node claim is one conditional `UPDATE … RETURNING`; guarded transitions check
//!   what they changed and return [`StoreError::Conflict`](kiln_core::StoreError::Conflict);
//! - database errors are classified once: unique violation → conflict, connection and pool
//!   trouble → unavailable (retryable), the rest → backend.
//!
//! On PostgreSQL the claim skips rows another transaction holds locked for an instant, so a
//! claim racing another write of the same warm node may find none and provision instead;
//! it never hands one node to two tasks. The change feed is asynchronous: an event arrives
//! shortly after its commit, in every replica, including for changes made just before a
//! subscription started; events announced while a replica's listening connection is being
//! re-established are missed (viewers catch up by cursor).
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use kiln_backends::SqliteStore;
//! use kiln_core::{LifecycleClock, ManualClock, NodeStore, TaskId, UserId, VmSize};
//!
//! let store = SqliteStore::connect("sqlite::memory:").await?;
//! let clock = ManualClock::starting_at_epoch();
//! // No warm node yet: the claim finds nothing, so a pool would provision one.
//! let claimed = store
//!     .claim_warm_node(UserId::new(), VmSize::Small, "local", None, TaskId::new(), clock.now())
//!     .await?;
//! assert!(claimed.is_none());
//! # Ok::<(), kiln_core::StoreError>(())
//! # }).unwrap();
//! ```

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_common;

#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteStore};

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresConfig, PostgresStore};

#[cfg(feature = "local")]
pub mod local;

#[cfg(feature = "hetzner")]
pub mod hetzner;
#[cfg(feature = "vault")]
pub mod vault;
