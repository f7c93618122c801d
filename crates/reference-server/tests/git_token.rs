//! A project's git token on its way to the node: added to `create_workspace` only in the
//! node's own command poll, never in the change feed between replicas (a PostgreSQL NOTIFY
//! payload) nor in the queues; a project without one (and whose owner has no default) gets
//! none.

mod common;

use common::TestServer;
use futures::StreamExt;
use kiln_core::protocol::NodeCommand;
use kiln_core::secret::Secret;
use kiln_core::{Change, LifecycleClock, SecretKey, SecretKind, SecretStore, SessionStore};

const TOKEN: &str = "ghp_kilnTestToken0123456789";

fn git_token_of(command: &NodeCommand) -> Option<Secret> {
    match command {
        NodeCommand::CreateWorkspace { git_token, .. } => git_token.clone(),
        other => panic!("expected create_workspace, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_goes_only_to_the_node_in_its_command_poll() {
    let s = TestServer::start().await;
    let mut feed = s.store.subscribe().await.unwrap();
    let (user, api) = s.user("ann").await;
    let project = s.project(&api).await;
    let key = SecretKey::project(user.id, project.id, SecretKind::GitToken);
    s.store
        .put_secret(&s.state.credentials.seal(key, TOKEN, s.state.clock.now()))
        .await
        .unwrap();

    let task = s.task(&api, &project, true).await;
    let (node, node_token) = s.boot_node(user.id).await;
    let batch = s.poll(node, &node_token, 0).await;
    assert_eq!(batch.commands.len(), 1);
    assert_eq!(
        git_token_of(&batch.commands[0].command),
        Some(Secret::new(TOKEN)),
        "the node gets the project's token"
    );
    // The queue keeps the command without it.
    let queued = s.state.commands.pending(node);
    assert_eq!(git_token_of(&queued[0].command), None);

    // What went through the change feed (what PostgreSQL NOTIFY would carry) has no token.
    let mut relayed = None;
    while relayed.is_none() {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
            .await
            .expect("the create command went through the feed")
            .unwrap();
        let json = serde_json::to_string(&event.change).unwrap();
        assert!(!json.contains(TOKEN), "the feed carried the token: {json}");
        if let Change::NodeCommand { command, .. } = event.change {
            relayed = Some(command);
        }
    }
    assert_eq!(git_token_of(&relayed.unwrap()), None);

    // Nor do the task or the project as the API shows them.
    for path in [
        format!("/api/projects/{}", project.id),
        format!("/api/tasks/{}", task.id),
    ] {
        let r = s
            .http
            .get(s.url(&path))
            .bearer_auth(&api)
            .send()
            .await
            .unwrap();
        let body = r.text().await.unwrap();
        assert!(!body.contains(TOKEN), "{path}: {body}");
    }
    assert!(s.store.get_project(project.id).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_default_applies_and_no_token_means_none() {
    let s = TestServer::start().await;
    let (user, api) = s.user("bob").await;
    let project = s.project(&api).await;
    let task = s.task(&api, &project, true).await;
    let (node, node_token) = s.boot_node(user.id).await;
    let batch = s.poll(node, &node_token, 0).await;
    assert_eq!(git_token_of(&batch.commands[0].command), None);
    assert_eq!(task.project_id, project.id);

    // The owner's default token applies to projects without their own (re-polled: the token
    // is added at each delivery until the node acknowledges the command).
    let key = SecretKey::user(user.id, SecretKind::GitToken);
    s.store
        .put_secret(&s.state.credentials.seal(key, TOKEN, s.state.clock.now()))
        .await
        .unwrap();
    let batch = s.poll(node, &node_token, 0).await;
    assert_eq!(
        git_token_of(&batch.commands[0].command),
        Some(Secret::new(TOKEN))
    );
}
