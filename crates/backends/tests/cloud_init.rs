//! The generated `#cloud-config`: its content, its validity (`cloud-init schema` from
//! Debian's `cloud-init` package, installed by `scripts/test-deps.sh`), what YAML makes of
//! it, and its download script run for real against a loopback control plane.
#![cfg(feature = "hetzner")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kiln_backends::hetzner::cloud_init::{self, NODE_ENV_PATH};
use kiln_core::{NodeBootstrap, NodeId, NodeSpec, UserId, VmSize};

fn spec(env: &[(&str, &str)]) -> NodeSpec {
    NodeSpec {
        node_id: NodeId::new(),
        owner: UserId::new(),
        size: VmSize::Small,
        location: None,
        bootstrap: NodeBootstrap {
            control_plane_url: "https://kiln.example.com/".into(),
            callback_token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJub2RlIn0.c2lnbmF0dXJl".into(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        },
    }
}

/// Whether `tool` is on PATH; when it is not, fails under `KILN_REQUIRE_SERVICES=1` and
/// otherwise says loudly what is skipped.
fn tool_available(tool: &str, what: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let hint = format!("`{tool}` is not installed: run scripts/test-deps.sh to {what}");
        assert!(
            std::env::var("KILN_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{hint} (KILN_REQUIRE_SERVICES=1)"
        );
        eprintln!("SKIPPED: {hint}");
    }
    found
}

#[test]
fn the_user_data_installs_git_writes_the_settings_and_runs_the_agent_as_a_service() {
    let session = "0196f0c2-7d1e-7000-8000-000000000001";
    let spec = spec(&[
        ("PROJECT_ID", "0196f0c2-7d1e-7000-8000-000000000002"),
        ("CHAT_SESSION_ID", session),
    ]);
    let data = cloud_init::user_data(&spec, "150M").unwrap();

    assert!(data.starts_with("#cloud-config\n"));
    assert!(data.contains("packages:\n  - git\n"), "{data}");
    // The settings file, owner-only.
    let env_entry = data
        .split("  - path: ")
        .find(|e| e.starts_with(NODE_ENV_PATH))
        .expect("env file");
    assert!(env_entry.contains("permissions: \"0600\""), "{env_entry}");
    for line in [
        format!("NODE_ID='{}'", spec.node_id),
        "CONTROL_PLANE_URL='https://kiln.example.com'".to_owned(),
        format!("CALLBACK_TOKEN='{}'", spec.bootstrap.callback_token),
        format!("CHAT_SESSION_ID='{session}'"),
        "PROJECT_ID='0196f0c2-7d1e-7000-8000-000000000002'".to_owned(),
        "KILN_NODE_DATA_DIR='/var/lib/kiln-node'".to_owned(),
    ] {
        assert!(
            env_entry.contains(&format!("      {line}\n")),
            "missing {line} in {env_entry}"
        );
    }
    // The service: restarts on failure, reads the settings, journals with a size limit.
    for needle in [
        "EnvironmentFile=/etc/kiln/node.env",
        "ExecStart=/usr/local/bin/kiln-node",
        "Restart=on-failure",
        "StandardOutput=journal",
        "WantedBy=multi-user.target",
        "/etc/systemd/journald.conf.d/kiln.conf",
        "SystemMaxUse=150M",
        "  - [systemctl, enable, --now, kiln-node.service]",
        "/api/nodes/$NODE_ID/binary",
        "-H \"@$header\"",
    ] {
        assert!(data.contains(needle), "missing {needle:?} in\n{data}");
    }
    // The token appears once (in the 0600 env file), never on a command line.
    assert_eq!(data.matches(&spec.bootstrap.callback_token).count(), 1);

    let bare = cloud_init::user_data(&self::spec(&[]), "150M").unwrap();
    assert!(
        !bare.contains("PROJECT_ID") && !bare.contains("CHAT_SESSION_ID"),
        "only where given"
    );
}

#[test]
fn the_user_data_is_valid_cloud_config_and_yaml_reads_it_as_meant() {
    if !tool_available("cloud-init", "validate the generated cloud-config") {
        return;
    }
    let spec = spec(&[
        ("PROJECT_ID", "p"),
        (
            "KILN_AGENT_COMMAND",
            "npx -y @zed-industries/claude-code-acp",
        ),
    ]);
    let data = cloud_init::user_data(&spec, "200M").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("user-data.yaml");
    std::fs::write(&file, &data).unwrap();

    let schema = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&schema.stdout),
        String::from_utf8_lossy(&schema.stderr)
    );
    assert!(
        schema.status.success(),
        "cloud-init schema refused the user data:\n{said}\n{data}"
    );
    assert!(said.contains("Valid cloud-config"), "{said}");

    // The same YAML parser cloud-init uses (its own interpreter) must read back exactly the
    // env file and unit we meant.
    let interpreter = cloud_init_python();
    let parsed = Command::new(&interpreter)
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    let files: BTreeMap<String, serde_json::Value> = config["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_owned(), f.clone()))
        .collect();
    let env_file = &files[NODE_ENV_PATH];
    assert_eq!(env_file["permissions"], "0600");
    let expected: String = cloud_init::node_env(&spec)
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}='{v}'\n"))
        .collect();
    assert_eq!(env_file["content"], expected.as_str());
    assert!(
        files["/etc/systemd/system/kiln-node.service"]["content"]
            .as_str()
            .unwrap()
            .contains("\nRestart=on-failure\n")
    );
    assert_eq!(config["packages"][0], "git");
    assert_eq!(
        config["runcmd"].as_array().unwrap().last().unwrap(),
        &serde_json::json!(["systemctl", "enable", "--now", "kiln-node.service"])
    );
}

/// The interpreter in `cloud-init`'s shebang (it has PyYAML).
fn cloud_init_python() -> String {
    let path = Command::new("sh")
        .args(["-c", "command -v cloud-init"])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&path.stdout).trim().to_owned();
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.strip_prefix("#!"))
                .map(|l| l.trim().to_owned())
        })
        .filter(|l| Path::new(l).exists())
        .unwrap_or_else(|| "python3".into())
}

// The loopback control plane is axum, which comes with the `hetzner-fake` feature.
#[cfg(feature = "hetzner-fake")]
#[tokio::test]
async fn the_download_script_fetches_the_binary_with_the_nodes_token() {
    if !tool_available("curl", "run the node download script") {
        return;
    }
    use axum::extract::{Path as UrlPath, Query};
    use axum::http::{HeaderMap, StatusCode};

    // A loopback "control plane" serving the binary only to the node's own token.
    let app = axum::Router::new().route(
        "/api/nodes/{id}/binary",
        axum::routing::get(
            |UrlPath(id): UrlPath<String>,
             Query(q): Query<BTreeMap<String, String>>,
             headers: HeaderMap| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if auth != "Bearer node-token-7" || q.get("arch").is_none_or(String::is_empty) {
                    return (StatusCode::UNAUTHORIZED, Vec::new());
                }
                (
                    StatusCode::OK,
                    format!("#!/bin/sh\necho kiln-node for {id}\n").into_bytes(),
                )
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut spec = spec(&[]);
    spec.bootstrap.control_plane_url = format!("http://{addr}");
    spec.bootstrap.callback_token = "node-token-7".into();
    let data = cloud_init::user_data(&spec, "200M").unwrap();

    // Pull the script out of the user data and point its fixed paths into a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let script = extract_file(&data, "/usr/local/lib/kiln/install-node.sh")
        .replace(NODE_ENV_PATH, &format!("{root}/node.env"))
        .replace("/usr/local/bin/", &format!("{root}/"))
        .replace("/run/kiln", &format!("{root}/run"));
    std::fs::write(
        dir.path().join("node.env"),
        extract_file(&data, NODE_ENV_PATH),
    )
    .unwrap();
    std::fs::write(dir.path().join("install.sh"), &script).unwrap();

    let run = |dir: &Path| {
        let out = Command::new("sh")
            .arg(dir.join("install.sh"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || run(&dir)
    })
    .await
    .unwrap();
    assert!(ok, "install script failed: {stderr}\n{script}");
    let binary = dir.path().join("kiln-node");
    let content = std::fs::read_to_string(&binary).unwrap();
    assert_eq!(
        content,
        format!("#!/bin/sh\necho kiln-node for {}\n", spec.node_id)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    assert!(
        !dir.path().join("run/binary-auth-header").exists(),
        "the header file is removed"
    );
}

/// The content of the `write_files` entry for `path` (as [`cloud_init::user_data`] writes it).
#[cfg(feature = "hetzner-fake")]
fn extract_file(data: &str, path: &str) -> String {
    let mut lines = data
        .lines()
        .skip_while(|l| l.trim() != format!("- path: {path}"));
    lines
        .by_ref()
        .find(|l| l.trim() == "content: |")
        .expect("content");
    lines
        .map_while(|l| l.strip_prefix("      "))
        .map(|l| format!("{l}\n"))
        .collect()
}
