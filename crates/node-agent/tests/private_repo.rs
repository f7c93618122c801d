//! Private repositories: the whole agent host in-process against the fake control plane and
//! a loopback smart-HTTP git server (`git http-backend` behind HTTP basic auth) that wants
//! the project's token. With the token the task branch is pushed; without it, or with a
//! wrong one, the task fails with a clear message; the token shows up nowhere: not in the
//! checkout's `.git/config`, not in any file of the node's data directory, not in the node's
//! logs, not in the messages, deltas or events it sends (the demo agent echoes it). A node
//! that restarts in the middle of a task asks the control plane for the token again when
//! it pushes (and redacts it again), still without writing it anywhere; when it cannot get
//! it back, the task fails saying so.

mod common;
#[path = "common/git_http.rs"]
mod git_http;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Fake, NODE_TOKEN, bare_repo, git, start_fake};
use git_http::{Access, GitHttp};
use kiln_core::protocol::{NodeCommand, Prompt, WorkspaceEvent};
use kiln_core::secret::Secret;
use kiln_core::{MessageId, NodeId, ProjectId, Role, SessionId, SystemClock, TaskId, WorkspaceId};
use kiln_node::outbox::OutboxRoutes;
use kiln_node::{Node, NodeConfig};
use kiln_outbox::OutboxConfig;

const TOKEN: &str = "kiln-test-token-7d41c0ffee9a";

/// Everything the node logged (every test of this file), at debug level.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(move || LogWriter(writer.clone()))
            .try_init()
            .ok();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Run {
    fake: Fake,
    url: String,
    node_id: NodeId,
    data: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
    node: tokio::task::JoinHandle<kiln_node::Result<kiln_node::NodeExit>>,
}

/// A node whose agent echoes `say` (a node knows only its own secrets: another test's token
/// is just text to it).
async fn start_node(say: Option<&str>) -> Run {
    let (fake, url) = start_fake().await;
    let data = tempfile::tempdir().unwrap();
    start_node_in(fake, url, NodeId::new(), data, say, false).await
}

/// Stops the node (its agents go with it) and starts it again on the same data directory,
/// as after a crash or an upgrade of `kiln-node`.
async fn restart(run: Run, say: Option<&str>) -> Run {
    run.stop.send_replace(true);
    run.node.await.unwrap().unwrap();
    start_node_in(run.fake, run.url, run.node_id, run.data, say, false).await
}

/// `stall`: the agent stops after its plan (as a long turn would) until the node stops.
async fn start_node_in(
    fake: Fake,
    url: String,
    node_id: NodeId,
    data: tempfile::TempDir,
    say: Option<&str>,
    stall: bool,
) -> Run {
    let mut config = NodeConfig::new(node_id, &url, NODE_TOKEN, data.path());
    config.agent_command = env!("CARGO_BIN_EXE_kiln-demo-agent").to_owned();
    config.git_credential_helper = env!("CARGO_BIN_EXE_kiln-node").into();
    config.heartbeat_interval = Duration::from_millis(200);
    config.poll_wait = Duration::from_millis(500);
    // The agent echoes the token, split across chunks, as one that found it would.
    if let Some(say) = say {
        config.agent_env.insert("KILN_DEMO_SAY".into(), say.into());
    }
    config
        .agent_env
        .insert("KILN_DEMO_CHUNK_CHARS".into(), "5".into());
    if stall {
        config
            .agent_env
            .insert("KILN_DEMO_PACE_MS".into(), "600000".into());
    }
    let outbox = OutboxConfig {
        batch_max_wait: Duration::from_millis(50),
        retry_initial_interval: Duration::from_millis(50),
        retry_max_interval: Duration::from_millis(200),
        ..OutboxConfig::default()
    };
    // A previous node on this directory may still be closing its outbox.
    let mut attempts = 0;
    let routes = loop {
        match OutboxRoutes::open(
            &data.path().join("outbox.sqlite"),
            outbox.clone(),
            &url,
            Arc::new(SystemClock),
        ) {
            Ok(routes) => break routes,
            Err(e) if attempts < 50 => {
                attempts += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("outbox: {e}"),
        }
    };
    let node = Node::start(config, Arc::new(routes)).await.unwrap();
    let stop = node.stop_handle();
    let node = tokio::spawn(node.run());
    Run {
        fake,
        url,
        node_id,
        data,
        stop,
        node,
    }
}

struct Task {
    workspace: WorkspaceId,
    task: TaskId,
}

fn create(run: &Run, repository_url: &str, token: Option<&str>) -> Task {
    create_with(run, repository_url, token, "Add a greeting")
}

fn create_with(run: &Run, repository_url: &str, token: Option<&str>, prompt: &str) -> Task {
    let (workspace, task) = (WorkspaceId::new(), TaskId::new());
    run.fake.push(NodeCommand::CreateWorkspace {
        workspace_id: workspace,
        project_id: Some(ProjectId::new()),
        session_id: Some(SessionId::new()),
        task_id: Some(task),
        repository_url: repository_url.into(),
        branch: Some(format!("task/{task}")),
        prompt: Some(Prompt {
            message_id: MessageId::for_task_prompt(task),
            text: prompt.into(),
        }),
        callback_token: format!("ws-token-{workspace}"),
        agent_hint: None,
        git_token: token.map(Secret::new),
    });
    Task { workspace, task }
}

async fn terminal(fake: &Fake, workspace: WorkspaceId) -> WorkspaceEvent {
    fake.wait_for(90, "a terminal event", |inner| {
        inner
            .events
            .iter()
            .find(|e| {
                matches!(e,
                    WorkspaceEvent::Completed { workspace_id, .. }
                    | WorkspaceEvent::Failed { workspace_id, .. } if *workspace_id == workspace)
            })
            .cloned()
    })
    .await
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                stack.push(entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(path.display().to_string());
        }
    }
    found
}

fn branch_exists(bare: &Path, branch: &str) -> bool {
    std::process::Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args([
            "show-ref",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ])
        .status()
        .unwrap()
        .success()
}

/// Everything the node told the control plane (not the commands it was sent).
fn sent_to_control_plane(fake: &Fake) -> String {
    let inner = fake.lock();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        inner.events, inner.messages, inner.deltas, inner.hellos, inner.heartbeats
    )
}

fn assert_not_logged(secret: &str) {
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(!logs.is_empty(), "the node logged something");
    assert!(!logs.contains(secret), "the token is in the node's logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_token_the_branch_is_pushed_and_the_token_shows_up_nowhere() {
    logs();
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let server = GitHttp::start(repos.path().to_path_buf(), TOKEN, Access::Private).await;
    let repository_url = format!("{}/origin.git", server.url);
    let run = start_node(Some(TOKEN)).await;
    let t = create(&run, &repository_url, Some(TOKEN));

    let done = terminal(&run.fake, t.workspace).await;
    let WorkspaceEvent::Completed {
        branch: Some(branch),
        warning: None,
        summary: Some(summary),
        ..
    } = &done
    else {
        panic!("expected a clean completion, got {done:?}");
    };
    assert_eq!(branch, &format!("task/{}", t.task));
    assert!(branch_exists(&bare, branch), "the task branch is pushed");
    assert!(
        server.authorized() >= 2,
        "clone and push both authenticated: {:?}",
        server.log()
    );
    assert!(summary.ends_with("By the way: [redacted]."), "{summary}");

    // The echoed token reached the control plane only redacted.
    let messages = run
        .fake
        .wait_for(30, "the redacted answer", |inner| {
            inner
                .messages
                .iter()
                .any(|m| m.role == Role::Assistant && m.content.contains("By the way: [redacted]"))
                .then(|| inner.messages.clone())
        })
        .await;
    assert!(
        messages
            .iter()
            .any(|m| m.role == Role::System && m.content.contains("[redacted]")),
        "the thought that echoed it is stored, redacted: {messages:#?}"
    );
    let sent = sent_to_control_plane(&run.fake);
    assert!(!sent.contains(TOKEN), "the token reached the control plane");
    assert!(
        !run.fake.lock().deltas.is_empty(),
        "the answer also streamed as deltas"
    );

    // Nothing on the node's disk holds it: not the checkout's config, the record, the outbox.
    let checkout = run
        .data
        .path()
        .join("workspaces")
        .join(t.workspace.to_string())
        .join("checkout");
    let config = std::fs::read_to_string(checkout.join(".git/config")).unwrap();
    assert!(
        !config.contains(TOKEN) && !config.contains("credential"),
        "{config}"
    );
    assert!(
        config.contains(&format!("url = {repository_url}\n")),
        "{config}"
    );
    assert_eq!(
        git(&checkout, &["remote", "get-url", "origin"]).trim(),
        repository_url
    );
    assert_eq!(
        files_containing(run.data.path(), TOKEN),
        Vec::<String>::new()
    );
    let run_dir = run.data.path().join("run");
    assert_eq!(
        std::fs::read_dir(&run_dir).unwrap().count(),
        0,
        "no credential socket is left behind"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&run_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_not_logged(TOKEN);
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(
        logs.contains("kiln-demo: came across [redacted]"),
        "the agent's stderr is logged, redacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_a_refused_push_fails_the_task_with_a_clear_message() {
    logs();
    let repos = tempfile::tempdir().unwrap();
    let _bare = bare_repo(repos.path(), &[]);
    // Anyone may clone; only the token may push.
    let server = GitHttp::start(repos.path().to_path_buf(), TOKEN, Access::PublicRead).await;
    let repository_url = format!("{}/origin.git", server.url);
    let run = start_node(None).await;
    let t = create(&run, &repository_url, None);

    let done = terminal(&run.fake, t.workspace).await;
    let WorkspaceEvent::Failed { error, .. } = &done else {
        panic!("a refused push must fail the task, got {done:?}");
    };
    assert_eq!(
        error,
        &format!("git push refused: authentication failed for {repository_url}")
    );
    assert!(!branch_exists(
        &repos.path().join("origin.git"),
        &format!("task/{}", t.task)
    ));
    assert!(server.refused() >= 1, "{:?}", server.log());
    assert_not_logged(TOKEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_the_checkout_of_a_private_repository() {
    logs();
    let wrong = "kiln-wrong-token-31337abc";
    let repos = tempfile::tempdir().unwrap();
    let _bare = bare_repo(repos.path(), &[]);
    let server = GitHttp::start(repos.path().to_path_buf(), TOKEN, Access::Private).await;
    // A username in the URL is sent with the token; it never shows in the error.
    let repository_url = format!("{}/origin.git", server.url);
    let with_user = repository_url.replace("http://", "http://someone@");
    let run = start_node(Some(wrong)).await;
    let t = create(&run, &with_user, Some(wrong));

    let done = terminal(&run.fake, t.workspace).await;
    let WorkspaceEvent::Failed { error, .. } = &done else {
        panic!("expected a failure, got {done:?}");
    };
    assert_eq!(
        error,
        &format!(
            "workspace setup failed: git clone refused: authentication failed for {repository_url}"
        )
    );
    assert!(server.refused() >= 1);
    assert_eq!(server.authorized(), 0);
    assert!(!sent_to_control_plane(&run.fake).contains(wrong));
    assert_eq!(
        files_containing(run.data.path(), wrong),
        Vec::<String>::new()
    );
    assert_not_logged(wrong);
}

/// A task on a private repository whose agent is in the middle of its turn when the node
/// restarts: the restarted node continues the turn (a new agent process in the same
/// checkout), and that turn ends the task. With `forget_token`, the control plane no longer
/// has the token when the node asks again. Returns the task, how many requests the git
/// server had seen before the restart, and the event that ended the task.
async fn restart_mid_task(
    server: &GitHttp,
    forget_token: bool,
) -> (Run, Task, usize, WorkspaceEvent) {
    let repository_url = format!("{}/origin.git", server.url);
    let (fake, url) = start_fake().await;
    let data = tempfile::tempdir().unwrap();
    let run = start_node_in(fake, url, NodeId::new(), data, Some(TOKEN), true).await;
    let t = create_with(&run, &repository_url, Some(TOKEN), "Add a greeting");
    run.fake
        .wait_for(30, "the turn under way", |i| {
            i.messages
                .iter()
                .any(|m| m.tool.as_ref().is_some_and(|t| t.tool == "plan"))
                .then_some(())
        })
        .await;
    assert!(server.authorized() >= 1, "the clone used the token");
    let record = std::fs::read_to_string(
        run.data
            .path()
            .join(format!("workspaces/{}/workspace.json", t.workspace)),
    )
    .unwrap();
    assert!(record.contains("\"gitTokenGiven\": true"), "{record}");
    assert!(!record.contains(TOKEN), "{record}");
    assert_eq!(
        run.fake.lock().git_token_requests,
        0,
        "nobody asked before it was needed"
    );
    if forget_token {
        // The control plane no longer has a token for it (the project's was deleted).
        run.fake.lock().git_tokens.clear();
    }
    let git_requests = server.log().len();

    // A node that cannot get the token back cannot redact it either: there, the new agent
    // process comes across nothing to echo.
    let run = restart(run, (!forget_token).then_some(TOKEN)).await;
    let done = terminal(&run.fake, t.workspace).await;
    assert_eq!(
        run.fake
            .events()
            .iter()
            .filter(|e| matches!(e,
                WorkspaceEvent::Completed { workspace_id, .. }
                | WorkspaceEvent::Failed { workspace_id, .. } if *workspace_id == t.workspace))
            .count(),
        1,
        "the interrupted turn is not reported failed: {:?}",
        run.fake.events()
    );
    let notice = run
        .fake
        .wait_for(10, "the restart notice", |i| {
            i.messages
                .iter()
                .find(|m| m.role == Role::System && m.content.starts_with("kiln-node restarted"))
                .map(|m| m.content.clone())
        })
        .await;
    assert!(notice.ends_with("(attempt 1 of 2)"), "{notice}");
    (run, t, git_requests, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_asks_for_the_token_again_and_pushes_the_task_branch() {
    logs();
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let server = GitHttp::start(repos.path().to_path_buf(), TOKEN, Access::Private).await;
    let (run, t, _, done) = restart_mid_task(&server, false).await;

    let WorkspaceEvent::Completed {
        branch: Some(branch),
        warning: None,
        summary: Some(summary),
        ..
    } = &done
    else {
        panic!("the resumed task must complete and push, got {done:?}");
    };
    assert!(branch_exists(&bare, branch), "the task branch is pushed");
    assert!(
        server.authorized() >= 2,
        "clone and push both authenticated: {:?}",
        server.log()
    );
    assert!(
        run.fake.lock().git_token_requests >= 1,
        "the restarted node asked the control plane for the token"
    );
    // The token asked for again is redacted from what the new agent process says.
    assert!(summary.ends_with("By the way: [redacted]."), "{summary}");
    assert!(!sent_to_control_plane(&run.fake).contains(TOKEN));
    // Still nowhere on disk (the record says only that there was one) nor in the logs.
    assert_eq!(
        files_containing(run.data.path(), TOKEN),
        Vec::<String>::new()
    );
    let record = std::fs::read_to_string(
        run.data
            .path()
            .join(format!("workspaces/{}/workspace.json", t.workspace)),
    )
    .unwrap();
    assert!(record.contains("\"gitTokenGiven\": true"), "{record}");
    assert_not_logged(TOKEN);
    run.stop.send_replace(true);
    let _ = run.node.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_that_cannot_get_the_token_back_fails_the_push_saying_why() {
    logs();
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let server = GitHttp::start(repos.path().to_path_buf(), TOKEN, Access::Private).await;
    let (run, t, git_requests, done) = restart_mid_task(&server, true).await;

    let WorkspaceEvent::Failed { error, .. } = &done else {
        panic!("without its token the push cannot succeed, got {done:?}");
    };
    assert!(
        error.starts_with(
            "git push not attempted: the project's git token could not be fetched again from \
             the control plane after kiln-node restarted: control plane rejected the request (404)"
        ) && error.contains("no_git_token"),
        "{error}"
    );
    assert!(!branch_exists(&bare, &format!("task/{}", t.task)));
    assert_eq!(
        server.log().len(),
        git_requests,
        "no push was tried without the token: {:?}",
        server.log()
    );
    assert_eq!(
        files_containing(run.data.path(), TOKEN),
        Vec::<String>::new()
    );
    assert_not_logged(TOKEN);
    run.stop.send_replace(true);
    let _ = run.node.await;
}
