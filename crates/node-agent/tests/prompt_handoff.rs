//! `kiln-node` killed with SIGKILL after it acknowledged a prompt command to the control
//! plane (which then forgets the command) but before the prompt's workspace took it: the
//! restarted node still runs the prompt, once. The workspace is kept busy in that window the
//! way a real one is: it continues a turn a restart interrupted and waits for its git token,
//! which the control plane is slow to give back.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;

use common::{Fake, NODE_TOKEN, start_fake};
use kiln_core::protocol::{NodeCommand, Prompt};
use kiln_core::secret::Secret;
use kiln_core::{ChatMessage, MessageId, NodeId, ProjectId, Role, SessionId, WorkspaceId};

/// Kills the node if the test panics, so no process outlives it.
struct NodeProcess(Child);

impl NodeProcess {
    /// SIGTERM: the node stops its agents and exits cleanly.
    fn terminate(mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "SIGTERM is a clean exit: {status}");
    }

    /// SIGKILL: nothing runs after it.
    fn kill(mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().unwrap();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_node(url: &str, node: NodeId, data: &Path, extra: &[(&str, &str)]) -> NodeProcess {
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
        .env("MSG_RETRY_INITIAL_INTERVAL_MS", "50")
        .env("MSG_RETRY_MAX_INTERVAL_MS", "100")
        .env("KILN_LOG", "error")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kiln-node starts");
    NodeProcess(child)
}

fn prompt(chat: WorkspaceId, message_id: MessageId, text: &str) -> NodeCommand {
    NodeCommand::Prompt {
        workspace_id: chat,
        prompt: Prompt {
            message_id,
            text: text.into(),
        },
    }
}

async fn wait_for_answer(fake: &Fake, what: &str, text: &str) -> Vec<ChatMessage> {
    fake.wait_for(30, what, |i| {
        i.messages
            .iter()
            .any(|m| m.role == Role::Assistant && m.content.contains(text))
            .then(|| i.messages.clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_acknowledged_but_not_yet_taken_by_its_workspace_runs_after_a_sigkill() {
    let (fake, url) = start_fake().await;
    let data = tempfile::tempdir().unwrap();
    let node = NodeId::new();

    // A chat whose first turn is under way (the agent stalls after its plan) when the node
    // stops: the next start continues that turn, and first asks for the git token again.
    let stalling = [("KILN_DEMO_PACE_MS", "600000")];
    let child = spawn_node(&url, node, data.path(), &stalling);
    let (chat, session, first) = (WorkspaceId::new(), SessionId::new(), MessageId::new());
    fake.push(NodeCommand::CreateWorkspace {
        workspace_id: chat,
        project_id: Some(ProjectId::new()),
        session_id: Some(session),
        task_id: None,
        repository_url: String::new(),
        branch: None,
        prompt: Some(Prompt {
            message_id: first,
            text: "First request".into(),
        }),
        callback_token: format!("chat-token-{chat}"),
        agent_hint: None,
        git_token: Some(Secret::new("chat-git-token")),
    });
    fake.wait_for(30, "the first turn under way", |i| {
        i.messages
            .iter()
            .any(|m| m.tool.as_ref().is_some_and(|t| t.tool == "plan"))
            .then_some(())
    })
    .await;
    child.terminate();

    // The node starts again; its workspace waits for the git token, so it takes no command.
    fake.git_token_stalled.store(true, Ordering::Relaxed);
    let requests = fake.lock().git_token_requests;
    let child = spawn_node(&url, node, data.path(), &[]);
    fake.wait_for(30, "the workspace asking for its git token", |i| {
        (i.git_token_requests > requests).then_some(())
    })
    .await;
    let follow_up = MessageId::new();
    let seq = fake.push(prompt(chat, follow_up, "Follow-up request"));
    // The node acknowledged the prompt: a control plane forgets it now.
    fake.wait_for(30, "the prompt acknowledged", |i| {
        i.polled_after
            .iter()
            .any(|after| *after >= seq)
            .then_some(())
    })
    .await;
    child.kill();
    assert!(
        !fake.messages().iter().any(|m| m.id == follow_up),
        "the prompt had not reached the agent"
    );

    // Started again, with the control plane answering: the acknowledged prompt is not sent
    // again, yet it runs after the continued turn.
    fake.git_token_stalled.store(false, Ordering::Relaxed);
    let child = spawn_node(&url, node, data.path(), &[]);
    let messages = wait_for_answer(&fake, "the follow-up's answer", "Follow-up request").await;
    let users: Vec<(MessageId, &str)> = messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| (m.id, m.content.as_str()))
        .collect();
    assert_eq!(
        users,
        [(first, "First request"), (follow_up, "Follow-up request")],
        "{messages:#?}"
    );
    let answers: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(answers.len(), 2, "one turn each: {answers:#?}");
    assert!(answers[0].contains("restarted"), "{answers:#?}");
    assert!(
        !fake.lock().commands.iter().any(|c| c.seq > seq),
        "the control plane sent nothing more"
    );
    assert_eq!(fake.lock().duplicates, 0);
    child.terminate();
}
