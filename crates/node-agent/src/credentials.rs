//! Git credentials for private repositories: the project's git token reaches git only
//! through a credential helper that `kiln-node` serves, for the one git command that needs
//! it.
//!
//! ## How
//!
//! For each `git clone` and `git push` of a workspace whose project has a token,
//! [`CredentialServer::start`] binds a unix socket with a random name in
//! `{KILN_NODE_DATA_DIR}/run/` (directory mode 0700, socket mode 0600; when that path is too
//! long for a unix socket, a fresh mode-0700 directory in the system's temporary directory,
//! removed afterwards) and makes a random one-time nonce. The git command runs as
//!
//! ```text
//! git -c credential.helper= -c "credential.helper=!'/path/to/kiln-node' git-credential" clone …
//! ```
//!
//! with `KILN_GIT_CREDENTIAL_SOCKET` and `KILN_GIT_CREDENTIAL_NONCE` in *its* environment
//! only. The empty `credential.helper=` first clears helpers from the user's or system's git
//! configuration, so no `store` or `cache` helper is ever handed the token to keep. When the
//! remote asks for credentials, git runs `kiln-node git-credential get`
//! ([`run_helper`]), which passes the nonce and git's request to the socket; `kiln-node`
//! answers with the token only when the nonce is right and the request's protocol and host are
//! those of the workspace's repository URL (so a redirect or submodule on another host gets
//! nothing). When the git command ends, the socket is closed and removed.
//!
//! ## Threat model
//!
//! * **Persistent traces**: the token is never written to disk (not `.git/config`: `-c`
//!   before the subcommand is not persisted, even by `clone`; not the remote URL; not the
//!   workspace record, which says only *that* the create command carried one), never on a
//!   command line (visible in `ps`), never logged ([`kiln_core::secret::Secret`] redacts
//!   itself in `Debug`; git's output is redacted before it becomes an error), never in a
//!   chat message, delta or event ([`crate::redact`]).
//! * **Restarts**: a restarted `kiln-node` has lost every token with its memory. A workspace
//!   it finds on disk whose record says there was one asks the control plane again, before
//!   its agent starts (so the agent's words are redacted of it) and before it pushes:
//!   `GET /api/nodes/{nodeId}/workspaces/{workspaceId}/git-token`
//!   ([`crate::control::ControlPlaneClient::git_token`]), authenticated with the node's own
//!   token, answered only for a live workspace on that node, with `Cache-Control: no-store`.
//!   The answer stays in memory as before. When it cannot be had (the project's token was
//!   deleted, the control plane stays unreachable), the push is not attempted and the task
//!   fails saying why. This widens nothing: the node's token (`CALLBACK_TOKEN`, in its
//!   environment, never in an agent's) already receives the git tokens of its workspaces in
//!   the command poll; the endpoint answers it for that node's live workspaces only.
//! * **The agent** runs as the same OS user as `kiln-node` in a disposable checkout. It is not
//!   given the token: not in its environment, not in the checkout's configuration, so its own
//!   `git push` gets no credentials. While a clone or push runs, a process of the same user
//!   could read the nonce from git's `/proc/<pid>/environ` and ask the socket itself; the
//!   window is the length of that git command. A same-user process could as well read
//!   `kiln-node`'s memory, so Kiln does not claim to hide the token from a hostile agent; it
//!   keeps the token out of everything that persists or is shown, and out of the agent's
//!   ordinary reach. Whatever an agent echoes of it is redacted before it is stored.
//! * **Other users** of the machine cannot reach the socket (mode 0600 in a 0700
//!   directory) nor read git's environment.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_core::secret::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::process::Command;

use crate::error::{NodeError, Result};

/// The `kiln-node` subcommand git runs as its credential helper.
pub const HELPER_SUBCOMMAND: &str = "git-credential";
/// The variable that tells the helper where the socket is.
pub const SOCKET_ENV: &str = "KILN_GIT_CREDENTIAL_SOCKET";
/// The variable that carries the one-time nonce to the helper.
pub const NONCE_ENV: &str = "KILN_GIT_CREDENTIAL_NONCE";
/// The username sent with the token when the repository URL names none (GitHub and Gitea
/// accept any username with a token; put another one in the URL, e.g.
/// `https://oauth2@gitlab.example.com/…`, when a host wants a specific one).
pub const DEFAULT_USERNAME: &str = "x-access-token";
/// The most a helper may send (nonce and git's request).
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// The longest socket path used (`sun_path` holds 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 100;

/// A repository's token and the helper program that serves it.
#[derive(Debug, Clone)]
pub struct GitCredential {
    /// The repository URL the token is for.
    pub repository_url: String,
    /// The token.
    pub token: Secret,
    /// The `kiln-node` executable git runs as the helper.
    pub helper: PathBuf,
    /// Where the socket goes (created with mode 0700).
    pub runtime_dir: PathBuf,
}

/// The scheme, `host[:port]` and username of an `http(s)://` URL; `None` for other URLs
/// (local paths, ssh), which never ask for a token.
///
/// ```
/// use kiln_node::credentials::http_origin;
/// assert_eq!(
///     http_origin("https://oauth2@git.example.com:8443/team/app.git"),
///     Some(("https".into(), "git.example.com:8443".into(), Some("oauth2".into())))
/// );
/// assert_eq!(http_origin("/srv/repo.git"), None);
/// ```
#[must_use]
pub fn http_origin(url: &str) -> Option<(String, String, Option<String>)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, authority),
    };
    let username = userinfo
        .map(|u| u.split(':').next().unwrap_or(""))
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    Some((scheme, host.to_ascii_lowercase(), username))
}

/// `url` without any user information (what error messages show).
///
/// ```
/// use kiln_node::credentials::display_url;
/// assert_eq!(display_url("https://me:pw@example.com/a.git"), "https://example.com/a.git");
/// assert_eq!(display_url("/srv/a.git"), "/srv/a.git");
/// ```
#[must_use]
pub fn display_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{}", &rest[end..])
}

/// Quotes `text` for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Serves one repository's token to the credential helper of one git command, for as long
/// as it lives (see the module docs).
#[derive(Debug)]
pub struct CredentialServer {
    socket: PathBuf,
    /// A directory made for this socket alone (removed with it).
    own_dir: Option<PathBuf>,
    nonce: Secret,
    helper: PathBuf,
    task: tokio::task::JoinHandle<()>,
    served: Arc<AtomicU64>,
}

impl CredentialServer {
    /// Binds a fresh socket in the credential's runtime directory (created with mode 0700).
    ///
    /// # Errors
    /// [`NodeError::Io`] when the directory or the socket cannot be made.
    pub fn start(credential: &GitCredential) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let name = format!(
            "git-{}.sock",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let runtime_dir = &credential.runtime_dir;
        let (dir, own_dir) = if runtime_dir.join(&name).as_os_str().len() <= MAX_SOCKET_PATH {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(runtime_dir)
                .map_err(|e| NodeError::io("creating the credential socket directory", e))?;
            std::fs::set_permissions(runtime_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| NodeError::io("restricting the credential socket directory", e))?;
            (runtime_dir.clone(), None)
        } else {
            let dir = fresh_private_dir()?;
            (dir.clone(), Some(dir))
        };
        let socket = dir.join(name);
        let listener = match UnixListener::bind(&socket) {
            Ok(listener) => listener,
            Err(e) => {
                if let Some(dir) = &own_dir {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(NodeError::io("binding the credential socket", e));
            }
        };
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| NodeError::io("restricting the credential socket", e))?;
        let nonce = Secret::new(format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ));
        let served = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(
            listener,
            nonce.clone(),
            credential.clone(),
            served.clone(),
        ));
        Ok(Self {
            socket,
            own_dir,
            nonce,
            helper: credential.helper.clone(),
            task,
            served,
        })
    }

    /// The `-c` options that must come before git's subcommand.
    #[must_use]
    pub fn config_args(&self) -> Vec<String> {
        vec![
            "-c".into(),
            "credential.helper=".into(),
            "-c".into(),
            format!(
                "credential.helper=!{} {HELPER_SUBCOMMAND}",
                shell_quote(&self.helper.display().to_string())
            ),
        ]
    }

    /// Puts the socket and the nonce in `cmd`'s environment (and keeps out variables that
    /// would make git trace its traffic or ask another program).
    pub fn apply_env(&self, cmd: &mut Command) {
        cmd.env(SOCKET_ENV, &self.socket)
            .env(NONCE_ENV, self.nonce.expose());
        for var in [
            "GIT_ASKPASS",
            "SSH_ASKPASS",
            "GIT_TRACE",
            "GIT_TRACE_CURL",
            "GIT_TRACE_PACKET",
            "GIT_CURL_VERBOSE",
        ] {
            cmd.env_remove(var);
        }
    }

    /// How many times the token was handed out.
    #[must_use]
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for CredentialServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
        if let Some(dir) = &self.own_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A new directory with mode 0700 in the system's temporary directory (a name that exists,
/// perhaps made by someone else, is never reused).
fn fresh_private_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut last = None;
    for _ in 0..8 {
        let dir = std::env::temp_dir().join(format!(
            "kiln-git-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(NodeError::io("creating a credential socket directory", e)),
        }
    }
    Err(NodeError::io(
        "creating a credential socket directory",
        last.unwrap_or_else(|| std::io::Error::other("no free name")),
    ))
}

async fn serve(
    listener: UnixListener,
    nonce: Secret,
    credential: GitCredential,
    served: Arc<AtomicU64>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut request = Vec::new();
        let read = (&mut stream)
            .take(MAX_REQUEST_BYTES as u64)
            .read_to_end(&mut request)
            .await;
        if read.is_err() {
            continue;
        }
        let request = String::from_utf8_lossy(&request);
        match answer(&request, &nonce, &credential) {
            Ok(reply) => {
                if stream.write_all(reply.as_bytes()).await.is_ok() {
                    served.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(url = %display_url(&credential.repository_url), "git credential served");
                }
            }
            Err(reason) => {
                tracing::warn!(url = %display_url(&credential.repository_url), reason, "git credential request refused");
            }
        }
        let _ = stream.shutdown().await;
    }
}

/// The helper's answer to `request` (the nonce on the first line, then git's
/// `key=value` lines), or why there is none.
fn answer(
    request: &str,
    nonce: &Secret,
    credential: &GitCredential,
) -> std::result::Result<String, &'static str> {
    let mut lines = request.lines();
    let given = lines.next().unwrap_or("");
    if !constant_time_eq(given.as_bytes(), nonce.expose().as_bytes()) {
        return Err("wrong nonce");
    }
    let (mut protocol, mut host) = (None, None);
    for line in lines {
        match line.split_once('=') {
            Some(("protocol", v)) => protocol = Some(v.to_ascii_lowercase()),
            Some(("host", v)) => host = Some(v.to_ascii_lowercase()),
            _ => {}
        }
    }
    let Some((scheme, repo_host, username)) = http_origin(&credential.repository_url) else {
        return Err("the repository URL is not http(s)");
    };
    if protocol.as_deref() != Some(scheme.as_str()) || host.as_deref() != Some(repo_host.as_str()) {
        return Err("asked for another host than the repository's");
    }
    let username = username.unwrap_or_else(|| DEFAULT_USERNAME.to_owned());
    Ok(format!(
        "username={username}\npassword={}\n\n",
        credential.token.expose()
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `kiln-node git-credential <action>`: the helper side, run by git. For `get` it reads
/// git's request from `input`, asks the socket named by [`SOCKET_ENV`] with the nonce from
/// [`NONCE_ENV`] and writes the answer to `output`; other actions (`store`, `erase`) do
/// nothing. Returns the process exit code.
pub fn run_helper(
    action: Option<&str>,
    input: &mut impl std::io::Read,
    output: &mut impl std::io::Write,
) -> u8 {
    use std::io::{Read as _, Write as _};
    let mut request = String::new();
    if input
        .take(MAX_REQUEST_BYTES as u64)
        .read_to_string(&mut request)
        .is_err()
    {
        return 1;
    }
    if action != Some("get") {
        return 0;
    }
    let (Ok(socket), Ok(nonce)) = (std::env::var(SOCKET_ENV), std::env::var(NONCE_ENV)) else {
        eprintln!("kiln-node git-credential: not run by kiln-node (no {SOCKET_ENV})");
        return 1;
    };
    let result = (|| -> std::io::Result<Vec<u8>> {
        let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
        stream.write_all(format!("{nonce}\n{request}").as_bytes())?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        Ok(reply)
    })();
    match result {
        Ok(reply) => {
            if output.write_all(&reply).is_err() {
                return 1;
            }
            0
        }
        Err(e) => {
            eprintln!("kiln-node git-credential: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(url: &str) -> GitCredential {
        GitCredential {
            repository_url: url.into(),
            token: Secret::new("tok-1234567890"),
            helper: PathBuf::from("/opt/kiln node/kiln-node"),
            runtime_dir: std::env::temp_dir().join(format!("kiln-cred-{}", uuid::Uuid::new_v4())),
        }
    }

    #[test]
    fn the_token_goes_only_with_the_nonce_and_to_the_repository_host() {
        let nonce = Secret::new("n0nce");
        let c = credential("https://git.example.com/team/app.git");
        let ok = "n0nce\nprotocol=https\nhost=git.example.com\npath=team/app.git\n";
        assert_eq!(
            answer(ok, &nonce, &c).unwrap(),
            "username=x-access-token\npassword=tok-1234567890\n\n"
        );
        assert!(answer(&ok.replace("n0nce", "guess"), &nonce, &c).is_err());
        assert!(answer(&ok.replace("git.example.com", "evil.example"), &nonce, &c).is_err());
        assert!(answer(&ok.replace("https", "http"), &nonce, &c).is_err());
        let named = credential("https://oauth2@git.example.com/team/app.git");
        assert!(
            answer(ok, &nonce, &named)
                .unwrap()
                .starts_with("username=oauth2\n")
        );
        assert!(answer(ok, &nonce, &credential("/srv/app.git")).is_err());
    }

    #[test]
    fn the_helper_path_is_quoted_and_sockets_fit_their_path_limit_and_go_away() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let c = credential("x");
        let server = CredentialServer::start(&c).unwrap();
        assert_eq!(
            server.config_args()[3],
            "credential.helper=!'/opt/kiln node/kiln-node' git-credential"
        );
        let socket = server.socket.clone();
        assert!(socket.exists());
        assert!(socket.starts_with(&c.runtime_dir));
        drop(server);
        assert!(!socket.exists(), "the socket is removed with the server");
        std::fs::remove_dir_all(&c.runtime_dir).unwrap();

        // A data directory too deep for a unix socket path: a private directory elsewhere.
        let deep = credential("x");
        let deep = GitCredential {
            runtime_dir: deep.runtime_dir.join("d".repeat(120)),
            ..deep
        };
        let server = CredentialServer::start(&deep).unwrap();
        let socket = server.socket.clone();
        assert!(
            socket.as_os_str().len() <= MAX_SOCKET_PATH,
            "{}",
            socket.display()
        );
        let dir = socket.parent().unwrap().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        drop(server);
        assert!(!dir.exists(), "its own directory goes with it");
    }
}
