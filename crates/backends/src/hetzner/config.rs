//! Settings of the Hetzner provider, each with a default and an environment variable.

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_core::VmSize;

/// The public Hetzner Cloud API.
pub const DEFAULT_API_URL: &str = "https://api.hetzner.cloud/v1";

/// How the Hetzner provider creates servers and talks to the API.
///
/// [`HetznerSettings::from_env`] reads every field from the environment; unset variables keep
/// the defaults below (see also the [module documentation](super)).
///
/// | field | variable | default |
/// |---|---|---|
/// | `api_url` | `KILN_HETZNER_API_URL` | `https://api.hetzner.cloud/v1` |
/// | `server_type_small` | `KILN_HETZNER_SERVER_TYPE_SMALL` | `cx23` |
/// | `server_type_medium` | `KILN_HETZNER_SERVER_TYPE_MEDIUM` | `cx33` |
/// | `server_type_large` | `KILN_HETZNER_SERVER_TYPE_LARGE` | `cx43` |
/// | `image` | `KILN_HETZNER_IMAGE` | `debian-12` |
/// | `location` | `KILN_HETZNER_LOCATION` | `nbg1` |
/// | `server_name_prefix` | `KILN_HETZNER_SERVER_NAME_PREFIX` | `kiln` |
/// | `connect_timeout` | `KILN_HETZNER_CONNECT_TIMEOUT_MS` | 10 000 ms |
/// | `request_timeout` | `KILN_HETZNER_REQUEST_TIMEOUT_MS` | 30 000 ms |
/// | `poll_interval` | `KILN_HETZNER_POLL_INTERVAL_MS` | 1 000 ms |
/// | `create_timeout` | `KILN_HETZNER_CREATE_TIMEOUT_MS` | 300 000 ms |
/// | `delete_timeout` | `KILN_HETZNER_DELETE_TIMEOUT_MS` | 120 000 ms |
/// | `page_size` | `KILN_HETZNER_PAGE_SIZE` | 50 (the API's maximum) |
/// | `journal_max_use` | `KILN_HETZNER_JOURNAL_MAX_USE` | `200M` |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HetznerSettings {
    /// Base URL of the API, up to and including `/v1` (tests point it at the fake).
    pub api_url: String,
    /// Server type for [`VmSize::Small`].
    pub server_type_small: String,
    /// Server type for [`VmSize::Medium`].
    pub server_type_medium: String,
    /// Server type for [`VmSize::Large`].
    pub server_type_large: String,
    /// Image every node boots (cloud-init and systemd required).
    pub image: String,
    /// Location when the node spec names none.
    pub location: String,
    /// Servers are named `{prefix}-{node id}`.
    pub server_name_prefix: String,
    /// Bound on establishing a connection to the API.
    pub connect_timeout: Duration,
    /// Bound on one API request (a request over it is a retryable failure).
    pub request_timeout: Duration,
    /// How often a running action (create, start, delete) is polled.
    pub poll_interval: Duration,
    /// How long `create` waits for a new server to run before giving up (retryable: a
    /// later `create` for the same node finds the server by its label and waits again).
    pub create_timeout: Duration,
    /// How long `destroy` waits for the delete action to finish.
    pub delete_timeout: Duration,
    /// Servers per page when listing (1–50).
    pub page_size: u32,
    /// journald's `SystemMaxUse=` on nodes (bounds the node agent's logs on disk).
    pub journal_max_use: String,
}

impl Default for HetznerSettings {
    fn default() -> Self {
        Self {
            api_url: DEFAULT_API_URL.into(),
            server_type_small: "cx23".into(),
            server_type_medium: "cx33".into(),
            server_type_large: "cx43".into(),
            image: "debian-12".into(),
            location: "nbg1".into(),
            server_name_prefix: "kiln".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            create_timeout: Duration::from_secs(300),
            delete_timeout: Duration::from_secs(120),
            page_size: 50,
            journal_max_use: "200M".into(),
        }
    }
}

impl HetznerSettings {
    /// The server type a node of `size` gets.
    #[must_use]
    pub fn server_type(&self, size: VmSize) -> &str {
        match size {
            VmSize::Small => &self.server_type_small,
            VmSize::Medium => &self.server_type_medium,
            VmSize::Large => &self.server_type_large,
        }
    }

    /// Reads the settings from the process environment (see the table above).
    ///
    /// # Errors
    /// A variable that is set but not valid (a non-number where milliseconds are expected).
    pub fn from_env() -> Result<Self, InvalidSetting> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the settings from `vars` (what [`from_env`](Self::from_env) does, testable).
    ///
    /// # Errors
    /// A variable that is set but not valid.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, InvalidSetting> {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(name, value)| name.starts_with("KILN_HETZNER_") && !value.trim().is_empty())
            .collect();
        let mut settings = Self::default();
        let text = |name: &str, field: &mut String| {
            if let Some(value) = vars.get(name) {
                *field = value.trim().to_owned();
            }
        };
        text("KILN_HETZNER_API_URL", &mut settings.api_url);
        text(
            "KILN_HETZNER_SERVER_TYPE_SMALL",
            &mut settings.server_type_small,
        );
        text(
            "KILN_HETZNER_SERVER_TYPE_MEDIUM",
            &mut settings.server_type_medium,
        );
        text(
            "KILN_HETZNER_SERVER_TYPE_LARGE",
            &mut settings.server_type_large,
        );
        text("KILN_HETZNER_IMAGE", &mut settings.image);
        text("KILN_HETZNER_LOCATION", &mut settings.location);
        text(
            "KILN_HETZNER_SERVER_NAME_PREFIX",
            &mut settings.server_name_prefix,
        );
        text(
            "KILN_HETZNER_JOURNAL_MAX_USE",
            &mut settings.journal_max_use,
        );
        let number = |name: &str| -> Result<Option<u64>, InvalidSetting> {
            vars.get(name)
                .map(|value| {
                    value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| invalid_setting(name, value))
                })
                .transpose()
        };
        for (name, field) in [
            (
                "KILN_HETZNER_CONNECT_TIMEOUT_MS",
                &mut settings.connect_timeout,
            ),
            (
                "KILN_HETZNER_REQUEST_TIMEOUT_MS",
                &mut settings.request_timeout,
            ),
            ("KILN_HETZNER_POLL_INTERVAL_MS", &mut settings.poll_interval),
            (
                "KILN_HETZNER_CREATE_TIMEOUT_MS",
                &mut settings.create_timeout,
            ),
            (
                "KILN_HETZNER_DELETE_TIMEOUT_MS",
                &mut settings.delete_timeout,
            ),
        ] {
            if let Some(ms) = number(name)? {
                *field = Duration::from_millis(ms);
            }
        }
        if let Some(size) = number("KILN_HETZNER_PAGE_SIZE")? {
            settings.page_size = u32::try_from(size)
                .ok()
                .filter(|s| (1..=50).contains(s))
                .ok_or_else(|| invalid_setting("KILN_HETZNER_PAGE_SIZE", &size.to_string()))?;
        }
        settings.api_url = settings.api_url.trim_end_matches('/').to_owned();
        Ok(settings)
    }
}

/// A setting whose variable is set to something that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is not valid: {expected}")]
pub struct InvalidSetting {
    /// The environment variable.
    pub name: String,
    /// What it was set to.
    pub value: String,
    /// What it should be.
    pub expected: &'static str,
}

fn invalid_setting(name: &str, value: &str) -> InvalidSetting {
    let expected = if name.ends_with("_PAGE_SIZE") {
        "a number from 1 to 50"
    } else {
        "a number of milliseconds"
    };
    InvalidSetting {
        name: name.into(),
        value: value.into(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let settings = HetznerSettings::from_vars(vars(&[("PATH", "/bin")])).unwrap();
        assert_eq!(settings, HetznerSettings::default());
        assert_eq!(settings.server_type(VmSize::Small), "cx23");
        assert_eq!(settings.server_type(VmSize::Large), "cx43");
    }

    #[test]
    fn every_variable_is_read() {
        let settings = HetznerSettings::from_vars(vars(&[
            ("KILN_HETZNER_API_URL", "http://127.0.0.1:9/v1/"),
            ("KILN_HETZNER_SERVER_TYPE_SMALL", "cpx11"),
            ("KILN_HETZNER_SERVER_TYPE_MEDIUM", "cpx21"),
            ("KILN_HETZNER_SERVER_TYPE_LARGE", "cpx31"),
            ("KILN_HETZNER_IMAGE", "ubuntu-24.04"),
            ("KILN_HETZNER_LOCATION", "fsn1"),
            ("KILN_HETZNER_SERVER_NAME_PREFIX", "k"),
            ("KILN_HETZNER_CONNECT_TIMEOUT_MS", "1"),
            ("KILN_HETZNER_REQUEST_TIMEOUT_MS", "2"),
            ("KILN_HETZNER_POLL_INTERVAL_MS", "3"),
            ("KILN_HETZNER_CREATE_TIMEOUT_MS", "4"),
            ("KILN_HETZNER_DELETE_TIMEOUT_MS", "5"),
            ("KILN_HETZNER_PAGE_SIZE", "7"),
            ("KILN_HETZNER_JOURNAL_MAX_USE", "1G"),
        ]))
        .unwrap();
        assert_eq!(settings.api_url, "http://127.0.0.1:9/v1");
        assert_eq!(settings.server_type(VmSize::Medium), "cpx21");
        assert_eq!(
            (
                settings.image.as_str(),
                settings.location.as_str(),
                settings.server_name_prefix.as_str()
            ),
            ("ubuntu-24.04", "fsn1", "k")
        );
        assert_eq!(settings.connect_timeout, Duration::from_millis(1));
        assert_eq!(settings.request_timeout, Duration::from_millis(2));
        assert_eq!(settings.poll_interval, Duration::from_millis(3));
        assert_eq!(settings.create_timeout, Duration::from_millis(4));
        assert_eq!(settings.delete_timeout, Duration::from_millis(5));
        assert_eq!(settings.page_size, 7);
        assert_eq!(settings.journal_max_use, "1G");
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        let err = HetznerSettings::from_vars(vars(&[("KILN_HETZNER_POLL_INTERVAL_MS", "soon")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("KILN_HETZNER_POLL_INTERVAL_MS"),
            "{err}"
        );
        let err =
            HetznerSettings::from_vars(vars(&[("KILN_HETZNER_PAGE_SIZE", "51")])).unwrap_err();
        assert!(err.to_string().contains("KILN_HETZNER_PAGE_SIZE"), "{err}");
    }
}
