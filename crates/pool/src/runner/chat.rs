//! Chats without a task: a chat session with its own workspace on a pooled node, opened by
//! the user and closed by the user.
//!
//! A chat acquires its node exactly like a task (a warm node of the project's provider, else
//! a new one), under a claim id equal to its session id ([`chat_claim`]): claims are opaque
//! ids, and no task ever has that id, so nothing mistakes the chat for a running task. Its
//! workspace checks out the
//! project's repository on the default branch and commits or pushes nothing; each prompt
//! goes to the workspace's running ACP session; closing the chat destroys the workspace and
//! the node goes back to the warm pool once it is empty.

use kiln_core::protocol::Prompt;
use kiln_core::{
    Change, ChatMessage, ChatSession, MessageId, MessagePage, NodeId, NodeQuery, NodeState,
    ProjectId, Role, SessionId, SessionPatch, SessionStatus, TaskId, VmSize, Workspace,
    WorkspaceId, WorkspaceQuery, WorkspaceStatus,
};

use super::TaskRunner;
use crate::controller::WorkspaceRequest;
use crate::error::Error;
use crate::pool::live_workspace_statuses;

/// A chat to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChat {
    /// The project whose repository the workspace checks out.
    pub project_id: ProjectId,
    /// The machine size (the project's default when none).
    pub vm_size: Option<VmSize>,
    /// The first prompt, sent as soon as the agent is up.
    pub prompt: Option<String>,
    /// Which agent to run.
    pub agent_hint: Option<String>,
}

/// What the background start of a chat needs.
#[derive(Debug)]
struct ChatStart {
    session: ChatSession,
    repository_url: String,
    provider: String,
    size: VmSize,
    prompt: Option<Prompt>,
}

/// The id under which a chat's node is claimed (its session id).
#[must_use]
pub fn chat_claim(session: SessionId) -> TaskId {
    TaskId::from(session.as_uuid())
}

impl TaskRunner {
    async fn session(&self, id: SessionId) -> Result<ChatSession, Error> {
        self.store()
            .get_session(id)
            .await?
            .ok_or_else(|| Error::not_found("session", id))
    }

    /// Sets a chat session's status and/or workspace, unless it was closed (a closed chat
    /// stays closed), and tells the viewers.
    async fn patch_chat(&self, session: &ChatSession, patch: SessionPatch) {
        match self.store().get_session(session.id).await {
            Ok(Some(current))
                if current.status == SessionStatus::Closed
                    && patch.status != Some(SessionStatus::Closed) =>
            {
                return;
            }
            _ => {}
        }
        match self
            .store()
            .update_session(session.id, &patch, self.now())
            .await
        {
            Ok(_) => {
                self.publish(
                    session.owner,
                    Some(session.project_id),
                    Change::Session {
                        session_id: session.id,
                    },
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(session = %session.id, error = %e, "could not update the chat session")
            }
        }
    }

    /// Stores a notice from Kiln in the session, so the user sees why the chat stopped.
    async fn chat_notice(&self, session: &ChatSession, text: String) {
        self.system_notice(session.id, text).await;
    }

    /// Stores a system message from Kiln in `session`; whether it was stored (a failure is
    /// logged, never raised: the notice explains a change already made).
    pub(super) async fn system_notice(&self, session: SessionId, text: String) -> bool {
        let now = self.now();
        let notice = ChatMessage {
            id: MessageId::new(),
            session_id: session,
            role: Role::System,
            content: text,
            tool: None,
            seq: None,
            created_at: now,
        };
        match self.store().insert_messages(&[notice], now).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(%session, error = %e, "could not store a notice from Kiln");
                false
            }
        }
    }

    /// Opens a chat without a task: the session is stored (with the first prompt, if any)
    /// and returned at once; a node is acquired and the workspace started in the background.
    /// If no node can be had, the session is stopped with a notice saying why.
    pub async fn open_chat(&self, new: NewChat) -> Result<ChatSession, Error> {
        let start = self.create_chat(new).await?;
        let runner = self.clone();
        let id = start.session.id;
        tokio::spawn(async move {
            if let Err(e) = runner.start_chat(start).await {
                tracing::warn!(session = %id, error = %e, "chat start stopped on an error");
            }
        });
        self.session(id).await
    }

    /// Like [`open_chat`](Self::open_chat), returning once the workspace was asked for (or
    /// the chat stopped).
    pub async fn open_chat_inline(&self, new: NewChat) -> Result<ChatSession, Error> {
        let start = self.create_chat(new).await?;
        let id = start.session.id;
        self.start_chat(start).await?;
        self.session(id).await
    }

    async fn create_chat(&self, new: NewChat) -> Result<ChatStart, Error> {
        let project = self
            .store()
            .get_project(new.project_id)
            .await?
            .ok_or_else(|| Error::not_found("project", new.project_id))?;
        let now = self.now();
        // Stored with the session, so a resumed start asks for the same agent and size.
        let session = ChatSession {
            id: SessionId::new(),
            project_id: project.id,
            owner: project.owner,
            task_id: None,
            workspace_id: None,
            topic: None,
            status: SessionStatus::Pending,
            agent_hint: new.agent_hint.filter(|h| !h.trim().is_empty()),
            vm_size: new.vm_size,
            message_count: 0,
            created_at: now,
            updated_at: now,
        };
        self.store().create_session(&session).await?;
        let size = new.vm_size.unwrap_or(project.default_vm_size);
        let prompt = match new.prompt {
            Some(text) => {
                let message = ChatMessage {
                    id: MessageId::new(),
                    session_id: session.id,
                    role: Role::User,
                    content: text.clone(),
                    tool: None,
                    seq: None,
                    created_at: now,
                };
                self.store()
                    .insert_messages(std::slice::from_ref(&message), now)
                    .await?;
                Some(Prompt {
                    message_id: message.id,
                    text,
                })
            }
            None => None,
        };
        self.publish(
            session.owner,
            Some(session.project_id),
            Change::Session {
                session_id: session.id,
            },
        )
        .await;
        tracing::info!(session = %session.id, project = %project.id, %size, "chat opened");
        Ok(ChatStart {
            session,
            repository_url: project.repository_url,
            provider: project.provider,
            size,
            prompt,
        })
    }

    /// Acquires the chat's node and starts its workspace.
    async fn start_chat(&self, start: ChatStart) -> Result<(), Error> {
        let ChatStart {
            session,
            repository_url,
            provider,
            size,
            prompt,
        } = start;
        let session = &session;
        let pool = &self.inner.pool;
        let location = pool.settings().location;
        let claim = chat_claim(session.id);
        // A node already claimed for the chat (a resumed start) is used; else warm, else new.
        let acquired = match pool.claimed_for(session.owner, claim).await {
            Ok(Some(acquired)) => Ok(acquired),
            Ok(None) => match pool
                .claim_warm(&provider, session.owner, size, location.as_deref(), claim)
                .await
            {
                Ok(Some(acquired)) => Ok(acquired),
                Ok(None) => {
                    pool.provision_for(&provider, session.owner, size, location.as_deref(), claim)
                        .await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let acquired = match acquired {
            Ok(acquired) => acquired,
            Err(e) => {
                tracing::warn!(session = %session.id, error = %e, "no node for the chat");
                self.chat_notice(session, format!("No node for this chat: {e}"))
                    .await;
                self.patch_chat(session, status_patch(SessionStatus::Stopped))
                    .await;
                return Ok(());
            }
        };
        let node = acquired.node.id;
        let current = self.session(session.id).await?;
        if current.status == SessionStatus::Closed {
            tracing::info!(session = %session.id, %node, "chat closed before its node came; releasing the node");
            self.inner.pool.release(node).await?;
            return Ok(());
        }
        if current.workspace_id.is_some() {
            // Another start (another replica's resume) attached its workspace first; the
            // node goes back unless that workspace is on it (a busy node stays).
            tracing::info!(session = %session.id, %node, "chat already has a workspace; not starting another");
            self.inner.pool.release(node).await?;
            return Ok(());
        }
        let now = self.now();
        let workspace = Workspace {
            id: WorkspaceId::new(),
            node_id: node,
            owner: session.owner,
            project_id: Some(session.project_id),
            task_id: None,
            session_id: Some(session.id),
            branch: None,
            status: WorkspaceStatus::Creating,
            created_at: now,
            updated_at: now,
        };
        self.store().create_workspace(&workspace).await?;
        self.publish(
            session.owner,
            Some(session.project_id),
            Change::Workspace {
                workspace_id: workspace.id,
            },
        )
        .await;
        self.patch_chat(
            session,
            SessionPatch {
                status: None,
                workspace_id: Some(Some(workspace.id)),
                topic: None,
            },
        )
        .await;
        let request = WorkspaceRequest {
            node_id: node,
            workspace_id: workspace.id,
            project_id: session.project_id,
            task_id: None,
            session_id: session.id,
            repository_url,
            branch: None,
            prompt,
            agent_hint: session.agent_hint.clone(),
        };
        if let Err(e) = self.inner.workspaces.create_workspace(&request).await {
            tracing::warn!(session = %session.id, workspace = %workspace.id, error = %e, "chat workspace did not start");
            self.chat_notice(
                session,
                format!("The chat's workspace could not start: {e}"),
            )
            .await;
            self.patch_chat(session, status_patch(SessionStatus::Stopped))
                .await;
            self.workspace_destroyed(workspace.id).await?;
            return Ok(());
        }
        // Closed while the workspace was being asked for: the close saw no workspace yet.
        if self.session(session.id).await?.status == SessionStatus::Closed {
            self.destroy_chat_workspace(session, workspace.id, node)
                .await?;
        }
        Ok(())
    }

    /// Carries on a chat a stopped process left `pending` (see the resume module docs):
    /// with no workspace yet, its node is acquired again (the node already claimed for it,
    /// if any) and its workspace started in the background, as [`open_chat`](Self::open_chat)
    /// does; with a workspace still `creating`, the create-workspace command is sent again.
    /// Either way it asks for the agent and machine size the chat was opened with (stored
    /// in the session); a node already claimed for it is used whatever its size. With a
    /// workspace still `creating`, the chat's later user messages (follow-ups taken while it
    /// was being created) are sent again after the command, in order, each under its own
    /// message id: the node drops those it took before the stop.
    pub(super) async fn resume_chat(&self, session: ChatSession) -> Result<bool, Error> {
        if session.task_id.is_some() || session.status != SessionStatus::Pending {
            return Ok(false);
        }
        let project = self
            .store()
            .get_project(session.project_id)
            .await?
            .ok_or_else(|| Error::not_found("project", session.project_id))?;
        let prompt = self.first_prompt(session.id).await?;
        let Some(workspace_id) = session.workspace_id else {
            let first = self
                .inner
                .resuming_chats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(session.id);
            if !first {
                return Ok(false);
            }
            tracing::info!(session = %session.id, "resuming a pending chat: acquiring its node again");
            let start = ChatStart {
                repository_url: project.repository_url,
                provider: project.provider,
                size: session.vm_size.unwrap_or(project.default_vm_size),
                prompt,
                session,
            };
            let runner = self.clone();
            tokio::spawn(async move {
                let id = start.session.id;
                if let Err(e) = runner.start_chat(start).await {
                    tracing::warn!(session = %id, error = %e, "resumed chat start stopped on an error");
                }
                runner
                    .inner
                    .resuming_chats
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&id);
            });
            return Ok(true);
        };
        let Some(workspace) = self.store().get_workspace(workspace_id).await? else {
            return Ok(false);
        };
        if workspace.status != WorkspaceStatus::Creating {
            return Ok(false);
        }
        let first = prompt.as_ref().map(|p| p.message_id);
        let request = WorkspaceRequest {
            node_id: workspace.node_id,
            workspace_id,
            project_id: session.project_id,
            task_id: None,
            session_id: session.id,
            repository_url: project.repository_url,
            branch: None,
            prompt,
            agent_hint: session.agent_hint.clone(),
        };
        tracing::info!(session = %session.id, node = %workspace.node_id, workspace = %workspace_id, "resuming a pending chat: sending its workspace command again");
        self.inner.workspaces.create_workspace(&request).await?;
        // The follow-ups the stopped process may not have handed to the node; the node drops
        // those it took already.
        for follow_up in self.follow_ups(session.id, first).await? {
            self.inner
                .workspaces
                .send_prompt(workspace.node_id, workspace_id, &follow_up)
                .await?;
        }
        Ok(true)
    }

    /// The chat's user messages other than its first prompt (`first`), oldest first, as
    /// prompts under their own message ids.
    async fn follow_ups(
        &self,
        session: SessionId,
        first: Option<MessageId>,
    ) -> Result<Vec<Prompt>, Error> {
        const PAGE: u32 = 200;
        let mut prompts = Vec::new();
        let mut cursor = 0;
        loop {
            let page = self
                .store()
                .list_messages(
                    session,
                    MessagePage::After {
                        cursor,
                        limit: PAGE,
                    },
                )
                .await?;
            let Some(last) = page.last() else {
                return Ok(prompts);
            };
            cursor = last.cursor;
            let full = page.len() == PAGE as usize;
            prompts.extend(
                page.into_iter()
                    .filter(|m| m.message.role == Role::User && Some(m.message.id) != first)
                    .map(|m| Prompt {
                        message_id: m.message.id,
                        text: m.message.content,
                    }),
            );
            if !full {
                return Ok(prompts);
            }
        }
    }

    /// The chat's first prompt: its oldest message, when the user wrote it.
    async fn first_prompt(&self, session: SessionId) -> Result<Option<Prompt>, Error> {
        let oldest = self
            .store()
            .list_messages(
                session,
                MessagePage::After {
                    cursor: 0,
                    limit: 1,
                },
            )
            .await?;
        Ok(oldest
            .into_iter()
            .next()
            .filter(|m| m.message.role == Role::User)
            .map(|m| Prompt {
                message_id: m.message.id,
                text: m.message.content,
            }))
    }

    /// Closes a chat without a task: the session is closed (read-only), its workspace
    /// destroyed and its node released to the warm pool once empty. Closing a closed chat
    /// returns it unchanged; a task's session is refused ([`Error::NotAChat`]).
    pub async fn close_chat(&self, id: SessionId) -> Result<ChatSession, Error> {
        let session = self.session(id).await?;
        if session.task_id.is_some() {
            return Err(Error::NotAChat { session: id });
        }
        if session.status == SessionStatus::Closed {
            return Ok(session);
        }
        self.patch_chat(&session, status_patch(SessionStatus::Closed))
            .await;
        tracing::info!(session = %id, workspace = ?session.workspace_id, "chat closed");
        // Read again: a workspace may have been attached since (destroying is idempotent).
        let session = self.session(id).await?;
        if let Some(workspace_id) = session.workspace_id
            && let Some(workspace) = self.store().get_workspace(workspace_id).await?
        {
            self.destroy_chat_workspace(&session, workspace.id, workspace.node_id)
                .await?;
        }
        self.release_chat_nodes(&session).await?;
        // Session writes are not conditional: a report that set another status meanwhile
        // (the agent came up) is overruled, so a closed chat stays closed.
        let session = self.session(id).await?;
        if session.status != SessionStatus::Closed {
            self.patch_chat(&session, status_patch(SessionStatus::Closed))
                .await;
        }
        self.session(id).await
    }

    /// Gives back any node still claimed for the chat with nothing on it: one whose
    /// acquisition ended without a workspace (the process that acquired it stopped).
    async fn release_chat_nodes(&self, session: &ChatSession) -> Result<(), Error> {
        let claimed = self
            .store()
            .list_nodes(&NodeQuery {
                owner: Some(session.owner),
                states: vec![NodeState::Active],
                ..NodeQuery::default()
            })
            .await?;
        let claim = chat_claim(session.id);
        for node in claimed.into_iter().filter(|n| n.claimed_by == Some(claim)) {
            let outcome = self.inner.pool.release(node.id).await?;
            tracing::info!(session = %session.id, node = %node.id, ?outcome, "chat node released");
        }
        Ok(())
    }

    async fn destroy_chat_workspace(
        &self,
        session: &ChatSession,
        workspace: WorkspaceId,
        node: NodeId,
    ) -> Result<(), Error> {
        let Some(ws) = self.store().get_workspace(workspace).await? else {
            return Ok(());
        };
        if matches!(
            ws.status,
            WorkspaceStatus::Destroyed | WorkspaceStatus::Destroying
        ) {
            return Ok(());
        }
        self.set_workspace(workspace, WorkspaceStatus::Destroying, None)
            .await?;
        self.send_destroy(node, workspace, &format!("chat {}", session.id))
            .await?;
        Ok(())
    }

    /// A chat's agent is up: the session is active (ready for prompts).
    pub(super) async fn chat_started(&self, workspace: &Workspace) -> Result<(), Error> {
        let current = self.store().get_workspace(workspace.id).await?;
        let live = current.is_some_and(|w| {
            matches!(
                w.status,
                WorkspaceStatus::Creating | WorkspaceStatus::Running
            )
        });
        if !live {
            return Ok(());
        }
        if let Some(id) = workspace.session_id {
            let session = self.session(id).await?;
            self.patch_chat(&session, status_patch(SessionStatus::Active))
                .await;
        }
        Ok(())
    }

    /// A chat's agent failed: the session is stopped and the workspace kept (stopped)
    /// until the user closes the chat.
    pub(super) async fn chat_failed(&self, workspace: &Workspace) -> Result<(), Error> {
        self.set_workspace(workspace.id, WorkspaceStatus::Stopped, None)
            .await?;
        if let Some(id) = workspace.session_id {
            let session = self.session(id).await?;
            self.patch_chat(&session, status_patch(SessionStatus::Stopped))
                .await;
        }
        Ok(())
    }

    /// A chat's running workspace is gone from its node, which lives on (its hello or its
    /// heartbeats no longer list it; `why` says which, for the notice): the workspace counts
    /// as destroyed, so the node goes back to the warm pool once empty, and the chat is
    /// stopped with a notice, as for a lost node. Nothing can carry the conversation over to
    /// a new workspace, so the user reads it and closes the chat. Returns the session
    /// stopped, if any (a chat closed meanwhile gets no notice).
    pub(super) async fn chat_workspace_lost(
        &self,
        workspace: &Workspace,
        why: &str,
    ) -> Result<Option<SessionId>, Error> {
        tracing::warn!(node = %workspace.node_id, workspace = %workspace.id, session = ?workspace.session_id, why, "chat workspace missing on its node; stopping the chat");
        self.workspace_destroyed(workspace.id).await?;
        let Some(id) = workspace.session_id else {
            return Ok(None);
        };
        let stopped = self
            .stop_chat_with_notice(
                id,
                format!(
                    "The chat's workspace was lost: {why}. Its agent and files are gone; close this chat and open a new one to go on."
                ),
            )
            .await?;
        Ok(stopped.then_some(id))
    }

    /// Stops a chat with a notice saying why, unless the user closed it already. `true`
    /// when it was stopped.
    async fn stop_chat_with_notice(&self, id: SessionId, notice: String) -> Result<bool, Error> {
        let session = self.session(id).await?;
        if session.status == SessionStatus::Closed {
            return Ok(false);
        }
        self.chat_notice(&session, notice).await;
        self.patch_chat(&session, status_patch(SessionStatus::Stopped))
            .await;
        Ok(true)
    }

    /// The chats on a lost node end with it: their workspaces are gone with the node and
    /// their sessions are stopped with a notice.
    pub(super) async fn chats_lost_with(&self, node: NodeId, reason: &str) -> Result<(), Error> {
        let workspaces = self
            .store()
            .list_workspaces(&WorkspaceQuery {
                node_id: Some(node),
                statuses: live_workspace_statuses(),
                ..WorkspaceQuery::default()
            })
            .await?;
        for ws in workspaces.into_iter().filter(|w| w.task_id.is_none()) {
            self.set_workspace(ws.id, WorkspaceStatus::Destroyed, None)
                .await?;
            let Some(id) = ws.session_id else { continue };
            self.stop_chat_with_notice(id, format!("The chat ended: {reason}"))
                .await?;
        }
        Ok(())
    }
}

fn status_patch(status: SessionStatus) -> SessionPatch {
    SessionPatch {
        status: Some(status),
        workspace_id: None,
        topic: None,
    }
}
