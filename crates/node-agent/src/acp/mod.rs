//! The ACP host: agent processes, their sessions, and the capture of their updates.

pub mod capture;
pub mod client;
pub mod host;
pub mod process;
pub mod terminal;
pub mod transport;

pub use capture::{SessionCapture, TurnSummary};
pub use client::approve;
pub use host::{AgentHost, AgentLaunch, AgentReport, StopKind};
