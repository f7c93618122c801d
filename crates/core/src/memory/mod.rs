//! In-memory implementations: [`MemoryStore`] and [`MemoryProvider`]. They are real
//! implementations (they pass the conformance suites), meant for tests, simulations and
//! embedding without a database.

mod provider;
mod store;

pub use provider::{MemoryProvider, Operation};
pub use store::MemoryStore;
