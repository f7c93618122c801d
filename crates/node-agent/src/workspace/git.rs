//! The git operations a workspace needs, run with the `git` command line (so every URL and
//! credential helper git supports works). Hooks are disabled for Kiln's own commits.
//!
//! Clone and push take the project's [`GitCredential`], if it has one: it is served to git by
//! `kiln-node`'s credential helper for the length of that one command
//! ([`crate::credentials`]). A remote that refuses the credentials (or asks for some when
//! there are none) is [`NodeError::GitAuth`], naming the URL without user information.

use std::path::Path;

use tokio::process::Command;

use crate::credentials::{CredentialServer, GitCredential, display_url};
use crate::error::{NodeError, Result, shorten};
use crate::redact::Redactor;

/// The author of the commits Kiln makes for an agent.
pub const AGENT_NAME: &str = "Kiln Agent";
/// The author e-mail of those commits.
pub const AGENT_EMAIL: &str = "agent@kiln.invalid";

fn git(dir: Option<&Path>) -> Command {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", AGENT_NAME)
        .env("GIT_AUTHOR_EMAIL", AGENT_EMAIL)
        .env("GIT_COMMITTER_NAME", AGENT_NAME)
        .env("GIT_COMMITTER_EMAIL", AGENT_EMAIL)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command, what: &str) -> Result<String> {
    let output = cmd
        .output()
        .await
        .map_err(|e| NodeError::io(format!("running git {what}"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NodeError::Git {
            command: what.to_owned(),
            message: shorten(&String::from_utf8_lossy(&output.stderr), 600),
        })
    }
}

/// A git command that talks to the remote at `url`: with `credential`, its helper is served
/// while the command runs; an authentication refusal becomes [`NodeError::GitAuth`], and
/// git's output never carries the token on.
async fn run_remote(
    dir: Option<&Path>,
    args: &[&str],
    what: &str,
    url: &str,
    credential: Option<&GitCredential>,
) -> Result<String> {
    let server = credential.map(CredentialServer::start).transpose()?;
    let mut cmd = git(dir);
    if let Some(server) = &server {
        cmd.args(server.config_args());
        server.apply_env(&mut cmd);
    }
    cmd.args(args);
    let result = run(cmd, what).await;
    drop(server);
    result.map_err(|e| match e {
        NodeError::Git { command, message } if is_auth_failure(&message) => NodeError::GitAuth {
            command,
            url: display_url(url),
        },
        NodeError::Git { command, message } => NodeError::Git {
            command,
            message: Redactor::new(credential.map(|c| c.token.expose())).redact(&message),
        },
        other => other,
    })
}

/// Whether git's message says the remote refused (or wanted) credentials.
fn is_auth_failure(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "access denied",
        "returned error: 401",
        "returned error: 403",
        "permission denied (publickey",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// Clones `url` (a local path or any URL git accepts) into `dest`, or initializes an empty
/// repository there when `url` is empty.
///
/// # Errors
/// [`NodeError::GitAuth`] when the remote refuses the credentials, else [`NodeError::Git`]
/// with git's message.
pub async fn clone_or_init(
    url: &str,
    dest: &Path,
    credential: Option<&GitCredential>,
) -> Result<()> {
    if url.trim().is_empty() {
        let mut cmd = git(None);
        cmd.arg("init").arg("--quiet").arg(dest);
        run(cmd, "init").await?;
        return Ok(());
    }
    let dest = dest.to_string_lossy();
    run_remote(
        None,
        &["clone", "--quiet", "--no-hardlinks", "--", url, &dest],
        "clone",
        url,
        credential,
    )
    .await
    .map(drop)
}

/// Whether `branch` exists locally or at the remote `origin` (as fetched).
async fn branch_exists(repo: &Path, branch: &str) -> Result<bool> {
    for reference in [
        format!("refs/heads/{branch}"),
        format!("refs/remotes/origin/{branch}"),
    ] {
        let mut cmd = git(Some(repo));
        cmd.args(["show-ref", "--verify", "--quiet", &reference]);
        let status = cmd
            .status()
            .await
            .map_err(|e| NodeError::io("running git show-ref", e))?;
        if status.success() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Creates and checks out `base`, or `base-2`, `base-3`… when that branch already exists
/// locally or at the remote. Returns the name used.
///
/// # Errors
/// [`NodeError::Git`] with git's message.
pub async fn create_task_branch(repo: &Path, base: &str) -> Result<String> {
    let mut name = base.to_owned();
    let mut n = 1;
    while branch_exists(repo, &name).await? {
        n += 1;
        name = format!("{base}-{n}");
    }
    let mut cmd = git(Some(repo));
    cmd.args(["checkout", "--quiet", "-b", &name]);
    run(cmd, "checkout").await?;
    Ok(name)
}

/// Stages everything and commits it as [`AGENT_NAME`]. Returns `false` when there was
/// nothing to commit.
///
/// # Errors
/// [`NodeError::Git`] with git's message.
pub async fn commit_all(repo: &Path, message: &str) -> Result<bool> {
    let mut add = git(Some(repo));
    add.args(["add", "-A"]);
    run(add, "add").await?;
    let mut status = git(Some(repo));
    status.args(["status", "--porcelain"]);
    if run(status, "status").await?.trim().is_empty() {
        return Ok(false);
    }
    let mut commit = git(Some(repo));
    commit
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(["commit", "--quiet", "--no-verify", "-m", message]);
    run(commit, "commit").await?;
    Ok(true)
}

/// Whether the repository has a remote called `origin`.
///
/// # Errors
/// [`NodeError::Io`] when git cannot run.
pub async fn has_origin(repo: &Path) -> Result<bool> {
    let mut cmd = git(Some(repo));
    cmd.args(["remote"]);
    Ok(run(cmd, "remote")
        .await?
        .lines()
        .any(|l| l.trim() == "origin"))
}

/// Pushes `branch` to `origin` (at `url`) and sets it as upstream.
///
/// # Errors
/// [`NodeError::GitAuth`] when the remote refuses the credentials, else [`NodeError::Git`]
/// with git's message.
pub async fn push(
    repo: &Path,
    url: &str,
    branch: &str,
    credential: Option<&GitCredential>,
) -> Result<()> {
    let refspec = format!("{branch}:refs/heads/{branch}");
    run_remote(
        Some(repo),
        &[
            "-c",
            "core.hooksPath=/dev/null",
            "push",
            "--quiet",
            "--no-verify",
            "-u",
            "origin",
            &refspec,
        ],
        "push",
        url,
        credential,
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A completion a restart interrupted is carried out again (the workspace's `complete`):
    /// committing with nothing new and pushing what the remote already has must not fail.
    #[tokio::test]
    async fn committing_and_pushing_again_work_already_committed_and_pushed_succeeds() {
        let root = tempfile::tempdir().unwrap();
        let bare = root.path().join("origin.git");
        let mut init = git(None);
        init.args(["init", "--quiet", "--bare"]).arg(&bare);
        run(init, "init").await.unwrap();
        let url = bare.display().to_string();
        let checkout = root.path().join("checkout");
        clone_or_init(&url, &checkout, None).await.unwrap();
        let branch = create_task_branch(&checkout, "task/t").await.unwrap();
        std::fs::write(checkout.join("work.txt"), "done\n").unwrap();

        assert!(commit_all(&checkout, "kiln: work").await.unwrap());
        push(&checkout, &url, &branch, None).await.unwrap();
        assert!(
            !commit_all(&checkout, "kiln: work").await.unwrap(),
            "nothing new: no second commit"
        );
        push(&checkout, &url, &branch, None).await.unwrap();

        let mut head = git(Some(&checkout));
        head.args(["rev-parse", "HEAD"]);
        let mut pushed = git(Some(&bare));
        pushed.args(["rev-parse", "refs/heads/task/t"]);
        assert_eq!(
            run(pushed, "rev-parse").await.unwrap(),
            run(head, "rev-parse").await.unwrap()
        );
        let mut count = git(Some(&bare));
        count.args(["rev-list", "--count", "refs/heads/task/t"]);
        assert_eq!(run(count, "rev-list").await.unwrap().trim(), "1");
    }
}
