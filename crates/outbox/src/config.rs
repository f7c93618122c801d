//! [`OutboxConfig`]: every setting, its default and its `MSG_*` environment variable.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::OutboxError;

/// What an acknowledged [`enqueue`](crate::Outbox::enqueue) survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: a killed or crashed process loses nothing; a power
    /// loss or kernel crash may lose the last commits (never corrupts the file). The default.
    #[default]
    Process,
    /// WAL with `synchronous=FULL` (and `fullfsync` where the platform has it): every
    /// acknowledged enqueue is on stable storage and survives a power loss.
    PowerLoss,
}

impl Durability {
    /// The `PRAGMA synchronous` value this level needs (`1` NORMAL, `2` FULL).
    #[must_use]
    pub fn synchronous(self) -> i64 {
        match self {
            Self::Process => 1,
            Self::PowerLoss => 2,
        }
    }
}

/// What an enqueue does when the outbox holds `MSG_OUTBOX_MAX_SIZE` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Store it and drop the oldest rows not in flight; each affected session gets a notice
    /// saying how many it lost. The default: producers are never blocked.
    #[default]
    DropOldest,
    /// Refuse it: the enqueue fails with [`OutboxError::Full`] and nothing is dropped, which
    /// gives the producer back-pressure.
    Reject,
}

/// Every setting of the outbox, its flusher and the HTTP sink.
///
/// | field | env var | default |
/// |---|---|---|
/// | `batch_max_size` | `MSG_BATCH_MAX_SIZE` | 50 messages |
/// | `batch_max_bytes` | `MSG_BATCH_MAX_BYTES` | 65,536 bytes of encoded request body |
/// | `batch_max_wait` | `MSG_BATCH_MAX_WAIT_MS` | 2,000 ms |
/// | `max_message_content_bytes` | `MSG_MAX_MESSAGE_CONTENT_BYTES` | 204,800 bytes |
/// | `max_size` | `MSG_OUTBOX_MAX_SIZE` | 10,000 pending rows |
/// | `retry_initial_interval` | `MSG_RETRY_INITIAL_INTERVAL_MS` | 1,000 ms |
/// | `retry_max_interval` | `MSG_RETRY_MAX_INTERVAL_MS` | 30,000 ms |
/// | `retry_max_elapsed_time` | `MSG_RETRY_MAX_ELAPSED_TIME_MS` | 300,000 ms |
/// | `retry_after_max` | `MSG_RETRY_AFTER_MAX_MS` | 600,000 ms |
/// | `auth_retry_initial_interval` | `MSG_AUTH_RETRY_INITIAL_INTERVAL_MS` | 60,000 ms |
/// | `auth_retry_max_interval` | `MSG_AUTH_RETRY_MAX_INTERVAL_MS` | 300,000 ms |
/// | `durability` | `MSG_OUTBOX_DURABILITY` (`process` or `power-loss`) | `process` |
/// | `overflow` | `MSG_OUTBOX_OVERFLOW` (`drop-oldest` or `reject`) | `drop-oldest` |
/// | `quick_check_on_open` | `MSG_OUTBOX_QUICK_CHECK` (`true` or `false`) | `true` |
/// | `group_commit_max_rows` | `MSG_GROUP_COMMIT_MAX_ROWS` | 512 rows |
/// | `group_commit_max_wait` | `MSG_GROUP_COMMIT_MAX_WAIT_US` | 1,000 µs (0: never wait) |
/// | `group_commit_spin` | `MSG_GROUP_COMMIT_SPIN_US` | 100 µs (0: park at once) |
/// | `dead_max_rows` | `MSG_DEAD_MAX_ROWS` | 1,000 rows |
/// | `http_timeout` | `MSG_HTTP_TIMEOUT_MS` | 30,000 ms |
/// | `http_connect_timeout` | `MSG_HTTP_CONNECT_TIMEOUT_MS` | 5,000 ms |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Most messages in one delivered batch.
    pub batch_max_size: usize,
    /// Most bytes of one batch's encoded request body `{"messages":[...]}`. A single message
    /// larger than this is sent alone.
    pub batch_max_bytes: usize,
    /// The longest the flusher sleeps between looks at the outbox when nothing woke it. An
    /// enqueue wakes it at once and a batch goes out as soon as the previous one is
    /// acknowledged, so under normal operation a message waits far less.
    pub batch_max_wait: Duration,
    /// Longer message content is cut to this many bytes, ending with a visible marker.
    pub max_message_content_bytes: usize,
    /// Most pending rows. Above it the oldest are dropped and each affected session gets a
    /// system message saying how many were lost.
    pub max_size: usize,
    /// First retry delay after a transient failure (the backoff base).
    pub retry_initial_interval: Duration,
    /// Longest retry delay after transient failures (the backoff cap).
    pub retry_max_interval: Duration,
    /// After failing continuously for this long, a route is reported as
    /// [`stalled`](crate::Condition::Stalled) and logged at error level. Messages are never
    /// dropped for it: only the size bound drops messages.
    pub retry_max_elapsed_time: Duration,
    /// The longest `Retry-After` the flusher honours; a longer one is cut to this.
    pub retry_after_max: Duration,
    /// First retry delay after a 401/403 or a misconfiguration (slow retry).
    pub auth_retry_initial_interval: Duration,
    /// Longest retry delay after a 401/403 or a misconfiguration.
    pub auth_retry_max_interval: Duration,
    /// What an acknowledged enqueue survives.
    pub durability: Durability,
    /// What an enqueue does when the outbox is full.
    pub overflow: Overflow,
    /// Run `PRAGMA quick_check` on open; a corrupt file is renamed aside
    /// (`<path>.corrupt-<time>`, with its `-wal`/`-shm`), logged at error level, and a fresh
    /// outbox starts, instead of failing every start.
    pub quick_check_on_open: bool,
    /// Most rows one group commit takes from the queue of waiting producers.
    pub group_commit_max_rows: usize,
    /// Longest a committer waits for the producers of the previous group to call again
    /// before committing (never longer than the previous commit took). Zero: never wait.
    pub group_commit_max_wait: Duration,
    /// How long a waiting thread (a blocking producer whose row another thread commits, or
    /// a committer gathering the next group) checks again, yielding its CPU between checks,
    /// before it sleeps. Waking a sleeping thread costs more than most `synchronous=NORMAL`
    /// commits (on a virtual machine, tens of microseconds), so without this, concurrent
    /// producers spend more time being woken than committing. A blocking producer spins
    /// through a slower commit (one and a half times the previous commit, at most four
    /// times this): an fsync under `synchronous=FULL`. Zero: sleep at once.
    pub group_commit_spin: Duration,
    /// Most rows kept in the `dead` table (dropped messages kept for inspection); the oldest
    /// go first.
    pub dead_max_rows: usize,
    /// Whole-request timeout of the HTTP sink.
    pub http_timeout: Duration,
    /// Connect timeout of the HTTP sink.
    pub http_connect_timeout: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch_max_size: 50,
            batch_max_bytes: 64 * 1024,
            batch_max_wait: Duration::from_millis(2_000),
            max_message_content_bytes: 200 * 1024,
            max_size: 10_000,
            retry_initial_interval: Duration::from_millis(1_000),
            retry_max_interval: Duration::from_millis(30_000),
            retry_max_elapsed_time: Duration::from_millis(300_000),
            retry_after_max: Duration::from_millis(600_000),
            auth_retry_initial_interval: Duration::from_millis(60_000),
            auth_retry_max_interval: Duration::from_millis(300_000),
            durability: Durability::Process,
            overflow: Overflow::DropOldest,
            quick_check_on_open: true,
            group_commit_max_rows: 512,
            group_commit_max_wait: Duration::from_micros(1_000),
            group_commit_spin: Duration::from_micros(100),
            dead_max_rows: 1_000,
            http_timeout: Duration::from_millis(30_000),
            http_connect_timeout: Duration::from_millis(5_000),
        }
    }
}

impl OutboxConfig {
    /// The defaults, overridden by every `MSG_*` variable set in the environment.
    ///
    /// # Errors
    /// [`OutboxError::InvalidConfig`] naming the variable when one does not parse or a value
    /// is out of range.
    pub fn from_env() -> Result<Self, OutboxError> {
        Self::from_vars(std::env::vars().filter(|(k, _)| k.starts_with("MSG_")))
    }

    /// Like [`from_env`](Self::from_env), from an explicit list of `(name, value)` pairs.
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, OutboxError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let mut c = Self::default();
        set_usize(&vars, "MSG_BATCH_MAX_SIZE", &mut c.batch_max_size)?;
        set_usize(&vars, "MSG_BATCH_MAX_BYTES", &mut c.batch_max_bytes)?;
        set_ms(&vars, "MSG_BATCH_MAX_WAIT_MS", &mut c.batch_max_wait)?;
        set_usize(
            &vars,
            "MSG_MAX_MESSAGE_CONTENT_BYTES",
            &mut c.max_message_content_bytes,
        )?;
        set_usize(&vars, "MSG_OUTBOX_MAX_SIZE", &mut c.max_size)?;
        set_ms(
            &vars,
            "MSG_RETRY_INITIAL_INTERVAL_MS",
            &mut c.retry_initial_interval,
        )?;
        set_ms(
            &vars,
            "MSG_RETRY_MAX_INTERVAL_MS",
            &mut c.retry_max_interval,
        )?;
        set_ms(
            &vars,
            "MSG_RETRY_MAX_ELAPSED_TIME_MS",
            &mut c.retry_max_elapsed_time,
        )?;
        set_ms(&vars, "MSG_RETRY_AFTER_MAX_MS", &mut c.retry_after_max)?;
        set_ms(
            &vars,
            "MSG_AUTH_RETRY_INITIAL_INTERVAL_MS",
            &mut c.auth_retry_initial_interval,
        )?;
        set_ms(
            &vars,
            "MSG_AUTH_RETRY_MAX_INTERVAL_MS",
            &mut c.auth_retry_max_interval,
        )?;
        if let Some(v) = vars.get("MSG_OUTBOX_DURABILITY") {
            c.durability = match v.trim().to_ascii_lowercase().as_str() {
                "process" | "normal" => Durability::Process,
                "power-loss" | "power_loss" | "full" => Durability::PowerLoss,
                _ => {
                    return Err(invalid(
                        "MSG_OUTBOX_DURABILITY",
                        v,
                        "expected `process` or `power-loss`",
                    ));
                }
            };
        }
        if let Some(v) = vars.get("MSG_OUTBOX_OVERFLOW") {
            c.overflow = match v.trim().to_ascii_lowercase().as_str() {
                "drop-oldest" | "drop_oldest" => Overflow::DropOldest,
                "reject" => Overflow::Reject,
                _ => {
                    return Err(invalid(
                        "MSG_OUTBOX_OVERFLOW",
                        v,
                        "expected `drop-oldest` or `reject`",
                    ));
                }
            };
        }
        if let Some(v) = vars.get("MSG_OUTBOX_QUICK_CHECK") {
            c.quick_check_on_open = match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(invalid(
                        "MSG_OUTBOX_QUICK_CHECK",
                        v,
                        "expected `true` or `false`",
                    ));
                }
            };
        }
        set_usize(
            &vars,
            "MSG_GROUP_COMMIT_MAX_ROWS",
            &mut c.group_commit_max_rows,
        )?;
        set_us(
            &vars,
            "MSG_GROUP_COMMIT_MAX_WAIT_US",
            &mut c.group_commit_max_wait,
        )?;
        set_us(&vars, "MSG_GROUP_COMMIT_SPIN_US", &mut c.group_commit_spin)?;
        set_usize(&vars, "MSG_DEAD_MAX_ROWS", &mut c.dead_max_rows)?;
        set_ms(&vars, "MSG_HTTP_TIMEOUT_MS", &mut c.http_timeout)?;
        set_ms(
            &vars,
            "MSG_HTTP_CONNECT_TIMEOUT_MS",
            &mut c.http_connect_timeout,
        )?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the values make sense together.
    ///
    /// # Errors
    /// [`OutboxError::InvalidConfig`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), OutboxError> {
        let positive = [
            ("MSG_BATCH_MAX_SIZE", self.batch_max_size),
            ("MSG_BATCH_MAX_BYTES", self.batch_max_bytes),
            ("MSG_OUTBOX_MAX_SIZE", self.max_size),
            ("MSG_GROUP_COMMIT_MAX_ROWS", self.group_commit_max_rows),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(name, "0", "must be at least 1"));
            }
        }
        if self.max_message_content_bytes < MIN_CONTENT_BYTES {
            return Err(invalid(
                "MSG_MAX_MESSAGE_CONTENT_BYTES",
                &self.max_message_content_bytes.to_string(),
                "must be at least 256 (room for the truncation marker)",
            ));
        }
        if self.retry_max_interval < self.retry_initial_interval {
            return Err(invalid(
                "MSG_RETRY_MAX_INTERVAL_MS",
                &self.retry_max_interval.as_millis().to_string(),
                "must not be below MSG_RETRY_INITIAL_INTERVAL_MS",
            ));
        }
        if self.auth_retry_max_interval < self.auth_retry_initial_interval {
            return Err(invalid(
                "MSG_AUTH_RETRY_MAX_INTERVAL_MS",
                &self.auth_retry_max_interval.as_millis().to_string(),
                "must not be below MSG_AUTH_RETRY_INITIAL_INTERVAL_MS",
            ));
        }
        Ok(())
    }
}

/// The smallest content limit that still leaves room for the truncation marker.
pub(crate) const MIN_CONTENT_BYTES: usize = 256;

fn invalid(name: &str, value: &str, why: &str) -> OutboxError {
    OutboxError::InvalidConfig(format!("{name}={value:?}: {why}"))
}

fn set_usize(
    vars: &HashMap<String, String>,
    name: &str,
    slot: &mut usize,
) -> Result<(), OutboxError> {
    if let Some(v) = vars.get(name) {
        *slot = v
            .trim()
            .parse()
            .map_err(|_| invalid(name, v, "expected a non-negative integer"))?;
    }
    Ok(())
}

fn set_ms(
    vars: &HashMap<String, String>,
    name: &str,
    slot: &mut Duration,
) -> Result<(), OutboxError> {
    if let Some(v) = vars.get(name) {
        let ms: u64 = v
            .trim()
            .parse()
            .map_err(|_| invalid(name, v, "expected milliseconds as an integer"))?;
        *slot = Duration::from_millis(ms);
    }
    Ok(())
}

fn set_us(
    vars: &HashMap<String, String>,
    name: &str,
    slot: &mut Duration,
) -> Result<(), OutboxError> {
    if let Some(v) = vars.get(name) {
        let us: u64 = v
            .trim()
            .parse()
            .map_err(|_| invalid(name, v, "expected microseconds as an integer"))?;
        *slot = Duration::from_micros(us);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let c = OutboxConfig::default();
        assert_eq!(c.batch_max_size, 50);
        assert_eq!(c.batch_max_bytes, 65_536);
        assert_eq!(c.batch_max_wait, Duration::from_secs(2));
        assert_eq!(c.max_message_content_bytes, 204_800);
        assert_eq!(c.max_size, 10_000);
        assert_eq!(c.retry_initial_interval, Duration::from_secs(1));
        assert_eq!(c.retry_max_interval, Duration::from_secs(30));
        assert_eq!(c.retry_max_elapsed_time, Duration::from_secs(300));
        assert_eq!(c.durability, Durability::Process);
        c.validate().unwrap();
    }

    #[test]
    fn every_variable_is_read() {
        let c = OutboxConfig::from_vars([
            ("MSG_BATCH_MAX_SIZE", "7"),
            ("MSG_BATCH_MAX_BYTES", "1000"),
            ("MSG_BATCH_MAX_WAIT_MS", "15"),
            ("MSG_MAX_MESSAGE_CONTENT_BYTES", "4096"),
            ("MSG_OUTBOX_MAX_SIZE", "99"),
            ("MSG_RETRY_INITIAL_INTERVAL_MS", "10"),
            ("MSG_RETRY_MAX_INTERVAL_MS", "20"),
            ("MSG_RETRY_MAX_ELAPSED_TIME_MS", "30"),
            ("MSG_RETRY_AFTER_MAX_MS", "40"),
            ("MSG_AUTH_RETRY_INITIAL_INTERVAL_MS", "50"),
            ("MSG_AUTH_RETRY_MAX_INTERVAL_MS", "60"),
            ("MSG_OUTBOX_DURABILITY", "power-loss"),
            ("MSG_OUTBOX_OVERFLOW", "reject"),
            ("MSG_OUTBOX_QUICK_CHECK", "false"),
            ("MSG_GROUP_COMMIT_MAX_ROWS", "8"),
            ("MSG_GROUP_COMMIT_MAX_WAIT_US", "250"),
            ("MSG_GROUP_COMMIT_SPIN_US", "30"),
            ("MSG_DEAD_MAX_ROWS", "9"),
            ("MSG_HTTP_TIMEOUT_MS", "70"),
            ("MSG_HTTP_CONNECT_TIMEOUT_MS", "80"),
        ])
        .unwrap();
        let ms = Duration::from_millis;
        let expected = OutboxConfig {
            batch_max_size: 7,
            batch_max_bytes: 1000,
            batch_max_wait: ms(15),
            max_message_content_bytes: 4096,
            max_size: 99,
            retry_initial_interval: ms(10),
            retry_max_interval: ms(20),
            retry_max_elapsed_time: ms(30),
            retry_after_max: ms(40),
            auth_retry_initial_interval: ms(50),
            auth_retry_max_interval: ms(60),
            durability: Durability::PowerLoss,
            overflow: Overflow::Reject,
            quick_check_on_open: false,
            group_commit_max_rows: 8,
            group_commit_max_wait: Duration::from_micros(250),
            group_commit_spin: Duration::from_micros(30),
            dead_max_rows: 9,
            http_timeout: ms(70),
            http_connect_timeout: ms(80),
        };
        assert_eq!(c, expected);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = OutboxConfig::from_vars([("MSG_BATCH_MAX_SIZE", "many")]).unwrap_err();
        assert!(err.to_string().contains("MSG_BATCH_MAX_SIZE"), "{err}");
        let err = OutboxConfig::from_vars([("MSG_OUTBOX_MAX_SIZE", "0")]).unwrap_err();
        assert!(err.to_string().contains("MSG_OUTBOX_MAX_SIZE"), "{err}");
        let err = OutboxConfig::from_vars([("MSG_OUTBOX_OVERFLOW", "block")]).unwrap_err();
        assert!(err.to_string().contains("MSG_OUTBOX_OVERFLOW"), "{err}");
        let err = OutboxConfig::from_vars([("MSG_OUTBOX_QUICK_CHECK", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("MSG_OUTBOX_QUICK_CHECK"), "{err}");
        let err = OutboxConfig::from_vars([("MSG_OUTBOX_DURABILITY", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("MSG_OUTBOX_DURABILITY"), "{err}");
        let err = OutboxConfig::from_vars([
            ("MSG_RETRY_INITIAL_INTERVAL_MS", "5000"),
            ("MSG_RETRY_MAX_INTERVAL_MS", "100"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("MSG_RETRY_MAX_INTERVAL_MS"),
            "{err}"
        );
    }
}
