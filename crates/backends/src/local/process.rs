//! Processes of local nodes: liveness (pid-reuse safe) and signals to their process group.

use std::time::Duration;

use kiln_core::NodeId;
use tokio::process::Command;

/// Whether `pid` is a live (not zombie) process that is the node `node_id`. On Linux the
/// process's environment must carry `NODE_ID=<node_id>`, so a reused pid is not mistaken
/// for the node; elsewhere `kill -0` decides.
pub(crate) async fn is_node_alive(pid: u32, node_id: NodeId) -> bool {
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    if std::path::Path::new("/proc/self").exists() {
        let Ok(stat) = tokio::fs::read_to_string(proc_dir.join("stat")).await else {
            return false;
        };
        // The state follows the parenthesized command name.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, Some('Z' | 'X') | None) {
            return false;
        }
        return match tokio::fs::read(proc_dir.join("environ")).await {
            Ok(environ) => {
                let wanted = format!("NODE_ID={node_id}");
                environ
                    .split(|b| *b == 0)
                    .any(|var| var == wanted.as_bytes())
            }
            // Unreadable (another user): trust the pid.
            Err(_) => true,
        };
    }
    Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Sends `signal` to the process group `pgid` with the `kill` command (no unsafe code).
pub(crate) async fn signal_group(pgid: u32, signal: &str) {
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

/// Stops the node's process group: `SIGTERM`, then `SIGKILL` once `grace` has passed.
/// Returns once the node process is gone (or after the `SIGKILL`).
pub(crate) async fn stop_node(pid: u32, node_id: NodeId, grace: Duration) {
    signal_group(pid, "TERM").await;
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !is_node_alive(pid, node_id).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(pid, %node_id, "local node ignored SIGTERM; killing it");
    signal_group(pid, "KILL").await;
    for _ in 0..40 {
        if !is_node_alive(pid, node_id).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
