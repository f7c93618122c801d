use std::sync::Arc;
use std::time::Duration;

use crate::clock::{LifecycleClock, ManualClock, Timestamp, add_duration};
use crate::ids::{MessageId, NodeId, ProjectId, SessionId, TaskId, UserId};
use crate::model::{ChatMessage, ChatSession, Node, Project, Role, SessionStatus, Task, VmSize};
use crate::node::NodeState;
use crate::store::Store;
use crate::task::TaskStatus;

/// A fresh owner with one project in a store, and builders for the rows the checks need.
pub struct Fixture {
    /// The store under test.
    pub store: Arc<dyn Store>,
    /// The clock the check drives.
    pub clock: ManualClock,
    /// A fresh owner.
    pub owner: UserId,
    /// A project of that owner, already stored.
    pub project: Project,
}

/// Whole-millisecond timestamps, so every backend stores them without rounding.
fn millis(t: Timestamp) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

impl Fixture {
    /// A new owner and project in `store`.
    pub async fn new(store: Arc<dyn Store>) -> Self {
        let clock = ManualClock::starting_at_epoch();
        let owner = UserId::new();
        let now = millis(clock.now());
        let project = Project {
            id: ProjectId::new(),
            owner,
            name: "conformance".into(),
            repository_url: "/tmp/repo.git".into(),
            default_vm_size: VmSize::Small,
            provider: "local".into(),
            created_at: now,
            updated_at: now,
        };
        store
            .create_project(&project)
            .await
            .expect("create project");
        Self {
            store,
            clock,
            owner,
            project,
        }
    }

    /// The clock's time, at millisecond precision.
    pub fn now(&self) -> Timestamp {
        millis(self.clock.now())
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// `now + d`, at millisecond precision.
    pub fn later(&self, d: Duration) -> Timestamp {
        millis(add_duration(self.clock.now(), d))
    }

    /// A stored chat session of the project (optionally of a task).
    pub async fn session(&self, task: Option<TaskId>) -> ChatSession {
        let session = ChatSession {
            id: SessionId::new(),
            project_id: self.project.id,
            owner: self.owner,
            task_id: task,
            workspace_id: None,
            topic: None,
            status: SessionStatus::Active,
            agent_hint: None,
            vm_size: None,
            message_count: 0,
            created_at: self.now(),
            updated_at: self.now(),
        };
        self.store
            .create_session(&session)
            .await
            .expect("create session");
        session
    }

    /// A message (not stored).
    pub fn message(&self, session: SessionId, role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            id: MessageId::new(),
            session_id: session,
            role,
            content: content.into(),
            tool: None,
            seq: None,
            created_at: self.now(),
        }
    }

    /// A task of the project in `status` (not stored).
    pub fn task(&self, title: &str, priority: i32, status: TaskStatus) -> Task {
        Task {
            id: TaskId::new(),
            project_id: self.project.id,
            owner: self.owner,
            title: title.into(),
            description: format!("{title}: description"),
            priority,
            status,
            status_detail: None,
            status_changed_at: self.now(),
            output_branch: None,
            pr_url: None,
            summary: None,
            error_message: None,
            session_id: None,
            workspace_id: None,
            node_id: None,
            vm_size_override: None,
            agent_hint: None,
            attempt: 0,
            created_at: self.now(),
            updated_at: self.now(),
        }
    }

    /// A node of the owner (not stored).
    pub fn node(&self, size: VmSize, state: NodeState, warm_until: Option<Timestamp>) -> Node {
        Node {
            id: NodeId::new(),
            owner: self.owner,
            size,
            location: None,
            provider: "memory".into(),
            provider_id: None,
            state,
            warm_until,
            claimed_by: None,
            auto_provisioned: true,
            last_heartbeat_at: None,
            error_message: None,
            created_at: self.now(),
            updated_at: self.now(),
        }
    }

    /// A stored warm node whose deadline is `in_` from now.
    pub async fn warm_node(&self, size: VmSize, in_: Duration) -> Node {
        let node = self.node(size, NodeState::Warm, Some(self.later(in_)));
        self.store.insert_node(&node).await.expect("insert node");
        node
    }
}
