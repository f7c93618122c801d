//! # kiln-outbox
//!
//! The crash-safe SQLite message outbox that every Kiln node writes chat messages to, and
//! the flusher that delivers them in batches to a [`kiln_core::MessageSink`] with retries.
//!
//! This crate is being built under the outbox issue: `Outbox::open`, durable `enqueue`
//! with group commit, the batching flusher with classified retries, the bounded size with
//! visible drop notices and the HTTP sink. Until then it exports nothing.
//!
//! ```
//! // The crate compiles and links against kiln-core.
//! let _ = std::any::type_name::<dyn kiln_core::MessageSink>();
//! ```
