//! The whole agent host in-process against a fake control plane: real HTTP on 127.0.0.1,
//! real git, the real demo agent process, the real SQLite outbox.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Fake, NODE_TOKEN, bare_repo, git, start_fake};
use kiln_core::protocol::{NodeCommand, Prompt, WorkspaceEvent};
use kiln_core::{MessageId, NodeId, ProjectId, Role, SessionId, SystemClock, TaskId, WorkspaceId};
use kiln_node::outbox::OutboxRoutes;
use kiln_node::{Node, NodeConfig, NodeExit};
use kiln_outbox::OutboxConfig;

struct Running {
    fake: Fake,
    data: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
    node: tokio::task::JoinHandle<kiln_node::Result<NodeExit>>,
}

fn config(url: &str, data: &Path) -> NodeConfig {
    let mut config = NodeConfig::new(NodeId::new(), url, NODE_TOKEN, data);
    config.agent_command = env!("CARGO_BIN_EXE_kiln-demo-agent").to_owned();
    config.heartbeat_interval = Duration::from_millis(200);
    config.poll_wait = Duration::from_millis(500);
    config.reconnect_initial = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(400);
    config.destroy_drain = Duration::from_secs(5);
    config
}

async fn start_node_with(fake: Fake, url: &str, tweak: impl FnOnce(&mut NodeConfig)) -> Running {
    start_node_in(fake, url, tempfile::tempdir().unwrap(), tweak).await
}

async fn start_node_in(
    fake: Fake,
    url: &str,
    data: tempfile::TempDir,
    tweak: impl FnOnce(&mut NodeConfig),
) -> Running {
    let mut config = config(url, data.path());
    tweak(&mut config);
    let outbox_config = OutboxConfig {
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
            outbox_config.clone(),
            url,
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
    Running {
        fake,
        data,
        stop,
        node,
    }
}

async fn start_node() -> Running {
    let (fake, url) = start_fake().await;
    start_node_with(fake, &url, |_| {}).await
}

struct TaskCommand {
    workspace: WorkspaceId,
    task: TaskId,
    session: SessionId,
    command: NodeCommand,
}

fn task_command(repo: &Path, prompt: &str) -> TaskCommand {
    let workspace = WorkspaceId::new();
    let task = TaskId::new();
    let session = SessionId::new();
    let command = NodeCommand::CreateWorkspace {
        workspace_id: workspace,
        project_id: Some(ProjectId::new()),
        session_id: Some(session),
        task_id: Some(task),
        repository_url: repo.display().to_string(),
        branch: Some(format!("task/{task}")),
        prompt: Some(Prompt {
            message_id: MessageId::for_task_prompt(task),
            text: prompt.into(),
        }),
        callback_token: format!("ws-token-{workspace}"),
        agent_hint: None,
        git_token: None,
    };
    TaskCommand {
        workspace,
        task,
        session,
        command,
    }
}

fn is_terminal(e: &WorkspaceEvent, ws: WorkspaceId) -> bool {
    matches!(e,
        WorkspaceEvent::Completed { workspace_id, .. }
        | WorkspaceEvent::Failed { workspace_id, .. }
        | WorkspaceEvent::Cancelled { workspace_id, .. } if *workspace_id == ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_end_to_end_commits_pushes_and_is_destroyed() {
    let run = start_node().await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let t = task_command(&bare, "Add a greeting");
    run.fake.push(t.command);

    let done = run
        .fake
        .wait_event("completion", |e| is_terminal(e, t.workspace))
        .await;
    let WorkspaceEvent::Completed {
        branch,
        summary,
        warning,
        pr_url,
        ..
    } = done
    else {
        panic!("expected completed, got {done:?}")
    };
    let expected_branch = format!("task/{}", t.task);
    assert_eq!(branch.as_deref(), Some(expected_branch.as_str()));
    assert_eq!(warning, None);
    assert_eq!(pr_url, None);
    let summary = summary.expect("summary");
    assert!(
        summary.starts_with("Done: I wrote `KILN_DEMO.md`"),
        "{summary}"
    );

    // The events came in order: started (with the branch) before completed.
    let events = run.fake.events();
    assert!(
        matches!(&events[0], WorkspaceEvent::AgentStarted { branch: Some(b), .. } if *b == expected_branch),
        "{events:?}"
    );

    // Every message reached the receiver once, in order, with its roles and tool metadata.
    let messages = run
        .fake
        .wait_for(10, "six messages", |i| {
            (i.messages.len() >= 6).then(|| i.messages.clone())
        })
        .await;
    let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::User,
            Role::System,
            Role::System,
            Role::Tool,
            Role::Tool,
            Role::Assistant
        ]
    );
    assert!(messages.iter().all(|m| m.session_id == t.session));
    assert_eq!(
        messages[0].id,
        MessageId::for_task_prompt(t.task),
        "the prompt keeps the task's prompt id"
    );
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    let tool = messages[4].tool.clone().unwrap();
    assert_eq!(
        (
            tool.tool.as_str(),
            tool.target.as_deref(),
            tool.status.as_deref()
        ),
        ("edit", Some("KILN_DEMO.md"), Some("completed"))
    );
    assert_eq!(run.fake.lock().duplicates, 0);
    assert_eq!(
        run.fake.lock().rejected_auth,
        0,
        "deliveries carry the workspace token"
    );

    // Live deltas carried the answer under the id it was stored with.
    let answer = &messages[5];
    let streamed: String = run
        .fake
        .lock()
        .deltas
        .iter()
        .filter(|d| d.segment_id == answer.id)
        .map(|d| d.text.as_str())
        .collect();
    assert_eq!(streamed, answer.content);

    // The file is committed on the task branch by the Kiln Agent and pushed.
    let log = git(
        &bare,
        &[
            "log",
            "--format=%an|%s",
            &expected_branch,
            "--",
            "KILN_DEMO.md",
        ],
    );
    assert!(log.starts_with("Kiln Agent|kiln: Add a greeting"), "{log}");
    let file = git(&bare, &["show", &format!("{expected_branch}:KILN_DEMO.md")]);
    assert!(file.contains("Task: Add a greeting"));

    // Heartbeats carry the outbox and the workspace.
    run.fake
        .wait_for(5, "a heartbeat with the workspace", |i| {
            i.heartbeats
                .iter()
                .any(|h| h.workspaces.iter().any(|w| w.workspace_id == t.workspace))
                .then_some(())
        })
        .await;

    // Destroy removes the directory and reports it.
    let dir = run
        .data
        .path()
        .join("workspaces")
        .join(t.workspace.to_string());
    assert!(dir.exists());
    run.fake.push(NodeCommand::DestroyWorkspace {
        workspace_id: t.workspace,
    });
    run.fake.wait_event("destroyed", |e| matches!(e, WorkspaceEvent::Destroyed { workspace_id } if *workspace_id == t.workspace)).await;
    assert!(!dir.exists());
    run.stop.send_replace(true);
    assert_eq!(run.node.await.unwrap().unwrap(), NodeExit::Requested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_branch_gets_a_suffix_and_a_failed_push_is_a_warning() {
    let run = start_node().await;
    let repos = tempfile::tempdir().unwrap();
    let t = task_command(Path::new("unused"), "Second attempt");
    let base = format!("task/{}", t.task);
    let bare = bare_repo(repos.path(), &[&base]);
    // The remote refuses every push.
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'pushes are closed' >&2\nexit 1\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let NodeCommand::CreateWorkspace {
        workspace_id,
        project_id,
        session_id,
        task_id,
        branch,
        prompt,
        callback_token,
        agent_hint,
        ..
    } = t.command
    else {
        unreachable!()
    };
    run.fake.push(NodeCommand::CreateWorkspace {
        workspace_id,
        project_id,
        session_id,
        task_id,
        branch,
        prompt,
        callback_token,
        agent_hint,
        git_token: None,
        repository_url: bare.display().to_string(),
    });
    let done = run
        .fake
        .wait_event("completion", |e| is_terminal(e, t.workspace))
        .await;
    let WorkspaceEvent::Completed {
        branch, warning, ..
    } = done
    else {
        panic!("{done:?}")
    };
    assert_eq!(branch, Some(format!("{base}-2")));
    let warning = warning.expect("push failure is a warning");
    assert!(warning.contains("push failed"), "{warning}");
    // The work is committed locally and the workspace is kept.
    let checkout = run
        .data
        .path()
        .join("workspaces")
        .join(t.workspace.to_string())
        .join("checkout");
    let log = git(
        &checkout,
        &["log", "--format=%an", "-1", &format!("{base}-2")],
    );
    assert_eq!(log.trim(), "Kiln Agent");
    run.stop.send_replace(true);
    let _ = run.node.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_crash_mid_turn_fails_keeps_the_workspace_and_delivers_what_was_said() {
    let run = start_node().await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let t = task_command(&bare, "Crash please\nkiln-demo: fail crash");
    run.fake.push(t.command);
    let done = run
        .fake
        .wait_event("failure", |e| is_terminal(e, t.workspace))
        .await;
    let WorkspaceEvent::Failed { error, .. } = done else {
        panic!("{done:?}")
    };
    assert!(error.contains("exit status: 3"), "{error}");
    let messages = run
        .fake
        .wait_for(10, "the partial answer", |i| {
            i.messages
                .iter()
                .any(|m| m.role == Role::Assistant)
                .then(|| i.messages.clone())
        })
        .await;
    let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::User,
            Role::System,
            Role::System,
            Role::Tool,
            Role::Tool,
            Role::Assistant
        ]
    );
    assert!(
        messages[5].content.starts_with("Done: I wr"),
        "{}",
        messages[5].content
    );
    let checkout = run
        .data
        .path()
        .join("workspaces")
        .join(t.workspace.to_string())
        .join("checkout");
    assert!(
        checkout.join("KILN_DEMO.md").exists(),
        "the workspace is kept for inspection"
    );
    run.stop.send_replace(true);
    let _ = run.node.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_errors_refusals_and_cancels_are_reported() {
    let run = start_node().await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let error = task_command(&bare, "kiln-demo: fail error");
    let refuse = task_command(&bare, "kiln-demo: fail refuse");
    let hang = task_command(&bare, "Think forever\nkiln-demo: hang");
    let (e, r, h) = (error.workspace, refuse.workspace, hang.workspace);
    run.fake.push(error.command);
    run.fake.push(refuse.command);
    run.fake.push(hang.command);
    let failed = run.fake.wait_event("error", |ev| is_terminal(ev, e)).await;
    assert!(
        matches!(&failed, WorkspaceEvent::Failed { error, .. } if error.contains("simulated agent error")),
        "{failed:?}"
    );
    let refused = run
        .fake
        .wait_event("refusal", |ev| is_terminal(ev, r))
        .await;
    assert!(
        matches!(&refused, WorkspaceEvent::Failed { error, .. } if error.contains("refused")),
        "{refused:?}"
    );
    run.fake.wait_event("hang started", |ev| matches!(ev, WorkspaceEvent::AgentStarted { workspace_id, .. } if *workspace_id == h)).await;
    // Wait until the hanging turn is under way (its plan arrived), then cancel it.
    run.fake
        .wait_for(10, "the hanging turn's plan", |i| {
            i.messages
                .iter()
                .any(|m| {
                    m.session_id == hang.session
                        && m.tool.as_ref().is_some_and(|t| t.tool == "plan")
                })
                .then_some(())
        })
        .await;
    run.fake.push(NodeCommand::Cancel { workspace_id: h });
    let cancelled = run.fake.wait_event("cancel", |ev| is_terminal(ev, h)).await;
    assert!(
        matches!(cancelled, WorkspaceEvent::Cancelled { .. }),
        "{cancelled:?}"
    );
    // The thought streamed before the cancel is kept.
    run.fake
        .wait_for(10, "the hanging turn's thought", |i| {
            i.messages
                .iter()
                .any(|m| {
                    m.session_id == hang.session
                        && m.tool.as_ref().is_some_and(|t| t.tool == "thought")
                })
                .then_some(())
        })
        .await;
    run.stop.send_replace(true);
    let _ = run.node.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_hint_selects_the_command_and_a_broken_agent_fails_the_task() {
    let (fake, url) = start_fake().await;
    let run = start_node_with(fake, &url, |c| {
        c.agent_commands_by_hint.insert(
            "broken".into(),
            "sh -c 'echo this-is-not-json; echo dying >&2; exit 7'".into(),
        );
    })
    .await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let mut t = task_command(&bare, "Anything");
    if let NodeCommand::CreateWorkspace { agent_hint, .. } = &mut t.command {
        *agent_hint = Some("broken".into());
    }
    run.fake.push(t.command);
    let done = run
        .fake
        .wait_event("failure", |e| is_terminal(e, t.workspace))
        .await;
    let WorkspaceEvent::Failed { error, .. } = done else {
        panic!("{done:?}")
    };
    assert!(
        error.contains("exit status: 7") && error.contains("dying"),
        "{error}"
    );
    assert!(
        !run.fake.events().iter().any(|e| matches!(e, WorkspaceEvent::AgentStarted { workspace_id, .. } if *workspace_id == t.workspace)),
        "an agent that never opened a session is not reported started"
    );
    run.stop.send_replace(true);
    let _ = run.node.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_keeps_its_session_between_prompts_and_no_project_persists_nothing() {
    let run = start_node().await;
    let chat = WorkspaceId::new();
    let session = SessionId::new();
    run.fake.push(NodeCommand::CreateWorkspace {
        workspace_id: chat,
        project_id: Some(ProjectId::new()),
        session_id: Some(session),
        task_id: None,
        repository_url: String::new(),
        branch: None,
        prompt: Some(Prompt {
            message_id: MessageId::new(),
            text: "hello".into(),
        }),
        callback_token: "chat-token".into(),
        agent_hint: None,
        git_token: None,
    });
    run.fake
        .wait_for(10, "first answer", |i| {
            i.messages
                .iter()
                .any(|m| m.role == Role::Assistant)
                .then_some(())
        })
        .await;
    let follow_up = MessageId::new();
    run.fake.push(NodeCommand::Prompt {
        workspace_id: chat,
        prompt: Prompt {
            message_id: follow_up,
            text: "and again".into(),
        },
    });
    let messages = run
        .fake
        .wait_for(10, "second answer", |i| {
            (i.messages
                .iter()
                .filter(|m| m.role == Role::Assistant)
                .count()
                == 2)
                .then(|| i.messages.clone())
        })
        .await;
    assert!(
        messages
            .iter()
            .any(|m| m.id == follow_up && m.role == Role::User)
    );
    assert!(
        !run.fake.events().iter().any(|e| is_terminal(e, chat)),
        "a chat does not complete on end_turn"
    );

    // Without a project the workspace runs (and completes) but nothing is persisted.
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let mut t = task_command(&bare, "no project");
    if let NodeCommand::CreateWorkspace { project_id, .. } = &mut t.command {
        *project_id = None;
    }
    run.fake.push(t.command);
    let done = run
        .fake
        .wait_event("projectless completion", |e| is_terminal(e, t.workspace))
        .await;
    assert!(matches!(done, WorkspaceEvent::Completed { .. }), "{done:?}");
    assert!(
        !run.fake
            .messages()
            .iter()
            .any(|m| m.session_id == t.session)
    );
    run.stop.send_replace(true);
    let _ = run.node.await;
}

/// A control plane that lost track of which prompts the node took (a server restart)
/// sends them again; the node runs each message id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_delivered_twice_runs_one_turn() {
    let run = start_node().await;
    let chat = WorkspaceId::new();
    let prompt = |message_id: MessageId, text: &str| NodeCommand::Prompt {
        workspace_id: chat,
        prompt: Prompt {
            message_id,
            text: text.into(),
        },
    };
    let first = MessageId::new();
    run.fake.push(NodeCommand::CreateWorkspace {
        workspace_id: chat,
        project_id: Some(ProjectId::new()),
        session_id: Some(SessionId::new()),
        task_id: None,
        repository_url: String::new(),
        branch: None,
        prompt: Some(Prompt {
            message_id: first,
            text: "hello".into(),
        }),
        callback_token: "chat-token".into(),
        agent_hint: None,
        git_token: None,
    });
    // The first prompt again (it came with the create), and a follow-up twice, queued
    // behind the first turn; then one more, whose answer comes after any repeated turn's.
    let follow_up = MessageId::new();
    run.fake.push(prompt(first, "hello"));
    run.fake.push(prompt(follow_up, "and again"));
    run.fake.push(prompt(follow_up, "and again"));
    run.fake.push(prompt(MessageId::new(), "the last one"));
    let messages = run
        .fake
        .wait_for(20, "the last answer", |i| {
            i.messages
                .iter()
                .any(|m| m.role == Role::Assistant && m.content.contains("the last one"))
                .then(|| i.messages.clone())
        })
        .await;
    let answers: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(answers.len(), 3, "one turn per message id: {answers:?}");
    assert!(answers[0].contains("hello"), "{answers:?}");
    assert!(answers[1].contains("and again"), "{answers:?}");
    run.stop.send_replace(true);
    let _ = run.node.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_reconnects_after_an_outage_and_stops_on_410() {
    // Nothing listens at first: the node keeps retrying.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let url = format!("http://{addr}");
    let (placeholder, _) = start_fake().await;
    let run = start_node_with(placeholder, &url, |_| {}).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fake, _) = common::start_fake_on(addr).await;
    fake.wait_for(10, "hello after the outage", |i| {
        (!i.hellos.is_empty()).then_some(())
    })
    .await;
    fake.gone.store(true, std::sync::atomic::Ordering::Relaxed);
    let exit = tokio::time::timeout(Duration::from_secs(10), run.node)
        .await
        .expect("node stops")
        .unwrap()
        .unwrap();
    assert_eq!(exit, NodeExit::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_command_stops_the_node_and_is_acknowledged() {
    let run = start_node().await;
    run.fake
        .wait_for(10, "hello", |i| (!i.hellos.is_empty()).then_some(()))
        .await;
    // A destroy for a workspace the node never had is still answered (idempotent).
    let ghost = WorkspaceId::new();
    run.fake.push(NodeCommand::DestroyWorkspace {
        workspace_id: ghost,
    });
    run.fake
        .wait_event(
            "ghost destroyed",
            |e| matches!(e, WorkspaceEvent::Destroyed { workspace_id } if *workspace_id == ghost),
        )
        .await;
    run.fake.push(NodeCommand::Shutdown {
        reason: "replaced".into(),
    });
    let exit = tokio::time::timeout(Duration::from_secs(10), run.node)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        exit,
        NodeExit::Shutdown {
            reason: "replaced".into()
        }
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.data.path().join("node-state.json")).unwrap())
            .unwrap();
    assert_eq!(
        state["lastSeq"], 2,
        "the shutdown is remembered as executed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_node_whose_data_dir_is_removed_exits() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", probe.local_addr().unwrap());
    drop(probe);
    let (placeholder, _) = start_fake().await;
    let run = start_node_with(placeholder, &url, |_| {}).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::remove_dir_all(run.data.path()).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), run.node)
        .await
        .expect("node exits")
        .unwrap()
        .unwrap();
    assert_eq!(exit, NodeExit::DataDirRemoved);
}

/// Waits until `count` plan messages (one per turn the demo agent starts) reached the
/// receiver: the turn under way.
async fn wait_for_plans(fake: &Fake, count: usize, what: &str) {
    fake.wait_for(30, what, |i| {
        (i.messages
            .iter()
            .filter(|m| m.tool.as_ref().is_some_and(|t| t.tool == "plan"))
            .count()
            >= count)
            .then_some(())
    })
    .await;
}

/// A demo agent that stalls after its plan (as a long turn would) until the node stops.
fn stalling(c: &mut NodeConfig) {
    c.agent_env
        .insert("KILN_DEMO_PACE_MS".into(), "600000".into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_during_a_turn_continues_the_turn_after_its_restart() {
    let (fake, url) = start_fake().await;
    let node_id = NodeId::new();
    let run = start_node_with(fake.clone(), &url, |c| {
        c.node_id = node_id;
        stalling(c);
    })
    .await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let t = task_command(&bare, "Add a greeting");
    run.fake.push(t.command);
    wait_for_plans(&run.fake, 1, "the turn under way").await;
    // The host stops while the turn runs (its agent goes with it).
    run.stop.send_replace(true);
    assert_eq!(run.node.await.unwrap().unwrap(), NodeExit::Requested);
    // What the agent had done so far stays in the checkout.
    let checkout = run
        .data
        .path()
        .join(format!("workspaces/{}/checkout", t.workspace));
    std::fs::write(checkout.join("before-restart.txt"), "work so far\n").unwrap();

    let run = start_node_in(fake, &url, run.data, |c| c.node_id = node_id).await;
    let done = run
        .fake
        .wait_event("the continued turn", |e| is_terminal(e, t.workspace))
        .await;
    let WorkspaceEvent::Completed {
        branch: Some(branch),
        warning: None,
        ..
    } = &done
    else {
        panic!("the continued turn must complete the task, got {done:?}");
    };
    // One commit on the task branch holds the work from before and after the restart; the
    // agent started again was told about the restart and given the request.
    let pushed = git(&bare, &["show", &format!("{branch}:before-restart.txt")]);
    assert_eq!(pushed, "work so far\n");
    let note = git(&bare, &["show", &format!("{branch}:KILN_DEMO.md")]);
    assert!(note.contains("restarted"), "{note}");

    // The chat shows the user's prompt once, the interrupted turn, the notice, the whole
    // continued turn; the continuation prompt (the node's word to the agent) is not in it.
    let messages = run
        .fake
        .wait_for(10, "eight messages", |i| {
            (i.messages.len() >= 8).then(|| i.messages.clone())
        })
        .await;
    let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::User,
            Role::System,
            Role::System,
            Role::System,
            Role::System,
            Role::Tool,
            Role::Tool,
            Role::Assistant
        ],
        "{messages:#?}"
    );
    assert_eq!(messages[0].id, MessageId::for_task_prompt(t.task));
    assert_eq!(messages[0].content, "Add a greeting");
    assert_eq!(
        messages[2].content,
        "kiln-node restarted during the agent's turn; the agent was started again to continue \
         (attempt 1 of 2)"
    );
    assert!(
        messages[3]
            .content
            .contains("Understand: The agent host (kiln-node) restarted")
    );
    assert!(messages.iter().all(|m| m.session_id == t.session));
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "in order, once");
    assert_eq!(run.fake.lock().duplicates, 0);
    // The agent's start is reported again (the first report may have died with the node;
    // the control plane ignores a repeated one).
    let started = run
        .fake
        .events()
        .iter()
        .filter(|e| matches!(e, WorkspaceEvent::AgentStarted { workspace_id, .. } if *workspace_id == t.workspace))
        .count();
    assert_eq!(started, 2);
    assert!(
        !run.fake
            .events()
            .iter()
            .any(|e| matches!(e, WorkspaceEvent::Failed { .. })),
        "{:?}",
        run.fake.events()
    );
    // The record forgets the finished turn.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            run.data
                .path()
                .join(format!("workspaces/{}/workspace.json", t.workspace)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["turnActive"], false);
    assert_eq!(record["turnPrompts"], serde_json::json!([]));
    assert_eq!(record["turnResumes"], 0);
    run.stop.send_replace(true);
    let _ = run.node.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_the_host_keeps_restarting_during_fails_after_the_resume_limit() {
    let (fake, url) = start_fake().await;
    let node_id = NodeId::new();
    let mut run = start_node_with(fake.clone(), &url, |c| c.node_id = node_id).await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    // Every start of this turn hangs: it never ends before the host stops again.
    let t = task_command(&bare, "Hang\nkiln-demo: hang");
    run.fake.push(t.command);
    for turn in 1..=3 {
        wait_for_plans(&run.fake, turn, "the turn under way").await;
        run.stop.send_replace(true);
        assert_eq!(run.node.await.unwrap().unwrap(), NodeExit::Requested);
        run = start_node_in(fake.clone(), &url, run.data, |c| c.node_id = node_id).await;
    }
    let failed = run
        .fake
        .wait_event("the given-up turn", |e| is_terminal(e, t.workspace))
        .await;
    assert!(
        matches!(&failed, WorkspaceEvent::Failed { error, .. }
            if error.contains("restarted during") && error.contains("restarted 3 times during this turn")),
        "{failed:?}"
    );
    let notices: Vec<String> = run
        .fake
        .messages()
        .into_iter()
        .filter(|m| m.role == Role::System && m.content.starts_with("kiln-node restarted"))
        .map(|m| m.content)
        .collect();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(notices[0].ends_with("(attempt 1 of 2)"), "{notices:?}");
    assert!(notices[1].ends_with("(attempt 2 of 2)"), "{notices:?}");
    let messages = run.fake.messages();
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    run.stop.send_replace(true);
    let _ = run.node.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_resumes_off_a_turn_interrupted_by_a_restart_fails_as_before() {
    let (fake, url) = start_fake().await;
    let node_id = NodeId::new();
    let run = start_node_with(fake.clone(), &url, |c| c.node_id = node_id).await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let t = task_command(&bare, "Hang\nkiln-demo: hang");
    run.fake.push(t.command);
    wait_for_plans(&run.fake, 1, "the turn under way").await;
    run.stop.send_replace(true);
    assert_eq!(run.node.await.unwrap().unwrap(), NodeExit::Requested);
    let run = start_node_in(fake, &url, run.data, |c| {
        c.node_id = node_id;
        c.resume_interrupted_turns = 0;
    })
    .await;
    let failed = run
        .fake
        .wait_event("the interrupted turn", |e| is_terminal(e, t.workspace))
        .await;
    assert_eq!(
        failed,
        WorkspaceEvent::Failed {
            workspace_id: t.workspace,
            error: "the agent host restarted during the agent's turn; the agent process is gone"
                .into()
        }
    );
    run.stop.send_replace(true);
    let _ = run.node.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_before_the_restart_wins_over_continuing_the_turn() {
    let (fake, url) = start_fake().await;
    let node_id = NodeId::new();
    // The agent ignores the cancel long enough for the host to stop first.
    let run = start_node_with(fake.clone(), &url, |c| {
        c.node_id = node_id;
        c.cancel_grace = Duration::from_secs(600);
        stalling(c);
    })
    .await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let t = task_command(&bare, "Add a greeting");
    run.fake.push(t.command);
    wait_for_plans(&run.fake, 1, "the turn under way").await;
    let record_path = run
        .data
        .path()
        .join(format!("workspaces/{}/workspace.json", t.workspace));
    run.fake.push(NodeCommand::Cancel {
        workspace_id: t.workspace,
    });
    run.fake
        .wait_for(10, "the cancel noted", |_| {
            std::fs::read_to_string(&record_path)
                .is_ok_and(|r| r.contains("\"cancelRequested\": true"))
                .then_some(())
        })
        .await;
    run.stop.send_replace(true);
    assert_eq!(run.node.await.unwrap().unwrap(), NodeExit::Requested);
    assert!(
        !run.fake
            .events()
            .iter()
            .any(|e| is_terminal(e, t.workspace)),
        "the turn had not ended: {:?}",
        run.fake.events()
    );

    let run = start_node_in(fake, &url, run.data, |c| c.node_id = node_id).await;
    let ended = run
        .fake
        .wait_event("the cancelled turn", |e| is_terminal(e, t.workspace))
        .await;
    assert_eq!(
        ended,
        WorkspaceEvent::Cancelled {
            workspace_id: t.workspace
        }
    );
    wait_for_plans(&run.fake, 1, "the messages").await;
    assert!(
        !run.fake
            .messages()
            .iter()
            .any(|m| m.content.starts_with("kiln-node restarted")),
        "no continuation was announced"
    );
    run.stop.send_replace(true);
    let _ = run.node.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_destroyed_during_an_outage_still_delivers_every_message_after_a_restart() {
    let (fake, url) = start_fake().await;
    // The receiver is down for the whole run and beyond the destroy drain.
    fake.messages_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let run = start_node_with(fake.clone(), &url, |c| {
        c.destroy_drain = Duration::from_millis(300);
    })
    .await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let t = task_command(&bare, "Outage");
    run.fake.push(t.command);
    run.fake
        .wait_event("completion", |e| is_terminal(e, t.workspace))
        .await;
    run.fake.push(NodeCommand::DestroyWorkspace {
        workspace_id: t.workspace,
    });
    run.fake
        .wait_event("destroyed", |e| {
            matches!(e, WorkspaceEvent::Destroyed { workspace_id } if *workspace_id == t.workspace)
        })
        .await;
    assert!(fake.messages().is_empty(), "nothing delivered yet");
    let draining = run
        .data
        .path()
        .join(format!("draining-routes/{}.json", t.workspace));
    assert!(
        draining.exists(),
        "the route waits on disk for its messages"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&draining).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the file holds the workspace token");
    }

    // The host restarts while the receiver is still down, then the receiver comes back.
    run.stop.send_replace(true);
    let _ = run.node.await;
    let run = start_node_in(fake.clone(), &url, run.data, |_| {}).await;
    fake.messages_down
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let messages = fake
        .wait_for(30, "the destroyed workspace's messages", |i| {
            (i.messages.len() >= 6).then(|| i.messages.clone())
        })
        .await;
    assert!(messages.iter().all(|m| m.session_id == t.session));
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "in order, once"
    );
    assert_eq!(fake.lock().duplicates, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while draining.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drained route's file is removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.stop.send_replace(true);
    let _ = run.node.await;
}

/// The workspace record a node keeps on disk, as JSON (`Null` while it is unreadable).
fn record_of(data: &Path, workspace: WorkspaceId) -> serde_json::Value {
    std::fs::read(data.join(format!("workspaces/{workspace}/workspace.json")))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Waits until the node's record of `workspace` satisfies `check`.
async fn wait_for_record(
    run: &Running,
    workspace: WorkspaceId,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let data = run.data.path().to_path_buf();
    run.fake
        .wait_for(30, what, |_| {
            check(&record_of(&data, workspace)).then_some(())
        })
        .await;
}

fn chat_create(chat: WorkspaceId, session: SessionId, first: MessageId, text: &str) -> NodeCommand {
    NodeCommand::CreateWorkspace {
        workspace_id: chat,
        project_id: Some(ProjectId::new()),
        session_id: Some(session),
        task_id: None,
        repository_url: String::new(),
        branch: None,
        prompt: Some(Prompt {
            message_id: first,
            text: text.into(),
        }),
        callback_token: format!("chat-token-{chat}"),
        agent_hint: None,
        git_token: None,
    }
}

fn chat_prompt(chat: WorkspaceId, message_id: MessageId, text: &str) -> NodeCommand {
    NodeCommand::Prompt {
        workspace_id: chat,
        prompt: Prompt {
            message_id,
            text: text.into(),
        },
    }
}

/// A follow-up the node took while the agent's turn ran (queued behind it, never sent to
/// the agent) runs after the continued turn when the node restarts, once, even when the
/// control plane sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_queued_behind_the_turn_runs_once_after_the_continued_turn() {
    let (fake, url) = start_fake().await;
    let node_id = NodeId::new();
    let run = start_node_with(fake.clone(), &url, |c| {
        c.node_id = node_id;
        stalling(c);
    })
    .await;
    let chat = WorkspaceId::new();
    let session = SessionId::new();
    let first = MessageId::new();
    run.fake
        .push(chat_create(chat, session, first, "First request"));
    wait_for_plans(&run.fake, 1, "the first turn under way").await;
    let queued = MessageId::new();
    run.fake.push(chat_prompt(chat, queued, "Queued request"));
    let queued_id = serde_json::to_value(queued).unwrap();
    wait_for_record(&run, chat, "the follow-up taken", |r| {
        r["takenPrompts"]
            .as_array()
            .is_some_and(|ids| ids.contains(&queued_id))
    })
    .await;
    run.stop.send_replace(true);
    assert_eq!(run.node.await.unwrap().unwrap(), NodeExit::Requested);
    assert!(
        !fake.messages().iter().any(|m| m.id == queued),
        "the follow-up had not reached the agent"
    );

    let run = start_node_in(fake, &url, run.data, |c| c.node_id = node_id).await;
    // The control plane, unsure whether the node took it, sends it again; then one more.
    run.fake.push(chat_prompt(chat, queued, "Queued request"));
    let last = MessageId::new();
    run.fake.push(chat_prompt(chat, last, "The last request"));
    let messages = run
        .fake
        .wait_for(30, "the last answer", |i| {
            i.messages
                .iter()
                .any(|m| m.role == Role::Assistant && m.content.contains("The last request"))
                .then(|| i.messages.clone())
        })
        .await;
    let answers: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(answers.len(), 3, "one turn per request: {answers:#?}");
    assert!(answers[0].contains("restarted"), "{answers:#?}");
    assert!(answers[1].contains("Queued request"), "{answers:#?}");
    assert!(answers[2].contains("The last request"), "{answers:#?}");
    let users: Vec<(MessageId, &str)> = messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| (m.id, m.content.as_str()))
        .collect();
    assert_eq!(
        users,
        [
            (first, "First request"),
            (queued, "Queued request"),
            (last, "The last request")
        ]
    );
    // The follow-up's message comes after the continued turn's answer, before its own.
    let continued_answer = messages
        .iter()
        .position(|m| m.role == Role::Assistant && m.content.contains("restarted"))
        .unwrap();
    let queued_message = messages.iter().position(|m| m.id == queued).unwrap();
    let queued_answer = messages
        .iter()
        .position(|m| m.role == Role::Assistant && m.content.contains("Queued request"))
        .unwrap();
    assert!(
        continued_answer < queued_message && queued_message < queued_answer,
        "{messages:#?}"
    );
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "in order, once"
    );
    assert_eq!(run.fake.lock().duplicates, 0);
    assert!(
        !run.fake.events().iter().any(|e| is_terminal(e, chat)),
        "{:?}",
        run.fake.events()
    );
    wait_for_record(&run, chat, "the record forgets the ended turns", |r| {
        r["turnPrompts"] == serde_json::json!([]) && r["turnActive"] == false
    })
    .await;
    run.stop.send_replace(true);
    let _ = run.node.await;
}

/// kiln-node stops after taking a chat's prompt and a follow-up but before the agent's ACP
/// session opened (an agent slow to start): the restarted node shows the user's prompt in
/// the chat once, continues the turn, then runs the follow-up, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_taken_before_the_agent_session_opened_is_in_the_chat_once_after_a_restart() {
    let (fake, url) = start_fake().await;
    let node_id = NodeId::new();
    // An agent that never answers `initialize`: its session never opens.
    let run = start_node_with(fake.clone(), &url, |c| {
        c.node_id = node_id;
        c.agent_command = "sleep 600".into();
    })
    .await;
    let chat = WorkspaceId::new();
    let session = SessionId::new();
    let first = MessageId::new();
    run.fake
        .push(chat_create(chat, session, first, "First request"));
    let follow_up = MessageId::new();
    run.fake
        .push(chat_prompt(chat, follow_up, "Follow-up request"));
    wait_for_record(&run, chat, "both prompts taken", |r| {
        r["turnPrompts"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;
    run.stop.send_replace(true);
    let exit = tokio::time::timeout(Duration::from_secs(5), run.node)
        .await
        .expect("an agent that is still starting does not hold up the stop");
    assert_eq!(exit.unwrap().unwrap(), NodeExit::Requested);
    assert!(
        !fake
            .events()
            .iter()
            .any(|e| matches!(e, WorkspaceEvent::AgentStarted { .. })),
        "the session had not opened"
    );

    let run = start_node_in(fake, &url, run.data, |c| c.node_id = node_id).await;
    run.fake
        .push(chat_prompt(chat, follow_up, "Follow-up request"));
    let messages = run
        .fake
        .wait_for(30, "the follow-up's answer", |i| {
            i.messages
                .iter()
                .any(|m| m.role == Role::Assistant && m.content.contains("Follow-up request"))
                .then(|| i.messages.clone())
        })
        .await;
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
    assert_eq!(messages[0].id, first, "the user's prompt opens the chat");
    assert!(
        messages[1].content.starts_with("kiln-node restarted"),
        "{messages:#?}"
    );
    let answers: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(answers.len(), 2, "{answers:#?}");
    assert!(answers[0].contains("restarted"), "{answers:#?}");
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "in order, once"
    );
    assert_eq!(run.fake.lock().duplicates, 0);
    wait_for_record(&run, chat, "the record forgets the ended turns", |r| {
        r["turnPrompts"] == serde_json::json!([]) && r["turnActive"] == false
    })
    .await;
    run.stop.send_replace(true);
    let _ = run.node.await;
}

/// A follow-up prompt for a task's workspace (`task` is its create command).
fn follow_up(task: &TaskCommand, message_id: MessageId, text: &str) -> NodeCommand {
    NodeCommand::Prompt {
        workspace_id: task.workspace,
        prompt: Prompt {
            message_id,
            text: text.into(),
        },
    }
}

/// The user messages and the assistant answers of a chat, in order.
fn users_and_answers(messages: &[kiln_core::ChatMessage]) -> (Vec<MessageId>, Vec<String>) {
    let users = messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.id)
        .collect();
    let answers = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.content.clone())
        .collect();
    (users, answers)
}

/// A follow-up the user sent while a task's first turn ran is queued behind it and runs
/// before the task completes: its work is in the pushed commit, its answer is the task's
/// summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_sent_during_a_tasks_turn_runs_before_the_task_completes() {
    let (fake, url) = start_fake().await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let t = task_command(&bare, "Add a greeting");
    let farewell = MessageId::new();
    // Both wait when the node first polls: the follow-up is taken before the first turn ends.
    fake.push(t.command.clone());
    fake.push(follow_up(
        &t,
        farewell,
        "Add a farewell\nkiln-demo: write FAREWELL.md",
    ));
    let run = start_node_with(fake, &url, |_| {}).await;

    let done = run
        .fake
        .wait_event("completion", |e| is_terminal(e, t.workspace))
        .await;
    let WorkspaceEvent::Completed {
        branch: Some(branch),
        summary: Some(summary),
        warning: None,
        ..
    } = &done
    else {
        panic!("expected completed, got {done:?}")
    };
    assert!(summary.contains("Add a farewell"), "{summary}");
    // One commit on the task branch holds the work of both turns.
    assert!(git(&bare, &["show", &format!("{branch}:KILN_DEMO.md")]).contains("Add a greeting"));
    assert!(git(&bare, &["show", &format!("{branch}:FAREWELL.md")]).contains("Add a farewell"));
    let messages = run
        .fake
        .wait_for(10, "both answers", |i| {
            let (_, answers) = users_and_answers(&i.messages);
            (answers.len() >= 2).then(|| i.messages.clone())
        })
        .await;
    let (users, answers) = users_and_answers(&messages);
    assert_eq!(users, [MessageId::for_task_prompt(t.task), farewell]);
    assert!(answers[0].contains("Add a greeting"), "{answers:#?}");
    assert!(answers[1].contains("Add a farewell"), "{answers:#?}");
    let completions = run
        .fake
        .events()
        .iter()
        .filter(|e| is_terminal(e, t.workspace))
        .count();
    assert_eq!(completions, 1);
    run.stop.send_replace(true);
    let _ = run.node.await;
}

/// kiln-node restarts while a task's turn runs with a follow-up queued behind it: the
/// restarted node continues the turn, runs the follow-up, and only then completes the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_queued_behind_a_tasks_turn_runs_after_a_restart_before_the_task_completes() {
    let (fake, url) = start_fake().await;
    let node_id = NodeId::new();
    let run = start_node_with(fake.clone(), &url, |c| {
        c.node_id = node_id;
        stalling(c);
    })
    .await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let t = task_command(&bare, "Add a greeting");
    run.fake.push(t.command.clone());
    wait_for_plans(&run.fake, 1, "the first turn under way").await;
    let farewell = MessageId::new();
    run.fake.push(follow_up(
        &t,
        farewell,
        "Add a farewell\nkiln-demo: write FAREWELL.md",
    ));
    let farewell_id = serde_json::to_value(farewell).unwrap();
    wait_for_record(&run, t.workspace, "the follow-up queued", |r| {
        r["turnPrompts"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["messageId"] == farewell_id))
    })
    .await;
    run.stop.send_replace(true);
    assert_eq!(run.node.await.unwrap().unwrap(), NodeExit::Requested);

    let run = start_node_in(fake, &url, run.data, |c| c.node_id = node_id).await;
    let done = run
        .fake
        .wait_event("completion", |e| is_terminal(e, t.workspace))
        .await;
    let WorkspaceEvent::Completed {
        branch: Some(branch),
        summary: Some(summary),
        ..
    } = &done
    else {
        panic!("expected completed, got {done:?}")
    };
    assert!(summary.contains("Add a farewell"), "{summary}");
    assert!(git(&bare, &["show", &format!("{branch}:FAREWELL.md")]).contains("Add a farewell"));
    let messages = run
        .fake
        .wait_for(10, "both answers", |i| {
            let (_, answers) = users_and_answers(&i.messages);
            (answers.len() >= 2).then(|| i.messages.clone())
        })
        .await;
    let (users, answers) = users_and_answers(&messages);
    assert_eq!(users, [MessageId::for_task_prompt(t.task), farewell]);
    assert_eq!(answers.len(), 2, "{answers:#?}");
    assert!(answers[0].contains("restarted"), "{answers:#?}");
    assert!(answers[1].contains("Add a farewell"), "{answers:#?}");
    run.stop.send_replace(true);
    let _ = run.node.await;
}

/// A follow-up that reaches a task's workspace after the task completed (the control plane
/// sent it as the task ended) is not run, and the chat says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_reaching_a_completed_task_is_not_run_and_the_chat_says_so() {
    let run = start_node().await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), &[]);
    let t = task_command(&bare, "Add a greeting");
    run.fake.push(t.command.clone());
    run.fake
        .wait_event("completion", |e| is_terminal(e, t.workspace))
        .await;
    let late = MessageId::new();
    run.fake.push(follow_up(&t, late, "One more thing"));
    // Sent again (the control plane unsure whether the node took it): told once.
    run.fake.push(follow_up(&t, late, "One more thing"));
    let notice = run
        .fake
        .wait_for(10, "the notice", |i| {
            i.messages
                .iter()
                .find(|m| m.role == Role::System && m.content.contains("was not run"))
                .cloned()
        })
        .await;
    assert_eq!(
        notice.content,
        "This message arrived after the task had completed; it was not run. Send it again as \
         a new task or in a chat."
    );
    run.fake.push(NodeCommand::DestroyWorkspace {
        workspace_id: t.workspace,
    });
    run.fake
        .wait_event("destroyed", |e| {
            matches!(e, WorkspaceEvent::Destroyed { workspace_id } if *workspace_id == t.workspace)
        })
        .await;
    let messages = run.fake.messages();
    let (users, answers) = users_and_answers(&messages);
    assert_eq!(users, [MessageId::for_task_prompt(t.task)], "{messages:#?}");
    assert_eq!(answers.len(), 1, "{answers:#?}");
    let notices = messages
        .iter()
        .filter(|m| m.content.contains("was not run"))
        .count();
    assert_eq!(notices, 1);
    let events = run.fake.events();
    let count = |f: fn(&WorkspaceEvent) -> bool| events.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(|e| matches!(e, WorkspaceEvent::AgentStarted { .. })),
        1
    );
    assert_eq!(count(|e| matches!(e, WorkspaceEvent::Completed { .. })), 1);
    run.stop.send_replace(true);
    let _ = run.node.await;
}
