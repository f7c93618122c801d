//! A restarted runner picks up the `queued` and `delegated` runs and the `pending` chats its
//! predecessor left.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, eventually, settle};
use kiln_core::protocol::Prompt;
use kiln_core::{
    ChatMessage, ChatSession, MessageId, NodeQuery, NodeState, NodeStore, Role, SessionId,
    SessionStatus, SessionStore, Task, TaskId, TaskStatus, TaskStore, VmSize, WorkspaceQuery,
    WorkspaceStatus,
};
use kiln_pool::memory::{MemoryWorkspaces, simulate_node_boots};
use kiln_pool::{NewChat, Resumed, Settings, TaskRunner, chat_claim};

fn restarted(h: &Harness) -> (TaskRunner, Arc<MemoryWorkspaces>) {
    let pool = h.another_pool(Settings::default());
    let workspaces = Arc::new(MemoryWorkspaces::new());
    (TaskRunner::new(pool, workspaces.clone()), workspaces)
}

/// A task stored `queued` by a process that stopped before acquiring its node.
async fn stranded_queued(h: &Harness) -> Task {
    let now = h.now();
    let t = Task {
        id: TaskId::new(),
        project_id: h.project.id,
        owner: h.owner,
        title: "Stranded".into(),
        description: "left queued by a restart".into(),
        priority: 0,
        status: TaskStatus::Queued,
        status_changed_at: now,
        status_detail: None,
        output_branch: None,
        pr_url: None,
        summary: None,
        error_message: None,
        session_id: Some(kiln_core::SessionId::new()),
        workspace_id: None,
        node_id: None,
        vm_size_override: None,
        agent_hint: None,
        attempt: 1,
        created_at: now,
        updated_at: now,
    };
    h.store.create_task(&t).await.unwrap();
    t
}

#[tokio::test]
async fn a_queued_task_left_by_a_stopped_process_acquires_its_node_on_resume() {
    let h = Harness::new().await;
    let stranded = stranded_queued(&h).await;
    let (runner, workspaces) = restarted(&h);
    let _boots = simulate_node_boots(runner.pool().clone(), Duration::ZERO).await;

    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            queued: 1,
            ..Resumed::default()
        }
    );
    eventually("the resumed task is delegated", || async {
        h.task(stranded.id).await.status == TaskStatus::Delegated
    })
    .await;
    let t = h.task(stranded.id).await;
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1, "one workspace for the resumed task");
    assert_eq!(requests[0].task_id, Some(stranded.id));
    assert_eq!(Some(requests[0].workspace_id), t.workspace_id);
    assert_eq!(Some(requests[0].node_id), t.node_id);

    // Resuming again (another replica starting) does not start a second workspace.
    runner.resume().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(workspaces.created().len(), 1);
}

#[tokio::test]
async fn a_delegated_task_gets_its_workspace_command_again_after_a_restart() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (queued, _) = delegated_task(&h, "Delegated then restarted").await;
    let before = h.task(queued.id).await;
    let workspace = before.workspace_id.unwrap();
    assert_eq!(
        h.workspace_status(workspace).await,
        WorkspaceStatus::Creating
    );

    // The command was in the old process's memory; the new one sends it again.
    let (runner, workspaces) = restarted(&h);
    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            delegated: 1,
            ..Resumed::default()
        }
    );
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.workspace_id, workspace);
    assert_eq!(Some(r.node_id), before.node_id);
    assert_eq!(r.task_id, Some(before.id));
    assert_eq!(r.branch, Some(format!("task/{}", before.id)));
    assert_eq!(
        r.prompt.as_ref().unwrap().message_id,
        MessageId::for_task_prompt(before.id)
    );
    // Nothing else moved: same node, same workspace, still delegated.
    let after = h.task(queued.id).await;
    assert_eq!(after.status, TaskStatus::Delegated);
    assert_eq!(after.node_id, before.node_id);

    // Once the agent runs, there is nothing left to resend.
    runner.agent_started(workspace, None).await.unwrap();
    let (again, workspaces) = restarted(&h);
    assert_eq!(again.resume().await.unwrap(), Resumed::default());
    assert!(workspaces.created().is_empty());
}

#[tokio::test]
async fn a_workspace_left_destroying_gets_its_destroy_command_again() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (queued, _) = delegated_task(&h, "Completed, then the server stopped").await;
    let t = h.task(queued.id).await;
    let workspace = t.workspace_id.unwrap();
    // The node reports completion; the old process asks for the destroy and stops before
    // the node hears it (its controller only records the request).
    h.nodes
        .set_destroy_progress(kiln_pool::DestroyProgress::Requested);
    h.runner.agent_started(workspace, None).await.unwrap();
    h.runner
        .completed(workspace, None, None, None)
        .await
        .unwrap();
    assert_eq!(
        h.workspace_status(workspace).await,
        WorkspaceStatus::Destroying
    );

    let (runner, workspaces) = restarted(&h);
    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            destroying: 1,
            ..Resumed::default()
        }
    );
    assert_eq!(workspaces.destroyed(), vec![workspace]);
    // The fake node removes it at once: the workspace is destroyed and the node warm again.
    assert_eq!(
        h.workspace_status(workspace).await,
        WorkspaceStatus::Destroyed
    );
    let node = t.node_id.unwrap();
    eventually("the node is released warm", || async {
        h.node_state(node).await == kiln_core::NodeState::Warm
    })
    .await;
}

/// A task run to `delegated` on the harness's runner, with its workspace.
async fn delegated_task(h: &Harness, title: &str) -> (Task, kiln_core::WorkspaceId) {
    let t = h.delegated_task(title).await;
    let ws = t.workspace_id.unwrap();
    (t, ws)
}

#[tokio::test]
async fn a_hello_without_a_running_workspace_fails_its_task_and_settles_destroys() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;

    // Still being created: the node may not have heard of it yet; left alone.
    let (creating, creating_ws) = delegated_task(&h, "Creating").await;
    let node = creating.node_id.unwrap();
    let none = h.runner.reconcile_node(node, &[]).await.unwrap();
    assert_eq!(none, kiln_pool::Reconciled::default());
    assert_eq!(h.task(creating.id).await.status, TaskStatus::Delegated);

    // Running, and listed by the node: nothing to do.
    h.runner.agent_started(creating_ws, None).await.unwrap();
    let none = h.runner.reconcile_node(node, &[creating_ws]).await.unwrap();
    assert_eq!(none, kiln_pool::Reconciled::default());
    assert_eq!(h.task(creating.id).await.status, TaskStatus::InProgress);

    // Running in the store, but the node came back without it: the task fails, clearly.
    let done = h.runner.reconcile_node(node, &[]).await.unwrap();
    assert_eq!(done.failed_tasks, vec![creating.id]);
    let failed = h.task(creating.id).await;
    assert_eq!(failed.status, TaskStatus::Failed);
    assert!(
        failed
            .error_message
            .as_deref()
            .unwrap()
            .contains("no longer has workspace"),
        "{:?}",
        failed.error_message
    );

    // A workspace being destroyed that the node no longer has is destroyed; its node is
    // released once empty.
    let (t, ws) = delegated_task(&h, "Destroy lost").await;
    h.nodes
        .set_destroy_progress(kiln_pool::DestroyProgress::Requested);
    h.runner.agent_started(ws, None).await.unwrap();
    h.runner.completed(ws, None, None, None).await.unwrap();
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Destroying);
    let done = h
        .runner
        .reconcile_node(t.node_id.unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(done.destroyed, vec![ws]);
    assert_eq!(h.workspace_status(ws).await, WorkspaceStatus::Destroyed);
}

/// A chat stored `pending` with its first prompt by a process that stopped before asking
/// for its workspace (while its node was being acquired).
async fn stranded_chat(h: &Harness, prompt: &str) -> (ChatSession, MessageId) {
    stranded_chat_with(h, prompt, None, None).await
}

/// Like [`stranded_chat`], opened with an agent hint and a VM size.
async fn stranded_chat_with(
    h: &Harness,
    prompt: &str,
    agent_hint: Option<&str>,
    vm_size: Option<VmSize>,
) -> (ChatSession, MessageId) {
    let now = h.now();
    let session = ChatSession {
        id: SessionId::new(),
        project_id: h.project.id,
        owner: h.owner,
        task_id: None,
        workspace_id: None,
        topic: None,
        status: SessionStatus::Pending,
        agent_hint: agent_hint.map(str::to_owned),
        vm_size,
        message_count: 0,
        created_at: now,
        updated_at: now,
    };
    h.store.create_session(&session).await.unwrap();
    let message = ChatMessage {
        id: MessageId::new(),
        session_id: session.id,
        role: Role::User,
        content: prompt.into(),
        tool: None,
        seq: None,
        created_at: now,
    };
    h.store
        .insert_messages(std::slice::from_ref(&message), now)
        .await
        .unwrap();
    (session, message.id)
}

async fn chat_session(h: &Harness, id: SessionId) -> ChatSession {
    h.store.get_session(id).await.unwrap().unwrap()
}

/// The owner's nodes that are not gone.
async fn live_nodes(h: &Harness) -> Vec<kiln_core::Node> {
    h.store
        .list_nodes(&NodeQuery {
            owner: Some(h.owner),
            states: vec![NodeState::Provisioning, NodeState::Active, NodeState::Warm],
            ..NodeQuery::default()
        })
        .await
        .unwrap()
}

/// The owner's workspaces, of any status.
async fn all_workspaces(h: &Harness) -> Vec<kiln_core::Workspace> {
    h.store
        .list_workspaces(&WorkspaceQuery {
            owner: Some(h.owner),
            ..WorkspaceQuery::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pending_chat_left_without_a_workspace_is_started_on_resume() {
    let h = Harness::new().await;
    let (chat, prompt) = stranded_chat(&h, "What does this repository do?").await;
    let (runner, workspaces) = restarted(&h);
    let _boots = simulate_node_boots(runner.pool().clone(), Duration::ZERO).await;

    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            chats: 1,
            ..Resumed::default()
        }
    );
    eventually("the resumed chat has its workspace", || async {
        chat_session(&h, chat.id).await.workspace_id.is_some()
    })
    .await;
    let session = chat_session(&h, chat.id).await;
    assert_eq!(
        session.status,
        SessionStatus::Pending,
        "until the agent is up"
    );
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1, "one workspace for the resumed chat");
    let r = &requests[0];
    assert_eq!((r.task_id, r.branch.as_deref()), (None, None));
    assert_eq!(r.session_id, chat.id);
    assert_eq!(Some(r.workspace_id), session.workspace_id);
    assert_eq!(r.repository_url, h.project.repository_url);
    // The stored first prompt goes along; opened without a hint: the default agent.
    assert_eq!(r.prompt.as_ref().unwrap().message_id, prompt);
    assert_eq!(r.agent_hint, None);
    // Its node: claimed by the chat, of the project's default size (none was asked for).
    let node = h.store.get_node(r.node_id).await.unwrap().unwrap();
    assert_eq!(node.claimed_by, Some(chat_claim(chat.id)));
    assert_eq!(node.size, h.project.default_vm_size);

    // The agent comes up: the chat is active like any other.
    runner.agent_started(r.workspace_id, None).await.unwrap();
    assert_eq!(
        chat_session(&h, chat.id).await.status,
        SessionStatus::Active
    );
}

#[tokio::test]
async fn a_pending_chat_resumes_with_the_agent_and_size_it_was_opened_with() {
    let h = Harness::new().await;
    assert_ne!(h.project.default_vm_size, VmSize::Large);
    let (chat, prompt) =
        stranded_chat_with(&h, "Port it", Some("codex"), Some(VmSize::Large)).await;
    let (runner, workspaces) = restarted(&h);
    let _boots = simulate_node_boots(runner.pool().clone(), Duration::ZERO).await;

    assert_eq!(runner.resume().await.unwrap().chats, 1);
    eventually("the resumed chat has its workspace", || async {
        chat_session(&h, chat.id).await.workspace_id.is_some()
    })
    .await;
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1, "one workspace for the resumed chat");
    let r = &requests[0];
    assert_eq!(r.session_id, chat.id);
    assert_eq!(r.prompt.as_ref().unwrap().message_id, prompt);
    assert_eq!(
        r.agent_hint.as_deref(),
        Some("codex"),
        "the agent asked for"
    );
    let node = h.store.get_node(r.node_id).await.unwrap().unwrap();
    assert_eq!(node.claimed_by, Some(chat_claim(chat.id)));
    assert_eq!(node.size, VmSize::Large, "the size asked for");
    let session = chat_session(&h, chat.id).await;
    assert_eq!(
        (session.agent_hint.as_deref(), session.vm_size),
        (Some("codex"), Some(VmSize::Large)),
        "still stored for a later start"
    );
}

#[tokio::test]
async fn a_resumed_chat_uses_the_node_already_claimed_for_it() {
    let h = Harness::new().await;
    let _old_boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let (chat, _) = stranded_chat(&h, "Hello").await;
    // The old process got the chat's node, then stopped before asking for the workspace.
    let claimed = h
        .pool
        .acquire(h.owner, VmSize::Medium, None, chat_claim(chat.id))
        .await
        .unwrap()
        .node;
    assert_eq!(live_nodes(&h).await.len(), 1);

    let (runner, workspaces) = restarted(&h);
    let _boots = simulate_node_boots(runner.pool().clone(), Duration::ZERO).await;
    assert_eq!(runner.resume().await.unwrap().chats, 1);
    eventually("the resumed chat has its workspace", || async {
        chat_session(&h, chat.id).await.workspace_id.is_some()
    })
    .await;
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].node_id, claimed.id, "the node already claimed");
    let nodes = live_nodes(&h).await;
    assert_eq!(
        nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![claimed.id],
        "no second node"
    );
    assert_eq!(nodes[0].state, NodeState::Active);
}

#[tokio::test]
async fn a_chat_whose_workspace_is_still_creating_gets_its_command_again() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let opened = h
        .runner
        .open_chat_inline(NewChat {
            project_id: h.project.id,
            vm_size: None,
            prompt: Some("Explain the build".into()),
            agent_hint: Some("claude".into()),
        })
        .await
        .unwrap();
    let workspace = opened.workspace_id.unwrap();
    let first = h.nodes.created();
    assert_eq!(first.len(), 1);

    // The command was in the old process's memory; the new one sends it again.
    let (runner, workspaces) = restarted(&h);
    let resumed = runner.resume().await.unwrap();
    assert_eq!(
        resumed,
        Resumed {
            chats: 1,
            ..Resumed::default()
        }
    );
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.workspace_id, workspace);
    assert_eq!(r.node_id, first[0].node_id);
    assert_eq!((r.task_id, r.branch.as_deref()), (None, None));
    assert_eq!(r.session_id, opened.id);
    assert_eq!(r.prompt, first[0].prompt, "the same first prompt, same id");
    assert_eq!(
        r.agent_hint.as_deref(),
        Some("claude"),
        "the stored hint: the agent the chat was opened with"
    );
    // Nothing else moved: one workspace, one node.
    assert_eq!(all_workspaces(&h).await.len(), 1);
    assert_eq!(live_nodes(&h).await.len(), 1);

    // Once the agent runs, there is nothing left to resend.
    runner.agent_started(workspace, None).await.unwrap();
    let (again, workspaces) = restarted(&h);
    assert_eq!(again.resume().await.unwrap(), Resumed::default());
    assert!(workspaces.created().is_empty());
}

/// A follow-up accepted while the chat's workspace was still being created waited in the
/// old server's memory (its command queue) for the node. The stored messages do not say
/// whether the node took it before the restart, so the resumed chat sends every user
/// message after its first prompt again, in order, under its own message id, after the
/// create command (which carries the first prompt); the node drops those it took already
/// (README, "Chats without a task").
#[tokio::test]
async fn a_resumed_chat_sends_its_follow_ups_again_in_order_after_its_first_prompt() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    let opened = h
        .runner
        .open_chat_inline(NewChat {
            project_id: h.project.id,
            vm_size: None,
            prompt: Some("Explain the build".into()),
            agent_hint: None,
        })
        .await
        .unwrap();
    let first = h.nodes.created()[0].prompt.clone().unwrap();
    // Two follow-ups, stored as `POST /api/sessions/{id}/prompt` stores them, and an
    // agent's message between them (not a prompt).
    let message = |role: Role, content: &str| ChatMessage {
        id: MessageId::new(),
        session_id: opened.id,
        role,
        content: content.into(),
        tool: None,
        seq: None,
        created_at: h.now(),
    };
    let follow_ups = [
        message(Role::User, "And the tests?"),
        message(Role::Assistant, "Working on it."),
        message(Role::User, "And the docs?"),
    ];
    for m in &follow_ups {
        h.store
            .insert_messages(std::slice::from_ref(m), h.now())
            .await
            .unwrap();
    }

    let (runner, workspaces) = restarted(&h);
    assert_eq!(runner.resume().await.unwrap().chats, 1);
    let requests = workspaces.created();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].prompt.as_ref().map(|p| p.message_id),
        Some(first.message_id),
        "the create command carries the first prompt again"
    );
    let workspace = requests[0].workspace_id;
    assert_eq!(
        workspaces.prompts(),
        vec![
            (
                workspace,
                Prompt {
                    message_id: follow_ups[0].id,
                    text: "And the tests?".into(),
                }
            ),
            (
                workspace,
                Prompt {
                    message_id: follow_ups[2].id,
                    text: "And the docs?".into(),
                }
            ),
        ],
        "the follow-ups again, in order, once each, not the first prompt or the agent's words"
    );
}

#[tokio::test]
async fn a_closed_chat_is_not_resumed() {
    let h = Harness::new().await;
    let _boots = simulate_node_boots(h.pool.clone(), Duration::ZERO).await;
    // Cut off before its workspace, then closed; and one closed while creating.
    let (stranded, _) = stranded_chat(&h, "Never mind").await;
    h.runner.close_chat(stranded.id).await.unwrap();
    let opened = h
        .runner
        .open_chat_inline(NewChat {
            project_id: h.project.id,
            vm_size: None,
            prompt: None,
            agent_hint: None,
        })
        .await
        .unwrap();
    h.nodes
        .set_destroy_progress(kiln_pool::DestroyProgress::Requested);
    h.runner.close_chat(opened.id).await.unwrap();
    let nodes_before = live_nodes(&h).await;

    let (runner, workspaces) = restarted(&h);
    let _restarted_boots = simulate_node_boots(runner.pool().clone(), Duration::ZERO).await;
    let resumed = runner.resume().await.unwrap();
    assert_eq!(resumed.chats, 0, "{resumed:?}");
    assert!(workspaces.created().is_empty());
    for id in [stranded.id, opened.id] {
        let session = chat_session(&h, id).await;
        assert_eq!(session.status, SessionStatus::Closed);
    }
    assert_eq!(chat_session(&h, stranded.id).await.workspace_id, None);
    // The closed chat's destroy is resent (its node may go warm), but no node is acquired.
    let ids = |nodes: Vec<kiln_core::Node>| nodes.into_iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(
        ids(live_nodes(&h).await),
        ids(nodes_before),
        "no node acquired"
    );
}

#[tokio::test]
async fn resuming_a_pending_chat_twice_starts_one_workspace() {
    let h = Harness::new().await;
    let (chat, _) = stranded_chat(&h, "Twice").await;
    let (runner, workspaces) = restarted(&h);
    let _boots = simulate_node_boots(runner.pool().clone(), Duration::ZERO).await;

    // Back to back, while the first start may still be acquiring its node.
    let first = runner.resume().await.unwrap();
    let second = runner.resume().await.unwrap();
    assert_eq!(first.chats, 1);
    assert!(second.chats <= 1, "{second:?}");
    eventually("the resumed chat has its workspace", || async {
        chat_session(&h, chat.id).await.workspace_id.is_some()
    })
    .await;
    // Another replica starting now finds the workspace creating and only resends it.
    let (replica, replica_workspaces) = restarted(&h);
    assert_eq!(replica.resume().await.unwrap().chats, 1);
    settle().await;
    let workspace = chat_session(&h, chat.id).await.workspace_id.unwrap();
    let stored = all_workspaces(&h).await;
    assert_eq!(
        stored.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![workspace],
        "one workspace for the chat"
    );
    assert!(
        workspaces
            .created()
            .iter()
            .chain(replica_workspaces.created().iter())
            .all(|r| r.workspace_id == workspace)
    );
    assert_eq!(replica_workspaces.created().len(), 1);
    let nodes = live_nodes(&h).await;
    assert_eq!(nodes.len(), 1, "one node for the chat: {nodes:?}");
    assert_eq!(nodes[0].claimed_by, Some(chat_claim(chat.id)));
}
