//! Starting and stopping agent processes.

use std::time::Duration;

use tokio::process::Command;

/// Sends `signal` (`TERM`, `KILL`, …) to the process group led by `pgid`, using the `kill`
/// command (the crate forbids unsafe code, so no direct syscall).
pub async fn signal_group(pgid: u32, signal: &str) {
    let result = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    if let Err(e) = result {
        tracing::warn!(pgid, signal, error = %e, "could not run kill");
    }
}

/// Stops a process group: `TERM`, then `KILL` after `grace` unless `exited` resolves first.
pub async fn stop_group(pgid: u32, grace: Duration, exited: impl std::future::Future<Output = ()>) {
    signal_group(pgid, "TERM").await;
    if tokio::time::timeout(grace, exited).await.is_err() {
        signal_group(pgid, "KILL").await;
    }
}
