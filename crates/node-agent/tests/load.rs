//! A load run of the message path: the demo agent streams many small chunks through the
//! real ACP host into the real SQLite outbox. Prints figures; asserts only correctness.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_core::{MessageId, ProjectId, Role, SessionId, SystemClock, WorkspaceId};
use kiln_node::acp::{AgentHost, AgentLaunch, AgentReport, SessionCapture, StopKind};
use kiln_node::outbox::OutboxRoutes;
use kiln_node::routes::{MessageRoutes, RouteSpec};
use kiln_outbox::OutboxConfig;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streamed_messages_reach_the_outbox_in_order() {
    const MESSAGES: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // Nothing listens at the control plane: every message stays in the outbox to be counted.
    let routes = OutboxRoutes::open(
        &data.path().join("outbox.sqlite"),
        OutboxConfig::default(),
        "http://127.0.0.1:9",
        Arc::new(SystemClock),
    )
    .unwrap();
    let (workspace, session) = (WorkspaceId::new(), SessionId::new());
    let recorder = routes
        .open_route(&RouteSpec {
            workspace_id: workspace,
            project_id: Some(ProjectId::new()),
            session_id: Some(session),
            callback_token: "t".into(),
        })
        .await
        .unwrap();
    let capture = SessionCapture::new(workspace, Some(session), recorder, Arc::new(SystemClock));
    let (tx, mut reports) = mpsc::unbounded_channel();
    let env = BTreeMap::from([
        ("KILN_DEMO_MESSAGES".to_owned(), MESSAGES.to_string()),
        ("KILN_DEMO_CHUNK_CHARS".to_owned(), "8".to_owned()),
    ]);
    let host = AgentHost::start(
        AgentLaunch {
            command: env!("CARGO_BIN_EXE_kiln-demo-agent").to_owned(),
            cwd: dir.path().to_path_buf(),
            env,
            chat_session_id: Some(session),
            cancel_grace: Duration::from_secs(5),
        },
        capture,
        tx,
    )
    .unwrap();
    assert!(matches!(
        reports.recv().await,
        Some(AgentReport::Started { .. })
    ));
    let started = Instant::now();
    host.prompt(MessageId::new(), "Load".into());
    let report = tokio::time::timeout(Duration::from_secs(60), reports.recv())
        .await
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        matches!(
            report,
            AgentReport::TurnEnded {
                stop: StopKind::EndTurn,
                ..
            }
        ),
        "{report:?}"
    );
    host.stop().await;

    let stored = routes.outbox().pending_messages().unwrap();
    let answers = stored.iter().filter(|m| m.role == Role::Assistant).count();
    assert_eq!(answers, MESSAGES);
    assert_eq!(
        stored.len(),
        MESSAGES + 5,
        "user, plan, thought, two tool messages and the answers"
    );
    let seqs: Vec<i64> = stored.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "stored in arrival order"
    );
    let chunks: usize = stored
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.content.chars().count().div_ceil(8))
        .sum();
    eprintln!(
        "load: {} messages ({} streamed chunks) captured durably in {:.0} ms: {:.0} messages/s, {:.0} updates/s",
        stored.len(),
        chunks,
        elapsed.as_secs_f64() * 1000.0,
        stored.len() as f64 / elapsed.as_secs_f64(),
        (chunks + 5) as f64 / elapsed.as_secs_f64(),
    );
}
