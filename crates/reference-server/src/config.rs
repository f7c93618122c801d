//! Configuration of `kiln serve`: flags, environment and an optional TOML file, in that
//! order of precedence, then the defaults below. Every setting works with none of the others.
//!
//! | flag | environment | TOML key | default |
//! |---|---|---|---|
//! | `--config` | `KILN_CONFIG` | — | none (no file) |
//! | `--data-dir` | `KILN_DATA_DIR` | `data_dir` | `$HOME/.local/share/kiln` (`./kiln-data` without `HOME`) |
//! | `--listen` | `KILN_LISTEN` | `listen` | `127.0.0.1:8080` |
//! | `--database-url` | `KILN_DATABASE_URL` | `database_url` | `sqlite://<data dir>/kiln.db` (`postgres://…` selects PostgreSQL) |
//! | `--public-url` | `KILN_PUBLIC_URL` | `public_url` | `http://<listen>` (what nodes and login links use) |
//! | `--secret-key` | `KILN_SECRET_KEY` | `secret_key` | generated into `<data dir>/secret.key` (mode 0600) on first start; replicas sharing a PostgreSQL database must all be given the same key |
//! | `--provider` | `KILN_PROVIDER` | `provider` | `local` (`kiln-node` processes on this machine); `hetzner` (Hetzner Cloud servers, each user's own token), or both: `local,hetzner` / `both` (new projects get the first) |
//! | — | `KILN_VAULT_KEY`, `KILN_VAULT_KEY_FILE`, `KILN_VAULT_PREVIOUS_KEYS` | — | the key stored credentials are sealed with (`kiln_backends::vault::VaultSettings`); generated into `<data dir>/vault.key` (mode 0600) on first start unless `KILN_VAULT_KEY` or `KILN_VAULT_KEY_FILE` says otherwise |
//! | — | `KILN_HETZNER_API_URL`, `KILN_HETZNER_LOCATION`, `KILN_HETZNER_SERVER_TYPE_*`, … | — | the Hetzner provider's settings (`kiln_backends::hetzner::HetznerSettings`), also used to check tokens when they are saved |
//! | `--node-binary` | `KILN_NODE_BINARY` | `node_binary` | the `kiln-node` file `GET /api/nodes/{id}/binary` serves to Hetzner nodes: default `kiln-node` next to the running `kiln` |
//! | `--agent-command` | `KILN_AGENT_COMMAND` | `agent_command` | unset: each node runs `kiln-demo-agent` from next to its `kiln-node` |
//! | — | `KILN_NODE_BIN`, `KILN_LOCAL_NODES_DIR`, `KILN_LOCAL_STOP_GRACE_MS` | — | the local provider's settings (`kiln_backends::local::LocalConfig`); nodes live in `<data dir>/nodes` unless `KILN_LOCAL_NODES_DIR` says otherwise |
//! | `--callback-token-ttl-secs` | `KILN_CALLBACK_TOKEN_TTL_SECS` | `callback_token_ttl_secs` | `86400` (node and workspace tokens) |
//! | `--session-ttl-secs` | `KILN_SESSION_TTL_SECS` | `session_ttl_secs` | `2592000` (30 days, browser sessions) |
//! | `--login-link` | `KILN_LOGIN_LINK` | `login_link` | `true` (print a one-time login link at start) |
//! | `--shutdown-grace-ms` | `KILN_SHUTDOWN_GRACE_MS` | `shutdown_grace_ms` | `10000` (in-flight requests at shutdown) |
//! | — | `NODE_WARM_TIMEOUT_MS`, `MAX_AUTO_NODE_LIFETIME_MS`, `NODE_CLEANUP_GRACE_PERIOD_MS`, `NODE_SWEEP_INTERVAL_MS`, … | `[pool]` table, same names | the pool's and runner's settings, passed through to [`kiln_pool::Settings`] (see `kiln_pool`'s documentation for each default) |
//!
//! Logs go to stderr, filtered by `KILN_LOG` (else `RUST_LOG`, else `info`). The operator
//! CLI (`kiln task …`, `kiln node list`) reads `KILN_SERVER_URL` (default
//! `http://127.0.0.1:8080`) and `KILN_TOKEN`.
//!
//! SQLite and PostgreSQL tuning (`KILN_SQLITE_MAX_CONNECTIONS`, `KILN_PG_…`) is read by
//! `kiln_backends` from the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The settings of `kiln serve` as given (flags and environment); unset ones come from the
/// TOML file, then the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where Kiln keeps its SQLite database, secret key and node files.
    /// Default: $HOME/.local/share/kiln.
    #[arg(long, env = "KILN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the API and UI listen on. Default: 127.0.0.1:8080.
    #[arg(long, env = "KILN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// `sqlite://path` or `postgres://…`. Default: `sqlite://<data dir>/kiln.db`.
    #[arg(long, env = "KILN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The URL nodes and browsers reach this server at. Default: `http://<listen>`.
    #[arg(long, env = "KILN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Key for signing callback tokens. Default: generated into `<data dir>/secret.key`.
    #[arg(long, env = "KILN_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Node providers: `local`, `hetzner`, or both (`local,hetzner`, `hetzner,local`,
    /// `both`); new projects get the first. Default: local.
    #[arg(long, env = "KILN_PROVIDER")]
    pub provider: Option<String>,
    /// The `kiln-node` binary served to Hetzner nodes. Default: next to this `kiln`.
    #[arg(long, env = "KILN_NODE_BINARY")]
    pub node_binary: Option<PathBuf>,
    /// The ACP agent command nodes run. Default: the node's own default (kiln-demo-agent).
    #[arg(long, env = "KILN_AGENT_COMMAND")]
    pub agent_command: Option<String>,
    /// Lifetime of node and workspace callback tokens. Default: 86400.
    #[arg(long, env = "KILN_CALLBACK_TOKEN_TTL_SECS")]
    pub callback_token_ttl_secs: Option<u64>,
    /// Lifetime of a browser session. Default: 2592000.
    #[arg(long, env = "KILN_SESSION_TTL_SECS")]
    pub session_ttl_secs: Option<u64>,
    /// Print a one-time login link at start. Default: true.
    #[arg(long, env = "KILN_LOGIN_LINK")]
    pub login_link: Option<bool>,
    /// How long shutdown waits for in-flight requests. Default: 10000.
    #[arg(long, env = "KILN_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
}

/// The TOML file: the same settings, snake_case.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    public_url: Option<String>,
    secret_key: Option<String>,
    provider: Option<String>,
    node_binary: Option<PathBuf>,
    agent_command: Option<String>,
    callback_token_ttl_secs: Option<u64>,
    session_ttl_secs: Option<u64>,
    login_link: Option<bool>,
    shutdown_grace_ms: Option<u64>,
    /// The pool's settings by their environment names.
    #[serde(default)]
    pool: BTreeMap<String, toml::Value>,
}

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file is not valid.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid setting {name}: {message}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        message: String,
    },
}

/// The resolved configuration of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// Public URL, without a trailing slash.
    pub public_url: String,
    /// The explicit secret key, if given (else read or generated in the data directory).
    pub secret_key: Option<String>,
    /// The enabled node providers (`local`, `hetzner`), the default for new projects first.
    pub providers: Vec<String>,
    /// The `kiln-node` binary served to nodes, when configured (else next to `kiln`).
    pub node_binary: Option<PathBuf>,
    /// Agent command for the nodes, when configured.
    pub agent_command: Option<String>,
    /// Callback token lifetime.
    pub callback_token_ttl: Duration,
    /// Browser session lifetime.
    pub session_ttl: Duration,
    /// Whether to print a login link at start.
    pub login_link: bool,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// The pool's and runner's settings (environment over the `[pool]` table over defaults).
    pub pool: kiln_pool::Settings,
    /// Where the vault key comes from (`KILN_VAULT_*`).
    pub vault: kiln_backends::vault::VaultSettings,
    /// The Hetzner provider's settings (`KILN_HETZNER_*`).
    pub hetzner: kiln_backends::hetzner::HetznerSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self::resolve(ServeArgs::default()).expect("defaults are valid")
    }
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".local/share/kiln"),
        _ => PathBuf::from("kiln-data"),
    }
}

impl Config {
    /// Resolves flags/environment over the TOML file (if any) over the defaults.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir);
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let database_url = args
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("kiln.db").display()));
        let public_url = args
            .public_url
            .or(file.public_url)
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        let providers = parse_providers(
            &args
                .provider
                .or(file.provider)
                .unwrap_or_else(|| "local".into()),
        )?;
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                name: "database_url",
                message: "expected sqlite://… or postgres://…".into(),
            });
        }
        let ms =
            |v: Option<u64>, f: Option<u64>, d: u64| Duration::from_millis(v.or(f).unwrap_or(d));
        let secs =
            |v: Option<u64>, f: Option<u64>, d: u64| Duration::from_secs(v.or(f).unwrap_or(d));
        let config = Self {
            listen,
            database_url,
            public_url,
            secret_key: args.secret_key.or(file.secret_key),
            providers,
            node_binary: args.node_binary.or(file.node_binary),
            agent_command: args.agent_command.or(file.agent_command),
            callback_token_ttl: secs(
                args.callback_token_ttl_secs,
                file.callback_token_ttl_secs,
                86_400,
            ),
            session_ttl: secs(args.session_ttl_secs, file.session_ttl_secs, 2_592_000),
            login_link: args.login_link.or(file.login_link).unwrap_or(true),
            shutdown_grace: ms(args.shutdown_grace_ms, file.shutdown_grace_ms, 10_000),
            pool: pool_settings(&file.pool)?,
            vault: kiln_backends::vault::VaultSettings::from_env(&data_dir),
            hetzner: kiln_backends::hetzner::HetznerSettings::from_env().map_err(|e| {
                ConfigError::Invalid {
                    name: "KILN_HETZNER_*",
                    message: e.to_string(),
                }
            })?,
            data_dir,
        };
        if config.callback_token_ttl.is_zero() {
            return Err(ConfigError::Invalid {
                name: "callback_token_ttl_secs",
                message: "must be positive".into(),
            });
        }
        Ok(config)
    }

    /// Whether the database is PostgreSQL.
    #[must_use]
    pub fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres")
    }
}

/// `local`, `hetzner`, `both` or a comma-separated list of those two, each once.
fn parse_providers(value: &str) -> Result<Vec<String>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        name: "provider",
        message,
    };
    if value.trim() == "both" {
        return Ok(vec!["local".into(), "hetzner".into()]);
    }
    let mut providers: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim) {
        if !matches!(name, "local" | "hetzner") {
            return Err(invalid(format!(
                "unknown provider {name:?}; expected local, hetzner, both or local,hetzner"
            )));
        }
        if providers.iter().any(|p| p == name) {
            return Err(invalid(format!("{name:?} is listed twice")));
        }
        providers.push(name.to_owned());
    }
    Ok(providers)
}

/// The pool's settings: each variable from the environment, else the `[pool]` table.
fn pool_settings(
    table: &BTreeMap<String, toml::Value>,
) -> Result<kiln_pool::Settings, ConfigError> {
    kiln_pool::Settings::from_lookup(|name| {
        std::env::var(name).ok().or_else(|| {
            table.get(name).map(|v| match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
    })
    .map_err(|e| ConfigError::Invalid {
        name: e.name,
        message: e.to_string(),
    })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_settings() {
        let c = Config::resolve(ServeArgs {
            data_dir: Some("/tmp/kd".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite:///tmp/kd/kiln.db");
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
        assert_eq!(c.pool, kiln_pool::Settings::from_env().unwrap());
        assert!(c.login_link);
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ndatabase_url = \"postgres://x/y\"\nshutdown_grace_ms = 5\n[pool]\nTASK_TICK_INTERVAL_MS = 1234\n",
        )
        .unwrap();
        let c = Config::resolve(ServeArgs {
            config: Some(path.clone()),
            shutdown_grace_ms: Some(7),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.public_url, "http://127.0.0.1:9000");
        assert_eq!(c.shutdown_grace, Duration::from_millis(7));
        if std::env::var_os("TASK_TICK_INTERVAL_MS").is_none() {
            assert_eq!(c.pool.task_tick_interval, Duration::from_millis(1234));
        }
        assert!(c.is_postgres());
        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn providers_are_one_or_both() {
        assert_eq!(parse_providers("local").unwrap(), ["local"]);
        assert_eq!(parse_providers("hetzner").unwrap(), ["hetzner"]);
        assert_eq!(parse_providers("both").unwrap(), ["local", "hetzner"]);
        assert_eq!(
            parse_providers("hetzner, local").unwrap(),
            ["hetzner", "local"]
        );
        for bad in ["aws", "local,local", "", "local,"] {
            let err = parse_providers(bad).unwrap_err();
            assert!(err.to_string().contains("provider"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let err = Config::resolve(ServeArgs {
            database_url: Some("mysql://x".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("database_url"));
    }
}
