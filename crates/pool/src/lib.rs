//! # kiln-pool
//!
//! The warm node pool (claim, release, expiry with retried destroys), the reconciliation
//! sweep (stale warm nodes, max lifetime, orphans at the provider) and the task runner that
//! drives a task through [`kiln_core::task`]'s state machine.
//!
//! This crate is being built under the pool issue; until then it exports nothing.
//!
//! ```
//! let _ = std::any::type_name::<dyn kiln_core::NodeProvider>();
//! ```
