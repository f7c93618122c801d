//! ACP terminals: commands an agent runs through the client, inside its workspace.
//!
//! A command with arguments runs as given; a command line without arguments runs through
//! `sh -c` (agents send both forms). The working directory must lie inside the workspace.
//! Output (stdout and stderr interleaved) is kept up to the agent's byte limit, dropping the
//! oldest bytes. Each terminal runs in its own process group, killed on `kill`, `release`
//! and when the agent host stops.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agent_client_protocol::v1::schema::{CreateTerminalRequest, TerminalExitStatus};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::watch;

use super::process::signal_group;
use crate::workspace::paths::WorkspaceRoot;

/// The default output limit when the agent gives none, in bytes.
const DEFAULT_OUTPUT_LIMIT: u64 = 1 << 20;

#[derive(Debug)]
struct Terminal {
    output: Mutex<(Vec<u8>, bool)>,
    limit: usize,
    exit: watch::Receiver<Option<TerminalExitStatus>>,
    pid: Option<u32>,
}

impl Terminal {
    fn append(&self, bytes: &[u8]) {
        let mut guard = self
            .output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (buffer, truncated) = &mut *guard;
        buffer.extend_from_slice(bytes);
        if buffer.len() > self.limit {
            let mut cut = buffer.len() - self.limit;
            // Keep the text valid UTF-8: drop continuation bytes at the new start.
            while cut < buffer.len() && (buffer[cut] & 0b1100_0000) == 0b1000_0000 {
                cut += 1;
            }
            buffer.drain(..cut);
            *truncated = true;
        }
    }
}

/// The terminals of one agent session.
#[derive(Debug)]
pub struct Terminals {
    root: WorkspaceRoot,
    next_id: AtomicU64,
    map: Mutex<HashMap<String, Arc<Terminal>>>,
}

impl Terminals {
    /// No terminals yet, for the workspace at `root`.
    #[must_use]
    pub fn new(root: WorkspaceRoot) -> Self {
        Self {
            root,
            next_id: AtomicU64::new(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Terminal>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, id: &str) -> Result<Arc<Terminal>, String> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| format!("unknown terminal {id}"))
    }

    /// Starts a command; returns the terminal id.
    ///
    /// # Errors
    /// The working directory is outside the workspace or the command cannot start.
    pub fn create(&self, request: &CreateTerminalRequest) -> Result<String, String> {
        let cwd = match &request.cwd {
            Some(cwd) => self.root.resolve_read(cwd).map_err(|e| e.to_string())?,
            None => self.root.path().to_path_buf(),
        };
        let mut cmd = if request.args.is_empty() && request.command.contains(char::is_whitespace) {
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(&request.command);
            sh
        } else {
            let mut direct = Command::new(&request.command);
            direct.args(&request.args);
            direct
        };
        cmd.current_dir(&cwd)
            .env_remove("CALLBACK_TOKEN")
            .envs(
                request
                    .env
                    .iter()
                    .map(|v| (v.name.clone(), v.value.clone())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", request.command))?;
        let limit = usize::try_from(request.output_byte_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT))
            .unwrap_or(usize::MAX)
            .max(1);
        let (exit_tx, exit_rx) = watch::channel(None);
        let terminal = Arc::new(Terminal {
            output: Mutex::new((Vec::new(), false)),
            limit,
            exit: exit_rx,
            pid: child.id(),
        });
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(pump(out, terminal.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(pump(err, terminal.clone())));
        }
        tokio::spawn(async move {
            let status = child.wait().await;
            for reader in readers {
                let _ = reader.await;
            }
            let exit = match status {
                Ok(status) => exit_status(status),
                Err(e) => TerminalExitStatus::new().signal(format!("wait failed: {e}")),
            };
            let _ = exit_tx.send(Some(exit));
        });
        let id = format!("term-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        self.lock().insert(id.clone(), terminal);
        Ok(id)
    }

    /// The output so far, whether it was truncated, and the exit status once exited.
    ///
    /// # Errors
    /// Unknown terminal.
    pub fn output(&self, id: &str) -> Result<(String, bool, Option<TerminalExitStatus>), String> {
        let terminal = self.get(id)?;
        let exit = terminal.exit.borrow().clone();
        let guard = terminal
            .output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok((
            String::from_utf8_lossy(&guard.0).into_owned(),
            guard.1,
            exit,
        ))
    }

    /// Waits for the command to exit.
    ///
    /// # Errors
    /// Unknown terminal.
    pub async fn wait(&self, id: &str) -> Result<TerminalExitStatus, String> {
        let mut exit = self.get(id)?.exit.clone();
        let status = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "terminal lost".to_owned())?
            .clone();
        Ok(status.unwrap_or_default())
    }

    /// Kills the command (the terminal stays readable).
    ///
    /// # Errors
    /// Unknown terminal.
    pub async fn kill(&self, id: &str) -> Result<(), String> {
        let terminal = self.get(id)?;
        if terminal.exit.borrow().is_none()
            && let Some(pid) = terminal.pid
        {
            signal_group(pid, "KILL").await;
        }
        Ok(())
    }

    /// Kills the command if it still runs and forgets the terminal.
    ///
    /// # Errors
    /// Unknown terminal.
    pub async fn release(&self, id: &str) -> Result<(), String> {
        self.kill(id).await?;
        self.lock().remove(id);
        Ok(())
    }

    /// Kills every terminal (the agent host is stopping).
    pub async fn kill_all(&self) {
        let all: Vec<Arc<Terminal>> = self.lock().drain().map(|(_, t)| t).collect();
        for terminal in all {
            if terminal.exit.borrow().is_none()
                && let Some(pid) = terminal.pid
            {
                signal_group(pid, "KILL").await;
            }
        }
    }

    /// The workspace root.
    #[must_use]
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

async fn pump(mut reader: impl tokio::io::AsyncRead + Unpin, terminal: Arc<Terminal>) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => terminal.append(&buf[..n]),
        }
    }
}

fn exit_status(status: std::process::ExitStatus) -> TerminalExitStatus {
    let mut exit = TerminalExitStatus::new();
    if let Some(code) = status.code() {
        exit = exit.exit_code(u32::try_from(code).unwrap_or(u32::MAX));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            exit = exit.signal(format!("signal {signal}"));
        }
    }
    exit
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use agent_client_protocol::v1::schema::CreateTerminalRequest;

    use super::*;

    #[tokio::test]
    async fn terminals_run_in_the_workspace_capture_output_and_refuse_outside_cwds() {
        let dir = tempfile::tempdir().unwrap();
        let terminals = Terminals::new(WorkspaceRoot::new(dir.path()).unwrap());
        let id = terminals
            .create(&CreateTerminalRequest::new(
                "s",
                "pwd; echo out; echo err >&2; exit 4",
            ))
            .unwrap();
        let exit = terminals.wait(&id).await.unwrap();
        assert_eq!(exit.exit_code, Some(4));
        let (output, truncated, status) = terminals.output(&id).unwrap();
        assert!(
            output.contains(&terminals.root().display().to_string()),
            "{output}"
        );
        assert!(output.contains("out") && output.contains("err"), "{output}");
        assert!(!truncated && status.is_some());

        // Output is cut from the front to the byte limit.
        let mut small = CreateTerminalRequest::new("s", "printf");
        small.args = vec!["0123456789".into()];
        small.output_byte_limit = Some(4);
        let id = terminals.create(&small).unwrap();
        terminals.wait(&id).await.unwrap();
        assert_eq!(terminals.output(&id).unwrap().0, "6789");
        assert!(terminals.output(&id).unwrap().1);

        // A long command is killed; released terminals are gone.
        let id = terminals
            .create(&CreateTerminalRequest::new("s", "sleep 30"))
            .unwrap();
        terminals.kill(&id).await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), terminals.wait(&id))
            .await
            .unwrap()
            .unwrap();
        assert!(exit.signal.is_some(), "{exit:?}");
        terminals.release(&id).await.unwrap();
        assert!(terminals.output(&id).is_err());

        let mut outside = CreateTerminalRequest::new("s", "ls");
        outside.cwd = Some("/".into());
        assert!(terminals.create(&outside).is_err());
    }
}
