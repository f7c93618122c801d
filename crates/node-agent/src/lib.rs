//! # kiln-node
//!
//! The agent host that runs on every node: it registers with the control plane, creates
//! workspaces (a git checkout on the task branch), hosts ACP agent processes, turns their
//! session updates into chat messages for the [`kiln_outbox`] outbox, commits and pushes on
//! a clean end and reports status. It also ships `kiln-demo-agent`, an offline ACP agent.
//!
//! This crate is being built under the node-agent issue; until then it exports nothing.
//!
//! ```
//! let _ = std::any::type_name::<kiln_core::protocol::NodeCommand>();
//! ```
