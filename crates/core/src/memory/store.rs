use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use crate::clock::Timestamp;
use crate::ids::{MessageId, NodeId, ProjectId, SessionId, TaskId, UserId, WorkspaceId};
use crate::model::{
    ChatMessage, ChatSession, Node, Project, Role, SessionStatus, StoredMessage, Task, User,
    VmSize, Workspace, topic_from_message,
};
use crate::node::NodeState;
use crate::secret_store::{SecretKey, SecretKind, SecretStore, StoredSecret};
use crate::store::{
    ApiToken, Change, DestroyGuard, InsertOutcome, MessagePage, NodeQuery, NodeStore, SessionPatch,
    SessionQuery, SessionStore, StoreError, StoreEvent, TaskQuery, TaskStore, UserStore,
    WorkspaceQuery,
};
use crate::task::TaskStatus;

/// A [`Store`](crate::Store) in memory: one mutex over plain maps, so every method is atomic.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    events: broadcast::Sender<StoreEvent>,
}

#[derive(Debug, Default)]
struct State {
    projects: HashMap<ProjectId, Project>,
    sessions: HashMap<SessionId, ChatSession>,
    messages: HashMap<SessionId, Vec<StoredMessage>>,
    message_sessions: HashMap<MessageId, SessionId>,
    tasks: HashMap<TaskId, Task>,
    workspaces: HashMap<WorkspaceId, Workspace>,
    nodes: HashMap<NodeId, Node>,
    users: HashMap<UserId, User>,
    tokens: HashMap<uuid::Uuid, ApiToken>,
    secrets: HashMap<SecretKey, StoredSecret>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            events: broadcast::channel(4096).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps, still consistent per method.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn announce(&self, event: StoreEvent) {
        // No subscriber is fine: nobody is watching.
        let _ = self.events.send(event);
    }
}

fn sorted<T: Clone, K: Ord>(items: impl Iterator<Item = T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    v.sort_by_key(key);
    v
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create_project(&self, project: &Project) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.projects.contains_key(&project.id) {
            return Err(StoreError::conflict(format!(
                "project {} exists",
                project.id
            )));
        }
        s.projects.insert(project.id, project.clone());
        Ok(())
    }

    async fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError> {
        Ok(self.lock().projects.get(&id).cloned())
    }

    async fn list_projects(&self, owner: UserId) -> Result<Vec<Project>, StoreError> {
        let s = self.lock();
        Ok(sorted(
            s.projects.values().filter(|p| p.owner == owner).cloned(),
            |p| (p.created_at, p.id),
        ))
    }

    async fn update_project(&self, project: &Project) -> Result<(), StoreError> {
        let mut s = self.lock();
        let stored = s
            .projects
            .get_mut(&project.id)
            .ok_or_else(|| StoreError::not_found("project", project.id))?;
        stored.name.clone_from(&project.name);
        stored.repository_url.clone_from(&project.repository_url);
        stored.default_vm_size = project.default_vm_size;
        stored.provider.clone_from(&project.provider);
        stored.updated_at = project.updated_at;
        Ok(())
    }

    async fn delete_project(&self, id: ProjectId) -> Result<bool, StoreError> {
        let mut s = self.lock();
        if s.projects.remove(&id).is_none() {
            return Ok(false);
        }
        s.tasks.retain(|_, t| t.project_id != id);
        s.secrets.retain(|key, _| key.project_id != Some(id));
        let gone: Vec<SessionId> = s
            .sessions
            .values()
            .filter(|c| c.project_id == id)
            .map(|c| c.id)
            .collect();
        for session in gone {
            s.sessions.remove(&session);
            for m in s.messages.remove(&session).unwrap_or_default() {
                s.message_sessions.remove(&m.message.id);
            }
        }
        Ok(true)
    }

    async fn create_session(&self, session: &ChatSession) -> Result<(), StoreError> {
        let mut s = self.lock();
        if !s.projects.contains_key(&session.project_id) {
            return Err(StoreError::not_found("project", session.project_id));
        }
        if s.sessions.contains_key(&session.id) {
            return Err(StoreError::conflict(format!(
                "session {} exists",
                session.id
            )));
        }
        s.sessions.insert(session.id, session.clone());
        Ok(())
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<ChatSession>, StoreError> {
        Ok(self.lock().sessions.get(&id).cloned())
    }

    async fn list_sessions(
        &self,
        project: ProjectId,
        query: &SessionQuery,
    ) -> Result<Vec<ChatSession>, StoreError> {
        let s = self.lock();
        let mut v = sorted(
            s.sessions
                .values()
                .filter(|c| {
                    c.project_id == project && query.task_id.is_none_or(|t| c.task_id == Some(t))
                })
                .cloned(),
            |c| std::cmp::Reverse((c.created_at, c.id)),
        );
        if let Some(limit) = query.limit {
            v.truncate(limit as usize);
        }
        Ok(v)
    }

    async fn list_chats_by_status(
        &self,
        statuses: &[SessionStatus],
    ) -> Result<Vec<ChatSession>, StoreError> {
        let s = self.lock();
        Ok(sorted(
            s.sessions
                .values()
                .filter(|c| c.task_id.is_none() && statuses.contains(&c.status))
                .cloned(),
            |c| (c.created_at, c.id),
        ))
    }

    async fn update_session(
        &self,
        id: SessionId,
        patch: &SessionPatch,
        now: Timestamp,
    ) -> Result<ChatSession, StoreError> {
        let mut s = self.lock();
        let c = s
            .sessions
            .get_mut(&id)
            .ok_or_else(|| StoreError::not_found("session", id))?;
        if let Some(status) = patch.status {
            c.status = status;
        }
        if let Some(workspace) = patch.workspace_id {
            c.workspace_id = workspace;
        }
        if let Some(topic) = &patch.topic {
            c.topic.clone_from(topic);
        }
        c.updated_at = now;
        Ok(c.clone())
    }

    async fn insert_messages(
        &self,
        messages: &[ChatMessage],
        now: Timestamp,
    ) -> Result<InsertOutcome, StoreError> {
        let mut outcome = InsertOutcome::default();
        let mut events = Vec::new();
        {
            let mut s = self.lock();
            if let Some(m) = messages
                .iter()
                .find(|m| !s.sessions.contains_key(&m.session_id))
            {
                return Err(StoreError::not_found("session", m.session_id));
            }
            for m in messages {
                if s.message_sessions.contains_key(&m.id) {
                    outcome.duplicates += 1;
                    continue;
                }
                let list = s.messages.entry(m.session_id).or_default();
                let stored = StoredMessage {
                    cursor: list.len() as i64 + 1,
                    message: m.clone(),
                };
                list.push(stored.clone());
                s.message_sessions.insert(m.id, m.session_id);
                let session = s.sessions.get_mut(&m.session_id).expect("checked above");
                session.message_count += 1;
                session.updated_at = now;
                if session.topic.is_none() && m.role == Role::User {
                    session.topic = Some(topic_from_message(&m.content));
                }
                outcome.persisted += 1;
                outcome.stored.push(stored);
            }
            for m in &outcome.stored {
                let session = &s.sessions[&m.message.session_id];
                match events.last_mut() {
                    Some(StoreEvent {
                        change:
                            Change::MessagesStored {
                                session_id, last, ..
                            },
                        ..
                    }) if *session_id == session.id => {
                        *last = m.cursor;
                    }
                    _ => events.push(StoreEvent {
                        owner: session.owner,
                        project_id: Some(session.project_id),
                        change: Change::MessagesStored {
                            session_id: session.id,
                            first: m.cursor,
                            last: m.cursor,
                        },
                    }),
                }
            }
        }
        for event in events {
            self.announce(event);
        }
        Ok(outcome)
    }

    async fn list_messages(
        &self,
        session: SessionId,
        page: MessagePage,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let s = self.lock();
        let all = s
            .messages
            .get(&session)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Cursors are 1..=len, so cursor c sits at index c - 1.
        let index = |cursor: i64| usize::try_from(cursor).unwrap_or(0).min(all.len());
        let last = |slice: &[StoredMessage], limit: u32| {
            slice[slice.len().saturating_sub(limit as usize)..].to_vec()
        };
        let page = match page {
            MessagePage::Latest { limit } => last(all, limit),
            MessagePage::Before { cursor, limit } => last(&all[..index(cursor - 1)], limit),
            MessagePage::After { cursor, limit } => all[index(cursor)..]
                .iter()
                .take(limit as usize)
                .cloned()
                .collect(),
        };
        Ok(page)
    }

    async fn update_message_content(
        &self,
        id: MessageId,
        content: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        let session = *s
            .message_sessions
            .get(&id)
            .ok_or_else(|| StoreError::not_found("message", id))?;
        if let Some(m) = s
            .messages
            .get_mut(&session)
            .and_then(|l| l.iter_mut().find(|m| m.message.id == id))
        {
            m.message.content = content.to_owned();
        }
        if let Some(c) = s.sessions.get_mut(&session) {
            c.updated_at = now;
        }
        Ok(())
    }

    async fn publish(&self, event: &StoreEvent) -> Result<(), StoreError> {
        self.announce(event.clone());
        Ok(())
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, StoreEvent>, StoreError> {
        Ok(broadcast_stream(self.events.subscribe()).boxed())
    }
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn create_task(&self, task: &Task) -> Result<(), StoreError> {
        let mut s = self.lock();
        if !s.projects.contains_key(&task.project_id) {
            return Err(StoreError::not_found("project", task.project_id));
        }
        if s.tasks.contains_key(&task.id) {
            return Err(StoreError::conflict(format!("task {} exists", task.id)));
        }
        s.tasks.insert(task.id, task.clone());
        Ok(())
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        Ok(self.lock().tasks.get(&id).cloned())
    }

    async fn list_tasks(
        &self,
        project: ProjectId,
        query: &TaskQuery,
    ) -> Result<Vec<Task>, StoreError> {
        let s = self.lock();
        Ok(sorted(
            s.tasks
                .values()
                .filter(|t| {
                    t.project_id == project
                        && (query.statuses.is_empty() || query.statuses.contains(&t.status))
                })
                .cloned(),
            |t| (std::cmp::Reverse(t.priority), t.created_at, t.id),
        ))
    }

    async fn update_task(&self, task: &Task, expected: TaskStatus) -> Result<(), StoreError> {
        let mut s = self.lock();
        let stored = s
            .tasks
            .get_mut(&task.id)
            .ok_or_else(|| StoreError::not_found("task", task.id))?;
        if stored.status != expected {
            return Err(StoreError::conflict(format!(
                "task {} is {}, not {expected}",
                task.id, stored.status
            )));
        }
        *stored = task.clone();
        Ok(())
    }

    async fn delete_task(&self, id: TaskId) -> Result<bool, StoreError> {
        Ok(self.lock().tasks.remove(&id).is_some())
    }

    async fn list_tasks_by_status(&self, statuses: &[TaskStatus]) -> Result<Vec<Task>, StoreError> {
        let s = self.lock();
        Ok(sorted(
            s.tasks
                .values()
                .filter(|t| statuses.contains(&t.status))
                .cloned(),
            |t| (t.status_changed_at, t.id),
        ))
    }

    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.workspaces.contains_key(&workspace.id) {
            return Err(StoreError::conflict(format!(
                "workspace {} exists",
                workspace.id
            )));
        }
        s.workspaces.insert(workspace.id, workspace.clone());
        Ok(())
    }

    async fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>, StoreError> {
        Ok(self.lock().workspaces.get(&id).cloned())
    }

    async fn update_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        let mut s = self.lock();
        let stored = s
            .workspaces
            .get_mut(&workspace.id)
            .ok_or_else(|| StoreError::not_found("workspace", workspace.id))?;
        stored.branch.clone_from(&workspace.branch);
        stored.status = workspace.status;
        stored.updated_at = workspace.updated_at;
        Ok(())
    }

    async fn list_workspaces(&self, query: &WorkspaceQuery) -> Result<Vec<Workspace>, StoreError> {
        let s = self.lock();
        Ok(sorted(
            s.workspaces
                .values()
                .filter(|w| {
                    query.owner.is_none_or(|o| w.owner == o)
                        && query.node_id.is_none_or(|n| w.node_id == n)
                        && query.task_id.is_none_or(|t| w.task_id == Some(t))
                        && (query.statuses.is_empty() || query.statuses.contains(&w.status))
                })
                .cloned(),
            |w| (w.created_at, w.id),
        ))
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.users.values().any(|u| u.name == user.name) || s.users.contains_key(&user.id) {
            return Err(StoreError::conflict(format!(
                "user name {:?} is taken",
                user.name
            )));
        }
        s.users.insert(user.id, user.clone());
        Ok(())
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        Ok(self.lock().users.get(&id).cloned())
    }

    async fn get_user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        Ok(self.lock().users.values().find(|u| u.name == name).cloned())
    }

    async fn create_api_token(&self, token: &ApiToken) -> Result<(), StoreError> {
        let mut s = self.lock();
        if !s.users.contains_key(&token.user_id) {
            return Err(StoreError::not_found("user", token.user_id));
        }
        if s.tokens.values().any(|t| t.token_hash == token.token_hash) {
            return Err(StoreError::conflict("token hash exists"));
        }
        s.tokens.insert(token.id, token.clone());
        Ok(())
    }

    async fn find_api_token(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        Ok(self
            .lock()
            .tokens
            .values()
            .find(|t| t.token_hash == token_hash)
            .cloned())
    }

    async fn delete_api_token(&self, id: uuid::Uuid) -> Result<bool, StoreError> {
        Ok(self.lock().tokens.remove(&id).is_some())
    }

    async fn list_api_tokens(&self, user: UserId) -> Result<Vec<ApiToken>, StoreError> {
        let mut tokens: Vec<ApiToken> = self
            .lock()
            .tokens
            .values()
            .filter(|t| t.user_id == user)
            .cloned()
            .collect();
        tokens.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(tokens)
    }
}

#[async_trait]
impl SecretStore for MemoryStore {
    async fn put_secret(&self, secret: &StoredSecret) -> Result<StoredSecret, StoreError> {
        let mut s = self.lock();
        if let Some(project) = secret.key.project_id
            && s.projects
                .get(&project)
                .is_none_or(|p| p.owner != secret.key.owner)
        {
            return Err(StoreError::not_found("project", project));
        }
        let mut stored = secret.clone();
        if let Some(old) = s.secrets.get(&secret.key) {
            stored.created_at = old.created_at;
        }
        s.secrets.insert(secret.key, stored.clone());
        Ok(stored)
    }

    async fn get_secret(&self, key: &SecretKey) -> Result<Option<StoredSecret>, StoreError> {
        Ok(self.lock().secrets.get(key).cloned())
    }

    async fn delete_secret(&self, key: &SecretKey) -> Result<bool, StoreError> {
        Ok(self.lock().secrets.remove(key).is_some())
    }

    async fn secret_owners(&self, kind: SecretKind) -> Result<Vec<UserId>, StoreError> {
        let mut owners: Vec<UserId> = self
            .lock()
            .secrets
            .keys()
            .filter(|k| k.kind == kind)
            .map(|k| k.owner)
            .collect();
        owners.sort_unstable_by_key(|o| o.0);
        owners.dedup();
        Ok(owners)
    }
}

fn node_matches(n: &Node, q: &NodeQuery) -> bool {
    q.owner.is_none_or(|o| n.owner == o)
        && (q.states.is_empty() || q.states.contains(&n.state))
        && q.warm_until_at_or_before
            .is_none_or(|t| n.state == NodeState::Warm && n.warm_until.is_some_and(|w| w <= t))
        && q.created_at_or_before.is_none_or(|t| n.created_at <= t)
        && q.updated_at_or_before.is_none_or(|t| n.updated_at <= t)
        && q.heartbeat_at_or_before
            .is_none_or(|t| n.last_heartbeat_at.unwrap_or(n.created_at) <= t)
        && q.provider.as_deref().is_none_or(|p| n.provider == p)
}

impl MemoryStore {
    fn with_node<R>(
        &self,
        id: NodeId,
        f: impl FnOnce(&mut Node) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut s = self.lock();
        let node = s
            .nodes
            .get_mut(&id)
            .ok_or_else(|| StoreError::not_found("node", id))?;
        f(node)
    }
}

fn wrong_state(node: &Node, wanted: &str) -> StoreError {
    StoreError::conflict(format!("node {} is {}, not {wanted}", node.id, node.state))
}

#[async_trait]
impl NodeStore for MemoryStore {
    async fn insert_node(&self, node: &Node) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.nodes.contains_key(&node.id) {
            return Err(StoreError::conflict(format!("node {} exists", node.id)));
        }
        s.nodes.insert(node.id, node.clone());
        Ok(())
    }

    async fn get_node(&self, id: NodeId) -> Result<Option<Node>, StoreError> {
        Ok(self.lock().nodes.get(&id).cloned())
    }

    async fn list_nodes(&self, query: &NodeQuery) -> Result<Vec<Node>, StoreError> {
        let s = self.lock();
        Ok(sorted(
            s.nodes.values().filter(|n| node_matches(n, query)).cloned(),
            |n| (n.created_at, n.id),
        ))
    }

    async fn claim_warm_node(
        &self,
        owner: UserId,
        size: VmSize,
        provider: &str,
        location: Option<&str>,
        task: TaskId,
        now: Timestamp,
    ) -> Result<Option<Node>, StoreError> {
        let mut s = self.lock();
        let best = s
            .nodes
            .values_mut()
            .filter(|n| {
                n.owner == owner
                    && n.size == size
                    && n.provider == provider
                    && n.state == NodeState::Warm
                    && n.warm_until.is_some_and(|w| w > now)
                    && location.is_none_or(|l| n.location.as_deref() == Some(l))
            })
            .min_by_key(|n| (n.warm_until, n.id));
        Ok(best.map(|n| {
            n.state = NodeState::Active;
            n.warm_until = None;
            n.claimed_by = Some(task);
            n.updated_at = now;
            n.clone()
        }))
    }

    async fn set_node_provider_id(
        &self,
        id: NodeId,
        provider_id: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.with_node(id, |n| {
            n.provider_id = Some(provider_id.to_owned());
            n.updated_at = now;
            Ok(())
        })
    }

    async fn mark_node_ready(&self, id: NodeId, now: Timestamp) -> Result<Node, StoreError> {
        self.with_node(id, |n| match n.state {
            NodeState::Provisioning => {
                n.state = NodeState::Active;
                n.updated_at = now;
                Ok(n.clone())
            }
            NodeState::Active => Ok(n.clone()),
            _ => Err(wrong_state(n, "provisioning")),
        })
    }

    async fn release_node(
        &self,
        id: NodeId,
        warm_until: Timestamp,
        now: Timestamp,
    ) -> Result<Node, StoreError> {
        self.with_node(id, |n| {
            if n.state != NodeState::Active {
                return Err(wrong_state(n, "active"));
            }
            n.state = NodeState::Warm;
            n.warm_until = Some(warm_until);
            n.claimed_by = None;
            n.updated_at = now;
            Ok(n.clone())
        })
    }

    async fn begin_destroy_node(
        &self,
        id: NodeId,
        guard: DestroyGuard,
        now: Timestamp,
    ) -> Result<Node, StoreError> {
        self.with_node(id, |n| {
            let allowed = match guard {
                DestroyGuard::ExpiredWarm => {
                    n.state == NodeState::Warm && n.warm_until.is_some_and(|w| w <= now)
                }
                DestroyGuard::Unclaimed => {
                    n.state != NodeState::Destroyed
                        && !(n.state == NodeState::Active && n.claimed_by.is_some())
                }
                DestroyGuard::Any => n.state != NodeState::Destroyed,
            };
            if !allowed && n.state != NodeState::Destroying {
                return Err(StoreError::conflict(format!(
                    "node {} ({}{}) may not be destroyed under {guard:?}",
                    n.id,
                    n.state,
                    if n.claimed_by.is_some() {
                        ", claimed"
                    } else {
                        ""
                    }
                )));
            }
            let before = n.clone();
            n.state = NodeState::Destroying;
            n.warm_until = None;
            n.claimed_by = None;
            n.updated_at = now;
            Ok(before)
        })
    }

    async fn mark_node_destroyed(&self, id: NodeId, now: Timestamp) -> Result<(), StoreError> {
        self.with_node(id, |n| match n.state {
            NodeState::Destroying => {
                n.state = NodeState::Destroyed;
                n.updated_at = now;
                Ok(())
            }
            NodeState::Destroyed => Ok(()),
            _ => Err(wrong_state(n, "destroying")),
        })
    }

    async fn mark_node_failed(
        &self,
        id: NodeId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Node, StoreError> {
        self.with_node(id, |n| match n.state {
            NodeState::Provisioning | NodeState::Active | NodeState::Warm => {
                let before = n.clone();
                n.state = NodeState::Failed;
                n.error_message = Some(reason.to_owned());
                n.warm_until = None;
                n.claimed_by = None;
                n.updated_at = now;
                Ok(before)
            }
            _ => Err(wrong_state(n, "provisioning, active or warm")),
        })
    }

    async fn record_heartbeat(&self, id: NodeId, now: Timestamp) -> Result<(), StoreError> {
        self.with_node(id, |n| {
            n.last_heartbeat_at = Some(now);
            Ok(())
        })
    }
}

/// A broadcast receiver as a stream that skips over lag: a slow listener misses events and
/// re-reads current rows on the next one it gets (viewers catch up by cursor).
pub(crate) fn broadcast_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(item) => return Some((item, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
