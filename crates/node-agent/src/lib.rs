//! # kiln-node
//!
//! The agent host that runs on every Kiln node (WIP docs).

pub mod acp;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod events;
pub mod node;
pub mod outbox;
pub mod recorder;
pub mod routes;
pub mod workspace;

pub use config::NodeConfig;
pub use error::{NodeError, Result};
pub use node::{Node, NodeExit};
