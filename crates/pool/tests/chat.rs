//! Chats without a task over the memory store, provider and workspace fake: open (node
//! acquired like a task's, workspace without task or branch), agent up, close (workspace
//! destroyed, node warm), the refusals, and a chat on a lost node.

mod common;

use std::time::Duration;

use common::{Harness, eventually};
use kiln_core::{
    MessagePage, NodeState, NodeStore, Role, SessionId, SessionStatus, SessionStore, TaskStore,
    VmSize, WorkspaceStatus,
};
use kiln_pool::memory::simulate_node_boots;
use kiln_pool::{DestroyProgress, Error, NewChat, NewTask, chat_claim};

fn chat(h: &Harness, prompt: Option<&str>) -> NewChat {
    NewChat {
        project_id: h.project.id,
        vm_size: Some(VmSize::Medium),
        prompt: prompt.map(str::to_owned),
        agent_hint: None,
    }
}

async fn status(h: &Harness, id: SessionId) -> SessionStatus {
    h.store.get_session(id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn a_chat_stores_the_agent_and_size_it_was_opened_with() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let session = h
        .runner
        .open_chat_inline(NewChat {
            agent_hint: Some("codex".into()),
            vm_size: Some(VmSize::Large),
            ..chat(&h, Some("Hi"))
        })
        .await
        .unwrap();
    let stored = h.store.get_session(session.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.agent_hint.as_deref(), stored.vm_size),
        (Some("codex"), Some(VmSize::Large))
    );
    assert_eq!(session, stored);
    let requests = h.nodes.created();
    assert_eq!(requests[0].agent_hint.as_deref(), Some("codex"));
    let node = h
        .store
        .get_node(requests[0].node_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.size, VmSize::Large);

    // A blank hint is no hint; no size asked: none stored (the project's default applies).
    let plain = h
        .runner
        .open_chat(NewChat {
            agent_hint: Some("  ".into()),
            vm_size: None,
            ..chat(&h, None)
        })
        .await
        .unwrap();
    assert_eq!((plain.agent_hint, plain.vm_size), (None, None));
}

#[tokio::test]
async fn a_chat_runs_on_a_pooled_node_and_closing_it_leaves_the_node_warm() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let session = h
        .runner
        .open_chat_inline(chat(&h, Some("What does this repository do?")))
        .await
        .unwrap();
    assert_eq!(session.task_id, None);
    assert_eq!(session.status, SessionStatus::Pending);
    let ws = session.workspace_id.expect("the workspace is attached");

    // The workspace: no task, no branch, the stored first prompt under its message id.
    let requests = h.nodes.created();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!((r.task_id, r.branch.as_deref()), (None, None));
    assert_eq!(r.session_id, session.id);
    assert_eq!(r.repository_url, h.project.repository_url);
    let stored = h
        .store
        .list_messages(session.id, MessagePage::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].message.role, Role::User);
    let prompt = r.prompt.clone().unwrap();
    assert_eq!(prompt.message_id, stored[0].message.id);
    assert_eq!(prompt.text, "What does this repository do?");
    // The node: the size asked for, claimed by the chat.
    let node = h.store.get_node(r.node_id).await.unwrap().unwrap();
    assert_eq!(node.size, VmSize::Medium);
    assert_eq!(node.claimed_by, Some(chat_claim(session.id)));
    assert_eq!(node.state, NodeState::Active);

    h.runner.agent_started(ws, None).await.unwrap();
    assert_eq!(status(&h, session.id).await, SessionStatus::Active);
    assert_eq!(
        h.store.get_workspace(ws).await.unwrap().unwrap().status,
        WorkspaceStatus::Running
    );

    let closed = h.runner.close_chat(session.id).await.unwrap();
    assert_eq!(closed.status, SessionStatus::Closed);
    assert_eq!(h.nodes.destroyed(), vec![ws]);
    assert_eq!(
        h.store.get_workspace(ws).await.unwrap().unwrap().status,
        WorkspaceStatus::Destroyed
    );
    assert_eq!(h.node_state(node.id).await, NodeState::Warm);
    // Closing again changes nothing; a late agent report does not reopen it.
    assert_eq!(
        h.runner.close_chat(session.id).await.unwrap().status,
        SessionStatus::Closed
    );
    assert_eq!(h.nodes.destroyed(), vec![ws]);
    h.runner.agent_started(ws, None).await.unwrap();
    assert_eq!(status(&h, session.id).await, SessionStatus::Closed);

    // The next chat of that size claims the warm node instead of provisioning one.
    let next = h.runner.open_chat_inline(chat(&h, None)).await.unwrap();
    let r = h.nodes.created().pop().unwrap();
    assert_eq!(r.node_id, node.id);
    assert_eq!(r.prompt, None);
    assert_eq!(next.workspace_id, Some(r.workspace_id));
}

#[tokio::test]
async fn a_chat_whose_node_reports_the_removal_later_releases_it_then() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    h.nodes.set_destroy_progress(DestroyProgress::Requested);
    let session = h.runner.open_chat_inline(chat(&h, None)).await.unwrap();
    let ws = session.workspace_id.unwrap();
    let node = h.nodes.created()[0].node_id;
    h.runner.agent_started(ws, None).await.unwrap();
    h.runner.close_chat(session.id).await.unwrap();
    assert_eq!(
        h.store.get_workspace(ws).await.unwrap().unwrap().status,
        WorkspaceStatus::Destroying
    );
    assert_eq!(h.node_state(node).await, NodeState::Active);
    h.runner.workspace_destroyed(ws).await.unwrap();
    assert_eq!(h.node_state(node).await, NodeState::Warm);
}

#[tokio::test]
async fn a_tasks_session_is_not_a_chat_to_close() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let task = h
        .runner
        .run_now(NewTask {
            project_id: h.project.id,
            title: "A task".into(),
            description: "Do it".into(),
            priority: 0,
            vm_size_override: None,
            agent_hint: None,
        })
        .await
        .unwrap();
    let session = task.session_id.unwrap();
    let err = h.runner.close_chat(session).await.unwrap_err();
    assert!(matches!(err, Error::NotAChat { .. }), "{err:?}");
    assert_ne!(status(&h, session).await, SessionStatus::Closed);
    let err = h.runner.close_chat(SessionId::new()).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(h.store.get_task(task.id).await.unwrap().is_some());
}

#[tokio::test]
async fn a_chat_closed_before_its_node_came_gives_the_node_back() {
    let h = Harness::new().await;
    let session = h.runner.open_chat(chat(&h, Some("hello"))).await.unwrap();
    // No boots yet: the node is provisioning and the chat waits for it.
    eventually("the chat's node is provisioning", || async {
        !h.provider.servers().is_empty()
    })
    .await;
    h.runner.close_chat(session.id).await.unwrap();
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let node = h.provider.servers()[0].node_id.unwrap();
    eventually("the node goes warm unused", || async {
        h.node_state(node).await == NodeState::Warm
    })
    .await;
    assert!(h.nodes.created().is_empty(), "no workspace was started");
    assert_eq!(status(&h, session.id).await, SessionStatus::Closed);
}

#[tokio::test]
async fn a_chat_on_a_lost_node_is_stopped_with_a_notice() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let session = h.runner.open_chat_inline(chat(&h, None)).await.unwrap();
    let ws = session.workspace_id.unwrap();
    let node = h.nodes.created()[0].node_id;
    h.runner.agent_started(ws, None).await.unwrap();
    h.store.record_heartbeat(node, h.now()).await.unwrap();
    h.clock.advance(h.pool.settings().heartbeat_timeout);
    h.runner.tick().await.unwrap();
    assert_eq!(h.node_state(node).await, NodeState::Destroyed);
    assert_eq!(status(&h, session.id).await, SessionStatus::Stopped);
    let messages = h
        .store
        .list_messages(session.id, MessagePage::Latest { limit: 10 })
        .await
        .unwrap();
    let notice = &messages.last().unwrap().message;
    assert_eq!(notice.role, Role::System);
    assert!(notice.content.contains("node lost"), "{}", notice.content);
    assert_eq!(
        h.store.get_workspace(ws).await.unwrap().unwrap().status,
        WorkspaceStatus::Destroyed
    );
}

#[tokio::test]
async fn closing_a_chat_whose_start_was_cut_off_gives_its_idle_node_back() {
    let h = Harness::new().await;
    // A previous process opened the chat and acquired its node, then stopped before the
    // workspace was created: the session is pending and the node active, claimed by it.
    let now = h.now();
    let session = kiln_core::ChatSession {
        id: SessionId::new(),
        project_id: h.project.id,
        owner: h.owner,
        task_id: None,
        workspace_id: None,
        topic: None,
        status: SessionStatus::Pending,
        agent_hint: None,
        vm_size: None,
        message_count: 0,
        created_at: now,
        updated_at: now,
    };
    h.store.create_session(&session).await.unwrap();
    let mut node = h.node(VmSize::Small, NodeState::Active);
    node.claimed_by = Some(chat_claim(session.id));
    h.store.insert_node(&node).await.unwrap();
    // Another chat's node is not touched.
    let mut other = h.node(VmSize::Small, NodeState::Active);
    other.claimed_by = Some(chat_claim(SessionId::new()));
    h.store.insert_node(&other).await.unwrap();

    let closed = h.runner.close_chat(session.id).await.unwrap();
    assert_eq!(closed.status, SessionStatus::Closed);
    assert_eq!(h.node_state(node.id).await, NodeState::Warm);
    assert_eq!(h.node_state(other.id).await, NodeState::Active);
}
