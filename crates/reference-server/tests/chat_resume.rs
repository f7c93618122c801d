//! A chat's follow-up taken while its workspace was being created, across a server restart:
//! the resumed chat hands it to the node again.

mod common;

use common::{TestServer, wait_for};
use kiln_core::protocol::NodeCommand;
use kiln_core::{MessageId, SessionId, SessionStore};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_lost_with_the_command_queue_reaches_the_node_after_the_resume() {
    let s = TestServer::start().await;
    let (user, api) = s.user("ann").await;
    let project = s.project(&api).await;
    let r = s
        .http
        .post(s.url(&format!("/api/projects/{}/sessions", project.id)))
        .bearer_auth(&api)
        .json(&json!({"prompt": "Explain the build"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let chat: serde_json::Value = r.json().await.unwrap();
    let session: SessionId = serde_json::from_value(chat["id"].clone()).unwrap();

    let (node, token) = s.boot_node(user.id).await;
    let batch = s.poll(node, &token, 0).await;
    let create = batch.commands.last().unwrap();
    assert!(
        matches!(create.command, NodeCommand::CreateWorkspace { .. }),
        "{batch:?}"
    );
    let workspace =
        wait_for(|| async { s.store.get_session(session).await.unwrap()?.workspace_id }).await;

    // Taken while the workspace is still being created...
    let r = s
        .http
        .post(s.url(&format!("/api/sessions/{session}/prompt")))
        .bearer_auth(&api)
        .json(&json!({"text": "And the tests?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let follow_up: MessageId =
        serde_json::from_value(r.json::<serde_json::Value>().await.unwrap()["id"].clone()).unwrap();
    // ...and gone from the command queue (as a restart loses it): acknowledged unseen.
    let queued = wait_for(|| async {
        s.state
            .commands
            .pending(node)
            .into_iter()
            .find(|c| matches!(c.command, NodeCommand::Prompt { .. }))
    })
    .await;
    let _ = s.poll(node, &token, queued.seq).await;
    assert!(s.state.commands.pending(node).is_empty());

    assert_eq!(s.runner.resume().await.unwrap().chats, 1);
    let mut after = queued.seq;
    let mut got = Vec::new();
    while !got.iter().any(|c| matches!(c, NodeCommand::Prompt { .. })) {
        let batch = s.poll(node, &token, after).await;
        assert!(!batch.commands.is_empty(), "the resume sent nothing more");
        after = batch.commands.last().unwrap().seq;
        got.extend(batch.commands.into_iter().map(|c| c.command));
    }
    assert!(
        matches!(&got[0], NodeCommand::CreateWorkspace { workspace_id, .. } if *workspace_id == workspace),
        "the create command first: {got:?}"
    );
    let prompts: Vec<_> = got
        .iter()
        .filter_map(|c| match c {
            NodeCommand::Prompt {
                workspace_id,
                prompt,
            } => Some((*workspace_id, prompt.message_id, prompt.text.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        prompts,
        vec![(workspace, follow_up, "And the tests?")],
        "the follow-up again, under its own id"
    );
}
