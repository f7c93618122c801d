//! Wiring a server from its [`Config`]: the store, the secret key, the pool, the runner and
//! their background loops, the first-run login link, and graceful shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kiln_core::{LifecycleClock, NodeProvider, Store, SystemClock};
use kiln_pool::{TaskRunner, WarmPool};
use rand::RngCore;
use tokio::sync::watch;

use crate::commands::CommandQueues;
use crate::config::Config;
use crate::credentials::{Credentials, HETZNER, HetznerFleet};
use crate::live::LiveHub;
use crate::runner::{NodeController, PoolDriver, TokenBootstrap};
use crate::state::{AppState, Settings};
use crate::tokens::TokenSigner;

/// The name of the account created on first start.
pub const ADMIN_USER: &str = "admin";

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file in the data directory.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The database.
    #[error("database: {0}")]
    Store(#[from] kiln_core::StoreError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StartError + 'a {
    move |source| StartError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Opens the configured store: SQLite (the default, a file in the data directory) or
/// PostgreSQL for `postgres://` URLs. Migrations are applied on connect.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    if config.is_postgres() {
        Ok(Arc::new(
            kiln_backends::PostgresStore::connect(&config.database_url).await?,
        ))
    } else {
        std::fs::create_dir_all(&config.data_dir).map_err(io("creating", &config.data_dir))?;
        Ok(Arc::new(
            kiln_backends::SqliteStore::connect(&config.database_url).await?,
        ))
    }
}

/// The token signing key: the configured one, else `<data dir>/secret.key`, generated
/// (32 random bytes, base64url, mode 0600) on first start.
pub fn load_secret_key(config: &Config) -> Result<Vec<u8>, StartError> {
    if let Some(key) = &config.secret_key {
        if key.len() < 16 {
            return Err(StartError::Other(
                "KILN_SECRET_KEY must be at least 16 characters".into(),
            ));
        }
        return Ok(key.as_bytes().to_vec());
    }
    let path = config.data_dir.join("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => return Ok(key.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", &path)(e)),
    }
    std::fs::create_dir_all(&config.data_dir).map_err(io("creating", &config.data_dir))?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = URL_SAFE_NO_PAD.encode(bytes);
    write_private(&path, &key).map_err(io("writing", &path))?;
    tracing::info!(path = %path.display(), "generated a new secret key");
    Ok(key.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// The local node provider (`kiln-node` processes on this machine). A server always has it,
/// so nodes it made keep being expired and destroyed even when `local` is no longer offered
/// to projects; [`assemble`] adds the Hetzner provider when the configuration enables it.
pub fn provider(config: &Config) -> Result<Arc<dyn NodeProvider>, StartError> {
    let mut local = kiln_backends::local::LocalConfig::from_env();
    if std::env::var_os("KILN_LOCAL_NODES_DIR").is_none() {
        local.base_dir = config.data_dir.join("nodes");
    }
    Ok(Arc::new(kiln_backends::local::LocalProvider::new(local)))
}

/// The vault stored credentials are sealed with: `KILN_VAULT_KEY`, else the key file
/// (`<data dir>/vault.key` unless `KILN_VAULT_KEY_FILE` says otherwise), generated with
/// mode 0600 on first start.
pub fn load_vault(config: &Config) -> Result<kiln_backends::vault::Vault, StartError> {
    kiln_backends::vault::Vault::from_settings(&config.vault)
        .map_err(|e| StartError::Other(format!("vault: {e}")))
}

/// A running server's parts, for embedding and tests.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The handlers' state.
    pub state: AppState,
    /// The task runner.
    pub runner: TaskRunner,
    /// The pool.
    pub pool: Arc<WarmPool>,
}

/// Builds the state, pool and runner over `store` and `provider`, and starts relaying node
/// commands from the change feed. `public_url` is what nodes are told to call.
///
/// `provider` serves the projects whose provider is `local` (tests pass a memory provider);
/// when the configuration enables `hetzner`, a [`HetznerFleet`] serves those projects with
/// each owner's stored token. The first configured provider is the default of new projects.
pub async fn assemble(
    config: &Config,
    store: Arc<dyn Store>,
    provider: Arc<dyn NodeProvider>,
    secret_key: Vec<u8>,
    public_url: &str,
) -> Result<Parts, StartError> {
    let clock: Arc<dyn LifecycleClock> = Arc::new(SystemClock);
    let signer = TokenSigner::new(secret_key);
    let commands = Arc::new(CommandQueues::new());
    crate::commands::spawn_relay(store.clone(), commands.clone()).await?;
    let mut env = BTreeMap::new();
    if let Some(agent) = &config.agent_command {
        env.insert("KILN_AGENT_COMMAND".to_owned(), agent.clone());
    }
    let bootstrap = TokenBootstrap {
        control_plane_url: public_url.to_owned(),
        signer: signer.clone(),
        clock: clock.clone(),
        token_ttl: config.callback_token_ttl,
        env,
    };
    let credentials = Arc::new(
        Credentials::new(load_vault(config)?, config.hetzner.clone(), clock.clone())
            .map_err(|e| StartError::Other(format!("Hetzner client: {e}")))?,
    );
    let fleet: Arc<dyn NodeProvider> =
        Arc::new(HetznerFleet::new(store.clone(), credentials.clone()));
    let by_name = |name: &str| -> Arc<dyn NodeProvider> {
        if name == HETZNER {
            fleet.clone()
        } else {
            provider.clone()
        }
    };
    let default = by_name(config.providers.first().map_or("local", String::as_str));
    // Both are always known to the pool, so nodes made under an earlier configuration keep
    // being expired and deleted; projects may choose only the enabled ones.
    let pool = WarmPool::new(store.clone(), default, clock.clone(), config.pool.clone())
        .with_bootstrap(Arc::new(bootstrap))
        .with_provider(provider.clone())
        .with_provider(fleet.clone());
    let providers = config
        .providers
        .iter()
        .map(|p| by_name(p).name().to_owned())
        .collect();
    let pool = Arc::new(pool);
    let controller = NodeController::new(
        store.clone(),
        commands.clone(),
        signer.clone(),
        clock.clone(),
        config.callback_token_ttl,
    );
    let runner = TaskRunner::new(pool.clone(), Arc::new(controller));
    let live = Arc::new(LiveHub::default());
    if config.is_postgres() {
        // Replicas share the database: live text reaches the viewers of every replica.
        crate::live::spawn_relay(store.clone(), live.clone()).await?;
    }
    let state = AppState {
        store,
        clock,
        signer,
        commands,
        live,
        driver: Arc::new(PoolDriver::new(runner.clone())),
        settings: Arc::new(Settings {
            public_url: public_url.to_owned(),
            session_ttl: config.session_ttl,
            callback_token_ttl: config.callback_token_ttl,
            secure_cookies: public_url.starts_with("https://"),
            providers,
            node_binary: config.node_binary.clone(),
        }),
        credentials,
    };
    Ok(Parts {
        state,
        runner,
        pool,
    })
}

/// Makes sure the first user exists and returns a one-time login link for it (valid one hour).
pub async fn login_link(state: &AppState, user: &str) -> Result<String, crate::ApiError> {
    let user = crate::auth::ensure_user(state, user).await?;
    let expires =
        kiln_core::clock::add_duration(state.clock.now(), std::time::Duration::from_secs(3600));
    let (_, secret) =
        crate::auth::issue_token(state, user.id, crate::auth::LOGIN_TOKEN_NAME, Some(expires))
            .await?;
    Ok(format!(
        "{}/login?token={secret}",
        state.settings.public_url
    ))
}

/// Serves `config` with `provider` until `shutdown` completes, then stops taking work,
/// lets in-flight requests finish (up to the configured grace) and stops the loops.
pub async fn serve(
    config: Config,
    provider: Arc<dyn NodeProvider>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let store = open_store(&config).await?;
    let key = load_secret_key(&config)?;
    if config.is_postgres() && config.secret_key.is_none() {
        tracing::warn!(
            "PostgreSQL without KILN_SECRET_KEY: this replica signs callback tokens with its own \
             generated key; replicas sharing the database must share KILN_SECRET_KEY"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Other(format!("cannot listen on {}: {e}", config.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::Other(e.to_string()))?;
    // With port 0 the default public URL names the port actually bound.
    let public_url = if config.public_url == format!("http://{}", config.listen) {
        format!("http://{bound}")
    } else {
        config.public_url.clone()
    };
    let parts = assemble(&config, store, provider, key, &public_url).await?;
    tracing::info!(listen = %bound, %public_url, database = %redact(&config.database_url), "kiln is serving");
    println!("Kiln is listening on {public_url}");
    if config.login_link {
        match login_link(&parts.state, ADMIN_USER).await {
            Ok(link) => println!("Sign in as {ADMIN_USER}: {link}"),
            Err(e) => tracing::warn!(error = %e, "could not make a login link"),
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let pool_loop = tokio::spawn({
        let pool = parts.pool.clone();
        let stop = stopped(stop_rx.clone());
        async move { pool.run_until(stop).await }
    });
    let runner_loop = tokio::spawn({
        let runner = parts.runner.clone();
        let stop = stopped(stop_rx.clone());
        async move { runner.run_until(stop).await }
    });
    let app = crate::app(parts.state.clone());
    let grace = config.shutdown_grace;
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let stop_tx = stop_tx.clone();
        let commands = parts.state.commands.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; finishing in-flight ones");
            // Long polls end now instead of holding the shutdown for their full wait.
            commands.close();
            let _ = stop_tx.send(true);
        }
    });
    let server = tokio::spawn(async move { server.await });
    // After the shutdown signal, in-flight requests get `grace` to finish.
    let mut rx = stop_rx.clone();
    let result = tokio::select! {
        r = server => r.map_err(|e| StartError::Other(e.to_string()))?.map_err(|e| StartError::Other(e.to_string())),
        () = async {
            let _ = rx.wait_for(|v| *v).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("in-flight requests did not finish within the shutdown grace");
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(grace, async {
        let _ = pool_loop.await;
        let _ = runner_loop.await;
    })
    .await;
    tracing::info!("stopped");
    result
}

/// A database URL without its password, for logs.
#[must_use]
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    #[test]
    fn the_vault_key_is_generated_into_the_data_dir_once_with_mode_0600_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = Config {
            vault: kiln_backends::vault::VaultSettings::new(&data),
            ..Config::resolve(crate::ServeArgs {
                data_dir: Some(data.clone()),
                ..Default::default()
            })
            .unwrap()
        };
        let first = load_vault(&config).unwrap();
        let sealed = first.seal(b"hcloud-token");
        let again = load_vault(&config).unwrap();
        assert_eq!(again.key_id(), first.key_id(), "read back, not regenerated");
        assert_eq!(again.open(&sealed).unwrap(), b"hcloud-token");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join("vault.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let key = kiln_backends::vault::VaultKey::generate();
        let configured = Config {
            vault: kiln_backends::vault::VaultSettings {
                key: Some(key.to_base64()),
                ..config.vault.clone()
            },
            ..config
        };
        let vault = load_vault(&configured).unwrap();
        assert_eq!(
            vault.key_id(),
            kiln_backends::vault::Vault::new(key).key_id()
        );
        assert!(vault.open(&sealed).is_err(), "another key opens nothing");
        let broken = Config {
            vault: kiln_backends::vault::VaultSettings {
                key: Some("not a key".into()),
                ..configured.vault.clone()
            },
            ..configured
        };
        assert!(
            load_vault(&broken)
                .unwrap_err()
                .to_string()
                .contains("vault")
        );
    }

    #[test]
    fn the_secret_key_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::resolve(crate::ServeArgs {
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        })
        .unwrap();
        let a = load_secret_key(&config).unwrap();
        let b = load_secret_key(&config).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("data/secret.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let explicit = Config {
            secret_key: Some("a-configured-secret-key".into()),
            ..config
        };
        assert_eq!(
            load_secret_key(&explicit).unwrap(),
            b"a-configured-secret-key"
        );
    }
}
