//! The `#cloud-config` user data that turns a fresh Hetzner server into a Kiln node.
//!
//! On first boot cloud-init, in order:
//!
//! 1. writes `/etc/kiln/node.env` (mode 0600): `NODE_ID`, `CONTROL_PLANE_URL`,
//!    `CALLBACK_TOKEN`, `KILN_NODE_DATA_DIR` and the spec's extra environment (for example
//!    `PROJECT_ID` and `CHAT_SESSION_ID` when the node is made for one task);
//! 2. writes `/usr/local/lib/kiln/install-node.sh`, the unit
//!    `/etc/systemd/system/kiln-node.service` (`Restart=on-failure`) and
//!    `/etc/systemd/journald.conf.d/kiln.conf` (`SystemMaxUse=` bounds the journal);
//! 3. installs `git`, `curl` and `ca-certificates`;
//! 4. restarts journald with the limit, downloads the control plane's own `kiln-node`
//!    build from `{CONTROL_PLANE_URL}/api/nodes/{NODE_ID}/binary?arch=$(uname -m)` with
//!    `Authorization: Bearer {CALLBACK_TOKEN}` (the header goes through a 0600 file under
//!    `/run`, never a command line), and enables and starts `kiln-node.service`.
//!
//! The only secret in the user data is the node's own short-lived callback token: extra
//! environment whose name looks like a credential (`*TOKEN*`, `*SECRET*`, `*PASSWORD*`,
//! `*_KEY`) is refused. Note that any process on the node can read its user data from the
//! metadata service, which is why nothing longer-lived may go there.
//!
//! [`parse_node_env`] reads the environment back out of generated user data, so a fake
//! provider can "boot" a server by starting a local `kiln-node` with it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kiln_core::NodeSpec;

/// Where the node's settings are written.
pub const NODE_ENV_PATH: &str = "/etc/kiln/node.env";
/// Where `kiln-node` keeps its state on the node (its outbox, its workspaces).
pub const NODE_DATA_DIR: &str = "/var/lib/kiln-node";
/// Where the binary is installed.
pub const NODE_BINARY_PATH: &str = "/usr/local/bin/kiln-node";
const INSTALL_SCRIPT_PATH: &str = "/usr/local/lib/kiln/install-node.sh";
const UNIT_PATH: &str = "/etc/systemd/system/kiln-node.service";
const JOURNALD_PATH: &str = "/etc/systemd/journald.conf.d/kiln.conf";
/// The variables Kiln sets itself; the spec's extra environment may not override them.
const RESERVED: &[&str] = &[
    "NODE_ID",
    "CONTROL_PLANE_URL",
    "CALLBACK_TOKEN",
    "KILN_NODE_DATA_DIR",
];

/// Why user data could not be generated or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloudInitError {
    /// A variable name is not `[A-Z_][A-Z0-9_]*`.
    #[error("environment variable name {0:?} is not valid (expected [A-Z_][A-Z0-9_]*)")]
    InvalidName(String),
    /// A value holds a quote, a backslash or a control character, which the env file
    /// cannot carry safely.
    #[error("the value of {0} holds a quote, backslash or control character")]
    UnsafeValue(String),
    /// The extra environment tries to set a variable Kiln sets itself.
    #[error("{0} is set by Kiln itself and cannot be overridden")]
    Reserved(String),
    /// The extra environment holds what looks like a credential.
    #[error("{0} looks like a credential; only the node's own callback token may go to a node")]
    Secret(String),
    /// The user data holds no node environment file (it was not made by [`user_data`]).
    #[error("no {NODE_ENV_PATH} in the user data")]
    NoEnvFile,
    /// A line of the node environment file is not `NAME='value'`.
    #[error("malformed line in {NODE_ENV_PATH}: {0:?}")]
    Malformed(String),
}

/// The environment `kiln-node` runs with on the node made for `spec`.
///
/// # Errors
/// A name or value the env file cannot carry, an override of Kiln's own variables, or an
/// extra variable that looks like a credential.
pub fn node_env(spec: &NodeSpec) -> Result<BTreeMap<String, String>, CloudInitError> {
    let mut env = BTreeMap::new();
    for (name, value) in &spec.bootstrap.env {
        check_name(name)?;
        if RESERVED.contains(&name.as_str()) {
            return Err(CloudInitError::Reserved(name.clone()));
        }
        if looks_like_secret(name) {
            return Err(CloudInitError::Secret(name.clone()));
        }
        env.insert(name.clone(), value.clone());
    }
    env.insert("NODE_ID".into(), spec.node_id.to_string());
    env.insert(
        "CONTROL_PLANE_URL".into(),
        spec.bootstrap
            .control_plane_url
            .trim_end_matches('/')
            .to_owned(),
    );
    env.insert(
        "CALLBACK_TOKEN".into(),
        spec.bootstrap.callback_token.clone(),
    );
    env.insert("KILN_NODE_DATA_DIR".into(), NODE_DATA_DIR.into());
    for (name, value) in &env {
        check_value(name, value)?;
    }
    Ok(env)
}

/// The `#cloud-config` user data for `spec` (see the [module documentation](self));
/// `journal_max_use` is journald's `SystemMaxUse=` (e.g. `200M`).
///
/// # Errors
/// As [`node_env`]; also a `journal_max_use` that is not a plain size.
pub fn user_data(spec: &NodeSpec, journal_max_use: &str) -> Result<String, CloudInitError> {
    let env = node_env(spec)?;
    if journal_max_use.is_empty() || !journal_max_use.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(CloudInitError::UnsafeValue("journal_max_use".into()));
    }
    let mut env_file = String::new();
    for (name, value) in &env {
        let _ = writeln!(env_file, "{name}='{value}'");
    }
    let journald =
        format!("[Journal]\nSystemMaxUse={journal_max_use}\nRuntimeMaxUse={journal_max_use}\n");

    let mut out = String::from("#cloud-config\n");
    let _ = writeln!(
        out,
        "# Kiln node {}: generated by kiln-backends. The only secret here is the node's own\n\
         # short-lived callback token.",
        spec.node_id
    );
    out.push_str("package_update: true\npackages:\n  - git\n  - curl\n  - ca-certificates\n");
    out.push_str("write_files:\n");
    write_file(&mut out, NODE_ENV_PATH, "0600", &env_file);
    write_file(&mut out, INSTALL_SCRIPT_PATH, "0700", &install_script());
    write_file(&mut out, UNIT_PATH, "0644", &unit());
    write_file(&mut out, JOURNALD_PATH, "0644", &journald);
    out.push_str("runcmd:\n");
    for command in [
        "[systemctl, restart, systemd-journald]".to_owned(),
        format!("[sh, {INSTALL_SCRIPT_PATH}]"),
        "[systemctl, daemon-reload]".to_owned(),
        "[systemctl, enable, --now, kiln-node.service]".to_owned(),
    ] {
        let _ = writeln!(out, "  - {command}");
    }
    Ok(out)
}

/// Reads the node environment back out of user data made by [`user_data`].
///
/// # Errors
/// [`CloudInitError::NoEnvFile`] when there is none, [`CloudInitError::Malformed`] for a
/// line that is not `NAME='value'`.
pub fn parse_node_env(user_data: &str) -> Result<BTreeMap<String, String>, CloudInitError> {
    let mut lines = user_data.lines();
    lines
        .by_ref()
        .find(|line| line.trim() == format!("- path: {NODE_ENV_PATH}"))
        .ok_or(CloudInitError::NoEnvFile)?;
    lines
        .by_ref()
        .find(|line| line.trim() == "content: |")
        .ok_or(CloudInitError::NoEnvFile)?;
    let mut env = BTreeMap::new();
    for line in lines {
        let Some(entry) = line.strip_prefix("      ") else {
            break;
        };
        let (name, quoted) = entry
            .split_once('=')
            .ok_or_else(|| CloudInitError::Malformed(entry.to_owned()))?;
        let value = quoted
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .ok_or_else(|| CloudInitError::Malformed(entry.to_owned()))?;
        check_name(name)?;
        env.insert(name.to_owned(), value.to_owned());
    }
    Ok(env)
}

/// The URL the node downloads its `kiln-node` binary from (before the `arch` query).
#[must_use]
pub fn binary_url(control_plane_url: &str, node_id: kiln_core::NodeId) -> String {
    format!(
        "{}/api/nodes/{node_id}/binary",
        control_plane_url.trim_end_matches('/')
    )
}

fn write_file(out: &mut String, path: &str, permissions: &str, content: &str) {
    let _ = writeln!(out, "  - path: {path}");
    let _ = writeln!(out, "    owner: \"root:root\"");
    let _ = writeln!(out, "    permissions: \"{permissions}\"");
    out.push_str("    content: |\n");
    for line in content.lines() {
        let _ = writeln!(out, "      {line}");
    }
}

fn install_script() -> String {
    format!(
        r#"#!/bin/sh
# Downloads this node's kiln-node from the control plane, authenticated with the node's
# own callback token (passed to curl in a 0600 file, never on a command line).
set -eu
set -a
. {NODE_ENV_PATH}
set +a
umask 077
mkdir -p /run/kiln
header=/run/kiln/binary-auth-header
partial={NODE_BINARY_PATH}.download
trap 'rm -f "$header" "$partial"' EXIT
printf 'Authorization: Bearer %s\n' "$CALLBACK_TOKEN" > "$header"
curl --fail --silent --show-error --location --connect-timeout 10 --max-time 600 \
  --retry 30 --retry-delay 5 --retry-all-errors -H "@$header" -o "$partial" \
  "$CONTROL_PLANE_URL/api/nodes/$NODE_ID/binary?arch=$(uname -m)"
chmod 0755 "$partial"
mv "$partial" {NODE_BINARY_PATH}
"#
    )
}

fn unit() -> String {
    format!(
        "[Unit]
Description=Kiln node agent
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
EnvironmentFile={NODE_ENV_PATH}
StateDirectory=kiln-node
ExecStart={NODE_BINARY_PATH}
Restart=on-failure
RestartSec=5s
StandardOutput=journal
StandardError=journal
SyslogIdentifier=kiln-node

[Install]
WantedBy=multi-user.target
"
    )
}

fn check_name(name: &str) -> Result<(), CloudInitError> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(CloudInitError::InvalidName(name.to_owned()))
    }
}

fn check_value(name: &str, value: &str) -> Result<(), CloudInitError> {
    if value
        .chars()
        .any(|c| c == '\'' || c == '\\' || c.is_control())
    {
        Err(CloudInitError::UnsafeValue(name.to_owned()))
    } else {
        Ok(())
    }
}

fn looks_like_secret(name: &str) -> bool {
    ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"]
        .iter()
        .any(|word| name.contains(word))
        || name.ends_with("_KEY")
        || name == "KEY"
}

#[cfg(test)]
mod tests {
    use kiln_core::{NodeBootstrap, NodeId, UserId, VmSize};

    use super::*;

    fn spec(env: &[(&str, &str)]) -> NodeSpec {
        NodeSpec {
            node_id: NodeId::new(),
            owner: UserId::new(),
            size: VmSize::Small,
            location: None,
            bootstrap: NodeBootstrap {
                control_plane_url: "https://kiln.example/".into(),
                callback_token: "eyJ.token.sig".into(),
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            },
        }
    }

    #[test]
    fn the_env_round_trips_through_the_user_data() {
        let spec = spec(&[
            ("PROJECT_ID", "p-1"),
            ("KILN_AGENT_COMMAND", "npx @zed/agent --x"),
        ]);
        let data = user_data(&spec, "200M").unwrap();
        let env = parse_node_env(&data).unwrap();
        assert_eq!(env, node_env(&spec).unwrap());
        assert_eq!(env["CONTROL_PLANE_URL"], "https://kiln.example");
        assert_eq!(env["KILN_AGENT_COMMAND"], "npx @zed/agent --x");
    }

    #[test]
    fn unsafe_or_secret_environment_is_refused() {
        type IsExpected = fn(&CloudInitError) -> bool;
        let cases: [(&str, &str, IsExpected); 5] = [
            ("lower", "x", |e| {
                matches!(e, CloudInitError::InvalidName(_))
            }),
            ("NOTE", "it's", |e| {
                matches!(e, CloudInitError::UnsafeValue(_))
            }),
            ("NOTE", "a\nb", |e| {
                matches!(e, CloudInitError::UnsafeValue(_))
            }),
            ("NODE_ID", "other", |e| {
                matches!(e, CloudInitError::Reserved(_))
            }),
            ("ANTHROPIC_API_KEY", "sk", |e| {
                matches!(e, CloudInitError::Secret(_))
            }),
        ];
        for (name, value, expected) in cases {
            let error = user_data(&spec(&[(name, value)]), "200M").unwrap_err();
            assert!(expected(&error), "{name}={value:?} gave {error:?}");
        }
        let mut bad_token = spec(&[]);
        bad_token.bootstrap.callback_token = "x'; rm -rf /".into();
        assert!(
            matches!(user_data(&bad_token, "200M"), Err(CloudInitError::UnsafeValue(n)) if n == "CALLBACK_TOKEN")
        );
        assert!(user_data(&spec(&[]), "2 G").is_err());
    }

    #[test]
    fn foreign_user_data_has_no_env() {
        assert_eq!(
            parse_node_env("#cloud-config\nruncmd: []\n"),
            Err(CloudInitError::NoEnvFile)
        );
    }
}
