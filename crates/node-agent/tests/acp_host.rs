//! The demo agent through the real ACP host: what the capture records, in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::{MessageId, Role, SessionId, SystemClock, WorkspaceId};
use kiln_node::acp::{AgentHost, AgentLaunch, AgentReport, SessionCapture, StopKind};
use kiln_node::recorder::MemoryRecorder;
use tokio::sync::mpsc;

const DEMO: &str = env!("CARGO_BIN_EXE_kiln-demo-agent");

fn launch(dir: &std::path::Path, env: &[(&str, &str)]) -> AgentLaunch {
    AgentLaunch {
        command: DEMO.to_owned(),
        cwd: dir.to_path_buf(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        chat_session_id: None,
        cancel_grace: Duration::from_secs(5),
    }
}

async fn next(reports: &mut mpsc::UnboundedReceiver<AgentReport>) -> AgentReport {
    tokio::time::timeout(Duration::from_secs(20), reports.recv())
        .await
        .expect("agent report in time")
        .expect("report channel open")
}

fn start(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (
    AgentHost,
    MemoryRecorder,
    mpsc::UnboundedReceiver<AgentReport>,
) {
    let recorder = MemoryRecorder::new();
    let capture = SessionCapture::new(
        WorkspaceId::new(),
        Some(SessionId::new()),
        Arc::new(recorder.clone()),
        Arc::new(SystemClock),
    )
    .with_root(dir.canonicalize().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let host = AgentHost::start(launch(dir, env), capture, tx).expect("agent starts");
    (host, recorder, rx)
}

#[tokio::test]
async fn the_demo_turn_becomes_user_plan_thought_tool_and_assistant_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (host, recorder, mut reports) = start(dir.path(), &[("KILN_DEMO_CHUNK_CHARS", "5")]);
    assert!(matches!(
        next(&mut reports).await,
        AgentReport::Started { .. }
    ));
    let prompt_id = MessageId::new();
    host.prompt(
        prompt_id,
        "Add a greeting\nkiln-demo: pr https://github.com/acme/app/pull/7".into(),
    );
    let AgentReport::TurnEnded { stop, summary } = next(&mut reports).await else {
        panic!("turn did not end")
    };
    assert_eq!(stop, StopKind::EndTurn);
    let messages = recorder.messages();
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
        ],
        "{messages:#?}"
    );
    assert_eq!(messages[0].id, prompt_id);
    assert_eq!(messages[1].tool.as_ref().unwrap().tool, "plan");
    assert_eq!(messages[2].tool.as_ref().unwrap().tool, "thought");
    let pending = messages[3].tool.as_ref().unwrap();
    assert_eq!(
        (
            pending.tool.as_str(),
            pending.target.as_deref(),
            pending.status.as_deref()
        ),
        ("edit", Some("KILN_DEMO.md"), Some("pending"))
    );
    let done = messages[4].tool.as_ref().unwrap();
    assert_eq!(
        (done.target.as_deref(), done.status.as_deref()),
        (Some("KILN_DEMO.md"), Some("completed"))
    );
    assert!(
        messages[5]
            .content
            .starts_with("Done: I wrote `KILN_DEMO.md`"),
        "{}",
        messages[5].content
    );
    assert_eq!(
        summary.summary.as_deref(),
        Some(messages[5].content.as_str())
    );
    assert_eq!(
        summary.pr_url.as_deref(),
        Some("https://github.com/acme/app/pull/7")
    );
    let written = std::fs::read_to_string(dir.path().join("KILN_DEMO.md")).unwrap();
    assert!(written.contains("Add a greeting"));
    host.stop().await;
}

#[tokio::test]
async fn paths_outside_the_workspace_are_refused_for_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
    let (host, recorder, mut reports) = start(dir.path(), &[]);
    assert!(matches!(
        next(&mut reports).await,
        AgentReport::Started { .. }
    ));
    let target = outside.path().join("planted.txt");
    host.prompt(
        MessageId::new(),
        format!(
            "Escape\nkiln-demo: read {}\nkiln-demo: write ../planted.txt",
            outside.path().join("secret.txt").display()
        ),
    );
    assert!(matches!(
        next(&mut reports).await,
        AgentReport::TurnEnded {
            stop: StopKind::EndTurn,
            ..
        }
    ));
    let tools: Vec<_> = recorder
        .messages()
        .into_iter()
        .filter(|m| m.role == Role::Tool)
        .collect();
    let failed: Vec<_> = tools
        .iter()
        .filter(|m| m.tool.as_ref().unwrap().status.as_deref() == Some("failed"))
        .collect();
    assert_eq!(failed.len(), 2, "read and write both refused: {tools:#?}");
    assert!(
        failed
            .iter()
            .all(|m| m.content.contains("outside the workspace")),
        "{failed:#?}"
    );
    assert!(!target.exists() && !dir.path().parent().unwrap().join("planted.txt").exists());

    // An absolute path outside is refused too.
    host.prompt(
        MessageId::new(),
        format!("kiln-demo: write {}", target.display()),
    );
    assert!(matches!(
        next(&mut reports).await,
        AgentReport::TurnEnded { .. }
    ));
    assert!(!target.exists());
    host.stop().await;
}

#[tokio::test]
async fn a_banner_on_stdout_does_not_break_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = MemoryRecorder::new();
    let capture = SessionCapture::new(
        WorkspaceId::new(),
        Some(SessionId::new()),
        Arc::new(recorder.clone()),
        Arc::new(SystemClock),
    );
    let (tx, mut reports) = mpsc::unbounded_channel();
    let mut launch = launch(dir.path(), &[]);
    launch.command = format!("sh -c 'echo Welcome to the agent; echo; exec {DEMO}'");
    let host = AgentHost::start(launch, capture, tx).expect("agent starts");
    assert!(matches!(
        next(&mut reports).await,
        AgentReport::Started { .. }
    ));
    host.prompt(MessageId::new(), "hi".into());
    assert!(matches!(
        next(&mut reports).await,
        AgentReport::TurnEnded {
            stop: StopKind::EndTurn,
            ..
        }
    ));
    assert_eq!(recorder.messages().len(), 6);
    host.stop().await;
}

#[tokio::test]
async fn permission_requests_are_approved_with_the_narrowest_allow_option() {
    let dir = tempfile::tempdir().unwrap();
    let (host, recorder, mut reports) = start(dir.path(), &[]);
    assert!(matches!(
        next(&mut reports).await,
        AgentReport::Started { .. }
    ));
    host.prompt(MessageId::new(), "Write it\nkiln-demo: ask".into());
    assert!(matches!(
        next(&mut reports).await,
        AgentReport::TurnEnded {
            stop: StopKind::EndTurn,
            ..
        }
    ));
    let done = recorder
        .messages()
        .into_iter()
        .find(|m| {
            m.tool
                .as_ref()
                .is_some_and(|t| t.status.as_deref() == Some("completed"))
        })
        .expect("the write completed");
    assert!(
        done.content.contains("written (permission: once)"),
        "{}",
        done.content
    );
    assert!(dir.path().join("KILN_DEMO.md").exists());
    host.stop().await;
}
