//! # kiln
//!
//! The facade over Kiln's SDK crates. Depend on this one crate and pick what you embed:
//!
//! - [`core`] (always): domain, state machines, the traits, in-memory backends.
//!
//! The outbox, pool, backends, node agent and server join this facade as their issues land.
//!
//! ```
//! use kiln::core::{VmSize, task::TaskStatus};
//! assert_eq!(VmSize::default(), VmSize::Small);
//! assert!(TaskStatus::Completed.is_terminal());
//! ```

pub use kiln_core as core;
