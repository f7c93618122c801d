//! The local provider with real `kiln-node` processes: the conformance suite, what a node
//! is started with, and that a restarted server finds its nodes and destroy stops them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_backends::local::{LocalConfig, LocalProvider};
use kiln_core::{
    NodeBootstrap, NodeId, NodeProvider, NodeSpec, ProviderNodeStatus, UserId, VmSize,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The `kiln-node` binary of this workspace, built on demand when `cargo test -p
/// kiln-backends` ran without it.
fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bin = target.join("kiln-node");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "kiln-node",
                "--bin",
                "kiln-node",
                "--bin",
                "kiln-demo-agent",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building kiln-node failed");
    }
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

fn provider(base: &std::path::Path) -> LocalProvider {
    let mut config = LocalConfig::new(base);
    config.node_binary = node_binary();
    config.stop_grace = Duration::from_secs(3);
    LocalProvider::new(config)
}

fn spec(url: &str) -> NodeSpec {
    NodeSpec {
        node_id: NodeId::new(),
        owner: UserId::new(),
        size: VmSize::Small,
        location: None,
        bootstrap: NodeBootstrap {
            control_plane_url: url.into(),
            callback_token: "local-token".into(),
            env: BTreeMap::from([("KILN_RECONNECT_MAX_MS".to_owned(), "200".to_owned())]),
        },
    }
}

fn pid_of(base: &std::path::Path, node: NodeId) -> u32 {
    let file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(base.join(node.to_string()).join("node.json")).unwrap(),
    )
    .unwrap();
    u32::try_from(file["pid"].as_u64().unwrap()).unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_provider_passes_the_provider_suite() {
    let base = tempfile::tempdir().unwrap();
    kiln_core::conformance::provider_suite(Arc::new(provider(base.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_with_its_bootstrap_survives_a_server_restart_and_is_destroyed() {
    // A raw TCP listener stands in for the control plane: the node's first request must be
    // its hello, authenticated with the bootstrap token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let base = tempfile::tempdir().unwrap();
    let first = provider(base.path());
    let spec = spec(&url);
    let made = first.create(&spec).await.unwrap();
    assert_eq!(made.status, ProviderNodeStatus::Running);

    let (socket, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .expect("the node connects")
        .unwrap();
    let mut lines = BufReader::new(socket).lines();
    let request_line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(
        request_line,
        format!("POST /api/nodes/{}/hello HTTP/1.1", spec.node_id)
    );
    let mut auth = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            auth = Some(value.trim().to_owned());
        }
    }
    assert_eq!(auth.as_deref(), Some("Bearer local-token"));
    let node_dir = base.path().join(spec.node_id.to_string());
    assert!(
        node_dir.join("data/workspaces").is_dir(),
        "the node uses its own data dir"
    );
    let pid = pid_of(base.path(), spec.node_id);
    assert!(alive(pid));

    // A new provider over the same directory (a restarted server) finds the node running.
    drop(first);
    let second = provider(base.path());
    let listed = second.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].node_id, Some(spec.node_id));
    assert_eq!(listed[0].owner, Some(spec.owner));
    assert_eq!(listed[0].status, ProviderNodeStatus::Running);

    // Creating it again returns the same process.
    let again = second.create(&spec).await.unwrap();
    assert_eq!(again.provider_id, made.provider_id);
    assert_eq!(pid_of(base.path(), spec.node_id), pid);

    second.destroy(&made.provider_id).await.unwrap();
    assert!(!node_dir.exists(), "destroy removes the node's directory");
    // The node is gone (a zombie until its parent, this test, reaps it).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!alive(pid), "the process stopped");
    second.destroy(&made.provider_id).await.unwrap();
    assert!(second.get(&made.provider_id).await.unwrap().is_none());
    assert!(second.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_missing_binary_is_a_permanent_error() {
    let base = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new(base.path());
    config.node_binary = base.path().join("no-such-kiln-node");
    let provider = LocalProvider::new(config);
    let err = provider
        .create(&spec("http://127.0.0.1:9"))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("KILN_NODE_BIN"), "{err}");
}
