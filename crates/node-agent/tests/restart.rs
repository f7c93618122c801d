//! `kiln-node` killed with SIGKILL in the middle of delivering a stream of messages and
//! started again: every message it had acknowledged reaches the receiver, none is stored
//! twice, and the task's completion is reported again. (The kill comes after the agent's
//! turn, so no agent process is left orphaned; a restart during a turn is tested in-process
//! in `node_e2e.rs`.)

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;

use common::{NODE_TOKEN, bare_repo, start_fake};
use kiln_core::protocol::{NodeCommand, Prompt};
use kiln_core::{MessageId, NodeId, ProjectId, SessionId, TaskId, WorkspaceId};

/// Kills the node if the test panics, so no process outlives it.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_node(url: &str, node: NodeId, data: &Path) -> NodeProcess {
    let child = Command::new(env!("CARGO_BIN_EXE_kiln-node"))
        .env("NODE_ID", node.to_string())
        .env("CONTROL_PLANE_URL", url)
        .env("CALLBACK_TOKEN", NODE_TOKEN)
        .env("KILN_NODE_DATA_DIR", data)
        .env("KILN_AGENT_COMMAND", env!("CARGO_BIN_EXE_kiln-demo-agent"))
        .env("KILN_HEARTBEAT_INTERVAL_MS", "100")
        .env("KILN_POLL_WAIT_MS", "500")
        .env("KILN_RECONNECT_INITIAL_MS", "50")
        .env("KILN_RECONNECT_MAX_MS", "200")
        .env("MSG_BATCH_MAX_WAIT_MS", "50")
        .env("MSG_BATCH_MAX_SIZE", "5")
        .env("MSG_RETRY_INITIAL_INTERVAL_MS", "50")
        .env("MSG_RETRY_MAX_INTERVAL_MS", "100")
        .env("KILN_DEMO_MESSAGES", "40")
        .env("KILN_DEMO_PACE_MS", "10")
        .env("KILN_DEMO_CHUNK_CHARS", "40")
        .env("KILN_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kiln-node starts");
    NodeProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_and_restart_loses_and_duplicates_nothing() {
    let (fake, url) = start_fake().await;
    // The receiver takes one batch, then answers 503 so messages pile up in the outbox.
    fake.batches_left.store(1, Ordering::Relaxed);
    let data = tempfile::tempdir().unwrap();
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let node = NodeId::new();
    let mut child = spawn_node(&url, node, data.path());

    let (workspace, task, session) = (WorkspaceId::new(), TaskId::new(), SessionId::new());
    fake.push(NodeCommand::CreateWorkspace {
        workspace_id: workspace,
        project_id: Some(ProjectId::new()),
        session_id: Some(session),
        task_id: Some(task),
        repository_url: bare.display().to_string(),
        branch: Some(format!("task/{task}")),
        prompt: Some(Prompt {
            message_id: MessageId::for_task_prompt(task),
            text: "Stream a lot".into(),
        }),
        callback_token: "ws-token".into(),
        agent_hint: None,
        git_token: None,
    });
    // Mid-stream of delivery: the agent has finished (its process is stopped, so the kill
    // leaves no orphan), one batch was delivered and the rest waits in the outbox.
    fake.wait_for(30, "a backlog in the outbox after the turn", |i| {
        (!i.messages.is_empty()
            && i.events.iter().any(|e| {
                matches!(e, kiln_core::protocol::WorkspaceEvent::Completed { workspace_id, .. } if *workspace_id == workspace)
            })
            && i.heartbeats.last().is_some_and(|h| h.outbox.pending >= 10))
        .then_some(())
    })
    .await;
    child.0.kill().expect("SIGKILL");
    child.0.wait().unwrap();
    let delivered_before: BTreeSet<MessageId> = fake.messages().iter().map(|m| m.id).collect();

    // What the dead node had acknowledged but not delivered is on disk.
    let waiting: Vec<kiln_core::ChatMessage> = {
        let outbox = kiln_outbox::Outbox::open(
            data.path().join("outbox.sqlite"),
            kiln_outbox::OutboxConfig::default(),
        )
        .unwrap();
        outbox.pending_messages().unwrap()
    };
    assert!(!waiting.is_empty(), "the kill happened with a backlog");

    fake.batches_left.store(u64::MAX, Ordering::Relaxed);
    let mut child = spawn_node(&url, node, data.path());
    let stored = fake
        .wait_for(30, "the backlog after the restart", |i| {
            waiting
                .iter()
                .all(|m| i.ids.contains_key(&m.id))
                .then(|| i.messages.clone())
        })
        .await;
    // The restarted node says hello with the workspace it still has.
    fake.wait_for(10, "a hello listing the workspace", |i| {
        (i.hellos.len() >= 2
            && i.hellos
                .last()
                .unwrap()
                .workspaces
                .iter()
                .any(|w| w.workspace_id == workspace))
        .then_some(())
    })
    .await;
    // The completion is reported again (its first copy might have been lost with the process).
    fake.wait_for(10, "the completion reported again", |i| {
        (i.events
            .iter()
            .filter(|e| matches!(e, kiln_core::protocol::WorkspaceEvent::Completed { .. }))
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let _ = Command::new("kill").arg(child.0.id().to_string()).status();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean exit: {status}");

    // Nothing lost: every message delivered before or waiting on disk was stored, and the
    // session's sequence has no gap. Nothing duplicated: each id and each seq stored once.
    let ids: Vec<MessageId> = stored.iter().map(|m| m.id).collect();
    let unique: BTreeSet<MessageId> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len());
    assert!(delivered_before.iter().all(|id| unique.contains(id)));
    let mut seqs: Vec<i64> = stored
        .iter()
        .filter(|m| m.session_id == session)
        .map(|m| m.seq.unwrap())
        .collect();
    seqs.sort_unstable();
    let n = seqs.len() as i64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "contiguous, each once");
    assert_eq!(stored[0].id, MessageId::for_task_prompt(task));
    eprintln!(
        "restart test: {} delivered before the kill, {} waiting on disk, {} stored in total, {} redelivered duplicates skipped",
        delivered_before.len(),
        waiting.len(),
        stored.len(),
        fake.lock().duplicates
    );
}
