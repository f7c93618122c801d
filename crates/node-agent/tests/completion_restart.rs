//! `kiln-node` killed with SIGKILL after a task's last turn ended but before the task's
//! completion was reported (while it commits and pushes `task/<id>`): the restarted node
//! completes the task — its work on the branch, the task reported `completed` with the
//! agent's answer — instead of waiting for a prompt that never comes while its workspace
//! shows in every heartbeat. A hook of the bare repository holds the first push until the
//! node is dead, so the kill lands in that window every time.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Fake, NODE_TOKEN, bare_repo, git, start_fake};
use kiln_core::protocol::{NodeCommand, Prompt, WorkspaceEvent};
use kiln_core::{MessageId, NodeId, ProjectId, Role, SessionId, TaskId, WorkspaceId};

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
        .env("MSG_RETRY_INITIAL_INTERVAL_MS", "50")
        .env("MSG_RETRY_MAX_INTERVAL_MS", "100")
        .env("KILN_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kiln-node starts");
    NodeProcess(child)
}

/// The server-side hook of a bare repository that holds the first push until the test
/// releases it (later pushes go through at once).
struct PushGate {
    /// Written when the first push reaches the hook.
    held: PathBuf,
    /// Written by the test to let it go.
    release: PathBuf,
    /// Written when the hook lets it go.
    released: PathBuf,
}

impl PushGate {
    /// Installs `hook` (`pre-receive`: the held push is then refused, nothing lands;
    /// `post-receive`: the branch has landed at the remote while the push is held).
    fn install(bare: &Path, dir: &Path, hook: &str) -> Self {
        let gate = Self {
            held: dir.join("push-held"),
            release: dir.join("push-release"),
            released: dir.join("push-released"),
        };
        let script = format!(
            "#!/bin/sh\n\
             [ -e '{held}' ] && exit 0\n\
             : > '{held}'\n\
             while [ ! -e '{release}' ]; do sleep 0.02; done\n\
             : > '{released}'\n\
             exit 1\n",
            held = gate.held.display(),
            release = gate.release.display(),
            released = gate.released.display(),
        );
        let hooks = bare.join("hooks");
        std::fs::create_dir_all(&hooks).unwrap();
        let path = hooks.join(hook);
        std::fs::write(&path, script).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        gate
    }
}

/// The node's record of `workspace`, as JSON.
fn record_of(data: &Path, workspace: WorkspaceId) -> serde_json::Value {
    let bytes = std::fs::read(data.join(format!("workspaces/{workspace}/workspace.json")))
        .expect("the workspace record");
    serde_json::from_slice(&bytes).unwrap()
}

fn ends(e: &WorkspaceEvent, ws: WorkspaceId) -> bool {
    matches!(e,
        WorkspaceEvent::Completed { workspace_id, .. }
        | WorkspaceEvent::Failed { workspace_id, .. }
        | WorkspaceEvent::Cancelled { workspace_id, .. } if *workspace_id == ws)
}

/// Runs a task whose completion push `hook` holds, SIGKILLs the node there, lets the held
/// push go, starts the node again and checks that it completes the task with its work on
/// `task/<id>`, in one commit.
async fn a_node_killed_while_pushing_completes_the_task_after_its_restart(hook: &str) {
    let (fake, url) = start_fake().await;
    let data = tempfile::tempdir().unwrap();
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let gate = PushGate::install(&bare, repos.path(), hook);
    let node = NodeId::new();
    let child = spawn_node(&url, node, data.path());

    let (workspace, task) = (WorkspaceId::new(), TaskId::new());
    let branch = format!("task/{task}");
    fake.push(NodeCommand::CreateWorkspace {
        workspace_id: workspace,
        project_id: Some(ProjectId::new()),
        session_id: Some(SessionId::new()),
        task_id: Some(task),
        repository_url: bare.display().to_string(),
        branch: Some(branch.clone()),
        prompt: Some(Prompt {
            message_id: MessageId::for_task_prompt(task),
            text: "Add a greeting".into(),
        }),
        callback_token: format!("ws-token-{workspace}"),
        agent_hint: None,
        git_token: None,
    });
    fake.wait_for(30, "the completion's push held", |_| {
        gate.held.exists().then_some(())
    })
    .await;
    // The window: the turn's end is saved, the completion is not, nothing was reported.
    let record = record_of(data.path(), workspace);
    assert_eq!(record["status"], "running", "{record:#}");
    assert_eq!(record["turnActive"], false, "{record:#}");
    assert!(record["lastEvent"].is_null(), "{record:#}");
    assert!(!fake.events().iter().any(|e| ends(e, workspace)));
    child.kill();
    std::fs::write(&gate.release, "").unwrap();
    fake.wait_for(30, "the held push let go", |_| {
        gate.released.exists().then_some(())
    })
    .await;

    let child = spawn_node(&url, node, data.path());
    let done = fake
        .wait_event("the task's end after the restart", |e| ends(e, workspace))
        .await;
    let WorkspaceEvent::Completed {
        branch: Some(reported),
        warning: None,
        summary: Some(summary),
        ..
    } = &done
    else {
        panic!("the task must complete after the restart, got {done:?}");
    };
    assert_eq!(reported, &branch);
    // The summary is the agent's answer of the turn before the kill.
    assert!(
        summary.starts_with("Done: I wrote `KILN_DEMO.md`"),
        "{summary}"
    );
    let answer = answer_of(&fake).await;
    assert_eq!(summary, &answer);

    // The work is on the task branch at the remote, in one commit.
    let note = git(&bare, &["show", &format!("{branch}:KILN_DEMO.md")]);
    assert!(note.contains("Add a greeting"), "{note}");
    let commits = git(&bare, &["rev-list", "--count", &format!("main..{branch}")]);
    assert_eq!(commits.trim(), "1", "one commit holds the task's work");
    let checkout = data.path().join(format!("workspaces/{workspace}/checkout"));
    assert_eq!(
        git(&bare, &["rev-parse", &branch]),
        git(&checkout, &["rev-parse", "HEAD"]),
        "the remote has the checkout's last commit"
    );

    // Reported once, and the record now settles it for any later restart.
    let ended: Vec<WorkspaceEvent> = fake
        .events()
        .into_iter()
        .filter(|e| ends(e, workspace))
        .collect();
    assert_eq!(ended.len(), 1, "{ended:#?}");
    let record = record_of(data.path(), workspace);
    assert_eq!(record["status"], "completed", "{record:#}");
    assert!(record["completionPending"].is_null(), "{record:#}");
    child.terminate();
}

/// The agent's (one) answer, once it reached the receiver.
async fn answer_of(fake: &Fake) -> String {
    fake.wait_for(30, "the agent's answer", |i| {
        i.messages
            .iter()
            .rfind(|m| m.role == Role::Assistant)
            .map(|m| m.content.clone())
    })
    .await
}

/// Killed before the push landed: the restarted node pushes the committed work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_before_its_push_landed_pushes_and_completes_the_task_after_its_restart() {
    a_node_killed_while_pushing_completes_the_task_after_its_restart("pre-receive").await;
}

/// Killed after the push landed at the remote but before the node heard so: the restarted
/// node commits nothing new, pushes again (already there) and completes the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_after_its_push_landed_completes_the_task_after_its_restart() {
    a_node_killed_while_pushing_completes_the_task_after_its_restart("post-receive").await;
}
