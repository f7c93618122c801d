//! The pool's and the runner's settings: every one has a default and an environment variable.

use std::time::Duration;

use kiln_core::task::TransientLimits;
use kiln_core::{UserId, VmSize};

/// A per-owner, per-size minimum of idle warm nodes (pre-warming).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrewarmTarget {
    /// Whose nodes.
    pub owner: UserId,
    /// Which size.
    pub size: VmSize,
    /// Where, when the provider has locations (`None`: any location).
    pub location: Option<String>,
    /// How many warm, unclaimed nodes to keep ready.
    pub min_idle: u32,
}

/// Everything the [`WarmPool`](crate::WarmPool) and the [`TaskRunner`](crate::TaskRunner)
/// can be told. [`Settings::default`] is the documented default; [`Settings::from_env`]
/// reads the environment variables named on each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `NODE_WARM_TIMEOUT_MS` (default 30 min): how long an emptied node stays warm. Read at
    /// release time, so a change applies to nodes emptied after it.
    pub warm_timeout: Duration,
    /// `NODE_CLEANUP_GRACE_PERIOD_MS` (default 45 min): how far past its warm deadline a node
    /// must be before the sweep destroys it (normally the expiry loop does it on time).
    pub cleanup_grace: Duration,
    /// `MAX_AUTO_NODE_LIFETIME_MS` (default 4 h): no auto-provisioned node lives longer
    /// unless it runs a workspace. A warm deadline never goes past it.
    pub max_auto_node_lifetime: Duration,
    /// `NODE_SWEEP_INTERVAL_MS` (default 15 min): how often the reconciliation sweep runs
    /// (it also runs when the pool's loop starts).
    pub sweep_interval: Duration,
    /// `NODE_DESTROY_RETRY_INTERVAL_MS` (default 1 min): the wait before the first retry of a
    /// failed provider delete; each further retry waits twice as long. The same schedule
    /// paces retries of a retryable provider create for a task, and pre-warming after the
    /// provider refused a node.
    pub destroy_retry_interval: Duration,
    /// `NODE_DESTROY_MAX_ATTEMPTS` (default 6): provider delete attempts before the node is
    /// left (in `destroying`) to the sweep.
    pub destroy_max_attempts: u32,
    /// `NODE_PROVISIONING_TIMEOUT_MS` (default 10 min): how long an acquire waits for a new
    /// node to report ready (a cloud cold start takes minutes). A claimed warm node needs no
    /// wait. The sweep reaps nodes still provisioning after this plus the boot grace.
    pub provisioning_timeout: Duration,
    /// `NODE_READY_POLL_INTERVAL_MS` (default 5 s): while waiting for a node, re-read it this
    /// often even when no change event arrives.
    pub ready_poll_interval: Duration,
    /// `NODE_BOOT_GRACE_PERIOD_MS` (default 10 min): orphans at the provider and unclaimed
    /// idle nodes younger than this are left alone by the sweep (they may be booting, or
    /// their store row may be about to appear).
    pub boot_grace: Duration,
    /// `NODE_HEARTBEAT_TIMEOUT_MS` (default 90 s, six missed 15 s heartbeats): a node whose
    /// agent host has sent heartbeats and then stays silent this long is lost: the task on
    /// it fails with "node lost", its chats stop, and the node is destroyed (nodes that
    /// never sent a heartbeat are not judged).
    pub heartbeat_timeout: Duration,
    /// `NODE_LOCATION` (default none: the provider's default): where new nodes are created.
    pub location: Option<String>,
    /// `NODE_PREWARM` (default empty): minimums of idle warm nodes, as a comma-separated list
    /// of `<owner uuid>:<size>=<count>[@<location>]`.
    pub prewarm: Vec<PrewarmTarget>,
    /// `TASK_QUEUED_TIMEOUT_MS` (default 15 min) and `TASK_DELEGATED_TIMEOUT_MS` (default
    /// 10 min): how long a task may wait for a node, and for its agent to start.
    pub task_limits: TransientLimits,
    /// `TASK_TICK_INTERVAL_MS` (default 30 s): how often the runner's loop looks for tasks held
    /// too long in a transient state.
    pub task_tick_interval: Duration,
    /// `KILN_KEPT_WORKSPACE_TTL_MS` (default 24 h; `0` keeps them forever, `None` here): how
    /// long the workspace of a failed or cancelled task is kept for inspection. The runner's
    /// tick then discards it, which releases its node.
    pub kept_workspace_ttl: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            warm_timeout: minutes(30),
            cleanup_grace: minutes(45),
            max_auto_node_lifetime: minutes(4 * 60),
            sweep_interval: minutes(15),
            destroy_retry_interval: minutes(1),
            destroy_max_attempts: 6,
            provisioning_timeout: minutes(10),
            ready_poll_interval: Duration::from_secs(5),
            boot_grace: minutes(10),
            heartbeat_timeout: Duration::from_secs(90),
            location: None,
            prewarm: Vec::new(),
            task_limits: TransientLimits::default(),
            task_tick_interval: Duration::from_secs(30),
            kept_workspace_ttl: Some(minutes(24 * 60)),
        }
    }
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// A setting that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {name}={value:?}: {reason}")]
pub struct SettingsError {
    /// The environment variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Settings {
    /// The defaults, overridden by the environment variables that are set.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The defaults, overridden by what `lookup` returns for each variable name.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let mut s = Self::default();
        let millis = |name: &'static str, into: &mut Duration| -> Result<(), SettingsError> {
            if let Some(value) = lookup(name) {
                let ms: u64 = value.trim().parse().map_err(|e| SettingsError {
                    name,
                    value: value.clone(),
                    reason: format!("expected milliseconds: {e}"),
                })?;
                *into = Duration::from_millis(ms);
            }
            Ok(())
        };
        millis("NODE_WARM_TIMEOUT_MS", &mut s.warm_timeout)?;
        millis("NODE_CLEANUP_GRACE_PERIOD_MS", &mut s.cleanup_grace)?;
        millis("MAX_AUTO_NODE_LIFETIME_MS", &mut s.max_auto_node_lifetime)?;
        millis("NODE_SWEEP_INTERVAL_MS", &mut s.sweep_interval)?;
        millis(
            "NODE_DESTROY_RETRY_INTERVAL_MS",
            &mut s.destroy_retry_interval,
        )?;
        millis("NODE_PROVISIONING_TIMEOUT_MS", &mut s.provisioning_timeout)?;
        millis("NODE_READY_POLL_INTERVAL_MS", &mut s.ready_poll_interval)?;
        millis("NODE_BOOT_GRACE_PERIOD_MS", &mut s.boot_grace)?;
        millis("NODE_HEARTBEAT_TIMEOUT_MS", &mut s.heartbeat_timeout)?;
        millis("TASK_QUEUED_TIMEOUT_MS", &mut s.task_limits.queued)?;
        millis("TASK_DELEGATED_TIMEOUT_MS", &mut s.task_limits.delegated)?;
        millis("TASK_TICK_INTERVAL_MS", &mut s.task_tick_interval)?;
        let mut kept = s.kept_workspace_ttl.unwrap_or_default();
        millis("KILN_KEPT_WORKSPACE_TTL_MS", &mut kept)?;
        s.kept_workspace_ttl = (!kept.is_zero()).then_some(kept);
        if let Some(value) = lookup("NODE_DESTROY_MAX_ATTEMPTS") {
            s.destroy_max_attempts =
                value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| SettingsError {
                        name: "NODE_DESTROY_MAX_ATTEMPTS",
                        value: value.clone(),
                        reason: "expected a whole number of at least 1".into(),
                    })?;
        }
        if let Some(value) = lookup("NODE_LOCATION") {
            let value = value.trim();
            s.location = (!value.is_empty()).then(|| value.to_owned());
        }
        if let Some(value) = lookup("NODE_PREWARM") {
            s.prewarm = parse_prewarm(&value)?;
        }
        for (name, d) in [
            ("NODE_SWEEP_INTERVAL_MS", s.sweep_interval),
            ("NODE_READY_POLL_INTERVAL_MS", s.ready_poll_interval),
            ("NODE_HEARTBEAT_TIMEOUT_MS", s.heartbeat_timeout),
            ("TASK_TICK_INTERVAL_MS", s.task_tick_interval),
        ] {
            if d.is_zero() {
                return Err(SettingsError {
                    name,
                    value: "0".into(),
                    reason: "must be positive".into(),
                });
            }
        }
        if s.provisioning_timeout >= s.task_limits.queued {
            tracing::warn!(
                provisioning_timeout_ms = s.provisioning_timeout.as_millis() as u64,
                queued_limit_ms = s.task_limits.queued.as_millis() as u64,
                "the provisioning timeout is not below the queued-task limit: a slow cold start \
                 fails its task with the generic queued timeout instead of the provisioning error"
            );
        }
        Ok(s)
    }

    /// The pre-warm minimum for nodes of `owner`, `size` and `location` (0 when none is set).
    #[must_use]
    pub fn prewarm_min(&self, owner: UserId, size: VmSize, location: Option<&str>) -> u32 {
        self.prewarm
            .iter()
            .filter(|t| {
                t.owner == owner
                    && t.size == size
                    && t.location.as_deref().is_none_or(|l| location == Some(l))
            })
            .map(|t| t.min_idle)
            .max()
            .unwrap_or(0)
    }
}

/// Parses `NODE_PREWARM`: `<owner uuid>:<size>=<count>[@<location>]`, comma separated.
pub fn parse_prewarm(value: &str) -> Result<Vec<PrewarmTarget>, SettingsError> {
    let bad = |reason: String| SettingsError {
        name: "NODE_PREWARM",
        value: value.to_owned(),
        reason,
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (spec, location) = match entry.split_once('@') {
                Some((spec, location)) => (spec, Some(location.trim().to_owned())),
                None => (entry, None),
            };
            let (owner_size, count) = spec
                .split_once('=')
                .ok_or_else(|| bad(format!("{entry:?} has no `=<count>`")))?;
            let (owner, size) = owner_size
                .split_once(':')
                .ok_or_else(|| bad(format!("{entry:?} has no `<owner>:<size>`")))?;
            Ok(PrewarmTarget {
                owner: owner
                    .trim()
                    .parse()
                    .map_err(|e| bad(format!("owner {owner:?}: {e}")))?,
                size: size.trim().parse().map_err(|e| bad(format!("{e}")))?,
                location,
                min_idle: count
                    .trim()
                    .parse()
                    .map_err(|e| bad(format!("count {count:?}: {e}")))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_design() {
        let s = from(&[]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.warm_timeout, Duration::from_millis(1_800_000));
        assert_eq!(s.cleanup_grace, Duration::from_millis(2_700_000));
        assert_eq!(s.max_auto_node_lifetime, Duration::from_millis(14_400_000));
        assert_eq!(s.sweep_interval, Duration::from_secs(15 * 60));
        assert_eq!(
            (s.destroy_retry_interval, s.destroy_max_attempts),
            (Duration::from_secs(60), 6)
        );
        assert!(s.provisioning_timeout < s.task_limits.queued);
        assert!(s.prewarm.is_empty());
        assert_eq!(s.kept_workspace_ttl, Some(Duration::from_secs(24 * 3600)));
        let forever = from(&[("KILN_KEPT_WORKSPACE_TTL_MS", "0")]).unwrap();
        assert_eq!(forever.kept_workspace_ttl, None);
    }

    #[test]
    fn every_variable_overrides_its_setting() {
        let owner = UserId::new();
        let prewarm = format!("{owner}:medium=2@fsn1, {owner}:small=1");
        let s = from(&[
            ("NODE_WARM_TIMEOUT_MS", "1000"),
            ("NODE_CLEANUP_GRACE_PERIOD_MS", "2000"),
            ("MAX_AUTO_NODE_LIFETIME_MS", "3000"),
            ("NODE_SWEEP_INTERVAL_MS", "4000"),
            ("NODE_DESTROY_RETRY_INTERVAL_MS", "5000"),
            ("NODE_DESTROY_MAX_ATTEMPTS", "3"),
            ("NODE_PROVISIONING_TIMEOUT_MS", "6000"),
            ("NODE_READY_POLL_INTERVAL_MS", "7000"),
            ("NODE_BOOT_GRACE_PERIOD_MS", "8000"),
            ("NODE_HEARTBEAT_TIMEOUT_MS", "8500"),
            ("NODE_LOCATION", "nbg1"),
            ("NODE_PREWARM", &prewarm),
            ("TASK_QUEUED_TIMEOUT_MS", "9000"),
            ("TASK_DELEGATED_TIMEOUT_MS", "10000"),
            ("TASK_TICK_INTERVAL_MS", "11000"),
            ("KILN_KEPT_WORKSPACE_TTL_MS", "12000"),
        ])
        .unwrap();
        let ms = Duration::from_millis;
        assert_eq!(s.warm_timeout, ms(1000));
        assert_eq!(s.cleanup_grace, ms(2000));
        assert_eq!(s.max_auto_node_lifetime, ms(3000));
        assert_eq!(s.sweep_interval, ms(4000));
        assert_eq!(s.destroy_retry_interval, ms(5000));
        assert_eq!(s.destroy_max_attempts, 3);
        assert_eq!(s.provisioning_timeout, ms(6000));
        assert_eq!(s.ready_poll_interval, ms(7000));
        assert_eq!(s.boot_grace, ms(8000));
        assert_eq!(s.heartbeat_timeout, ms(8500));
        assert_eq!(s.location.as_deref(), Some("nbg1"));
        assert_eq!(s.task_limits.queued, ms(9000));
        assert_eq!(s.task_limits.delegated, ms(10000));
        assert_eq!(s.task_tick_interval, ms(11000));
        assert_eq!(s.kept_workspace_ttl, Some(ms(12000)));
        assert_eq!(s.prewarm.len(), 2);
        assert_eq!(s.prewarm_min(owner, VmSize::Medium, Some("fsn1")), 2);
        assert_eq!(s.prewarm_min(owner, VmSize::Medium, Some("nbg1")), 0);
        assert_eq!(s.prewarm_min(owner, VmSize::Small, None), 1);
        assert_eq!(s.prewarm_min(UserId::new(), VmSize::Small, None), 0);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = from(&[("NODE_WARM_TIMEOUT_MS", "30m")]).unwrap_err();
        assert_eq!(err.name, "NODE_WARM_TIMEOUT_MS");
        assert!(from(&[("NODE_DESTROY_MAX_ATTEMPTS", "0")]).is_err());
        assert!(from(&[("NODE_SWEEP_INTERVAL_MS", "0")]).is_err());
        let err = from(&[("NODE_PREWARM", "someone:small=1")]).unwrap_err();
        assert!(err.reason.contains("owner"), "{err}");
        let err = from(&[("NODE_PREWARM", &format!("{}:huge=1", UserId::new()))]).unwrap_err();
        assert!(err.reason.contains("VM size"), "{err}");
    }
}
