//! A real server on 127.0.0.1 over a memory store and a memory provider, with the real pool
//! and runner; helpers play users and nodes.
#![allow(dead_code, missing_docs)]

use std::sync::Arc;

use kiln_core::memory::{MemoryProvider, MemoryStore};
use kiln_core::{
    LifecycleClock, Node, NodeId, NodeState, NodeStore, Project, SessionStore, SystemClock, Task,
    TaskStore, User, UserId, UserStore, VmSize, Workspace, WorkspaceId, WorkspaceStatus,
};
use kiln_server::auth::{LOGIN_TOKEN_NAME, issue_token};
use kiln_server::commands::CommandQueues;
use kiln_server::live::LiveHub;
use kiln_server::runner::{NodeController, PoolDriver, TokenBootstrap};
use kiln_server::tokens::TokenSigner;
use kiln_server::{AppState, Settings, app};

pub struct TestServer {
    pub url: String,
    pub state: AppState,
    pub store: Arc<MemoryStore>,
    pub runner: kiln_pool::TaskRunner,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> Self {
        let store = Arc::new(MemoryStore::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let clock: Arc<dyn LifecycleClock> = Arc::new(SystemClock);
        let signer = TokenSigner::new(b"test-secret-key-of-32-bytes-long".to_vec());
        let commands = Arc::new(CommandQueues::new());
        let ttl = std::time::Duration::from_secs(3600);
        let pool = kiln_pool::WarmPool::new(
            store.clone(),
            Arc::new(MemoryProvider::new()),
            clock.clone(),
            kiln_pool::Settings {
                ready_poll_interval: std::time::Duration::from_millis(50),
                ..kiln_pool::Settings::default()
            },
        )
        .with_bootstrap(Arc::new(TokenBootstrap {
            control_plane_url: url.clone(),
            signer: signer.clone(),
            clock: clock.clone(),
            token_ttl: ttl,
            env: Default::default(),
        }));
        kiln_server::commands::spawn_relay(store.clone(), commands.clone())
            .await
            .unwrap();
        let controller = NodeController::new(
            store.clone(),
            commands.clone(),
            signer.clone(),
            clock.clone(),
            ttl,
        );
        let runner = kiln_pool::TaskRunner::new(Arc::new(pool), Arc::new(controller));
        let state = AppState {
            store: store.clone(),
            clock: clock.clone(),
            signer,
            commands,
            live: Arc::new(LiveHub::default()),
            driver: Arc::new(PoolDriver::new(runner.clone())),
            settings: Arc::new(Settings {
                public_url: url.clone(),
                providers: vec!["memory".into()],
                ..Settings::default()
            }),
            credentials: Arc::new(
                kiln_server::credentials::Credentials::new(
                    kiln_backends::vault::Vault::new(kiln_backends::vault::VaultKey::generate()),
                    // Nothing listens there: tests never reach the real Hetzner API.
                    kiln_backends::hetzner::HetznerSettings {
                        api_url: "http://127.0.0.1:9/v1".into(),
                        connect_timeout: std::time::Duration::from_millis(500),
                        request_timeout: std::time::Duration::from_secs(2),
                        ..kiln_backends::hetzner::HetznerSettings::default()
                    },
                    clock.clone(),
                )
                .unwrap(),
            ),
        };
        let router = app(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            url,
            state,
            store,
            runner,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// A new user and an API token for it.
    pub async fn user(&self, name: &str) -> (User, String) {
        let user = User {
            id: UserId::new(),
            name: name.into(),
            created_at: self.state.clock.now(),
        };
        self.store.create_user(&user).await.unwrap();
        let (_, secret) = issue_token(&self.state, user.id, "cli", None)
            .await
            .unwrap();
        (user, secret)
    }

    /// A one-time login token for a user.
    pub async fn login_token(&self, user: UserId) -> String {
        issue_token(&self.state, user, LOGIN_TOKEN_NAME, None)
            .await
            .unwrap()
            .1
    }

    pub async fn project(&self, token: &str) -> Project {
        let r = self
            .http
            .post(self.url("/api/projects"))
            .bearer_auth(token)
            .json(&serde_json::json!({"name": "demo", "repositoryUrl": "/tmp/repo"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().await.unwrap()
    }

    pub async fn task(&self, token: &str, project: &Project, run_now: bool) -> Task {
        let r = self
            .http
            .post(self.url(&format!("/api/projects/{}/tasks", project.id)))
            .bearer_auth(token)
            .json(&serde_json::json!({"description": "Fix the bug\nin login", "runNow": run_now}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().await.unwrap()
    }

    /// An active node of `owner` and its node token.
    pub async fn node(&self, owner: UserId) -> (Node, String) {
        let now = self.state.clock.now();
        let node = Node {
            id: NodeId::new(),
            owner,
            size: VmSize::Small,
            location: None,
            provider: "test".into(),
            provider_id: None,
            state: NodeState::Provisioning,
            warm_until: None,
            claimed_by: None,
            auto_provisioned: true,
            last_heartbeat_at: None,
            error_message: None,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_node(&node).await.unwrap();
        let node = self.store.mark_node_ready(node.id, now).await.unwrap();
        let token = self
            .state
            .signer
            .node_token(node.id, now, self.state.token_expiry());
        (node, token)
    }

    /// A running workspace for `task` on `node` and its workspace token.
    pub async fn workspace(&self, node: &Node, task: &Task) -> (Workspace, String) {
        let now = self.state.clock.now();
        let ws = Workspace {
            id: WorkspaceId::new(),
            node_id: node.id,
            owner: task.owner,
            project_id: Some(task.project_id),
            task_id: Some(task.id),
            session_id: task.session_id,
            branch: None,
            status: WorkspaceStatus::Running,
            created_at: now,
            updated_at: now,
        };
        self.store.create_workspace(&ws).await.unwrap();
        let token =
            self.state
                .signer
                .workspace_token(node.id, ws.id, now, self.state.token_expiry());
        (ws, token)
    }

    pub async fn attach(&self, task: &Task, ws: &Workspace) {
        self.store
            .update_session(
                task.session_id.unwrap(),
                &kiln_core::SessionPatch {
                    status: Some(kiln_core::SessionStatus::Active),
                    workspace_id: Some(Some(ws.id)),
                    topic: None,
                },
                self.state.clock.now(),
            )
            .await
            .unwrap();
    }

    /// Waits for the provisioning node of `owner` the pool asked for, and says hello as its
    /// agent host would; returns the node and its token.
    pub async fn boot_node(&self, owner: UserId) -> (NodeId, String) {
        let node = wait_for(|| async {
            self.store
                .list_nodes(&kiln_core::NodeQuery {
                    owner: Some(owner),
                    states: vec![NodeState::Provisioning],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .find(|n| n.provider_id.is_some())
        })
        .await;
        let token = self.state.signer.node_token(
            node.id,
            self.state.clock.now(),
            self.state.token_expiry(),
        );
        let r = self
            .http
            .post(self.url(&format!("/api/nodes/{}/hello", node.id)))
            .bearer_auth(&token)
            .json(&serde_json::json!({"nodeId": node.id, "version": "test", "workspaces": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        (node.id, token)
    }

    /// Polls the node's commands like its agent host.
    pub async fn poll(
        &self,
        node: NodeId,
        token: &str,
        after: u64,
    ) -> kiln_core::protocol::CommandBatch {
        let r = self
            .http
            .get(self.url(&format!(
                "/api/nodes/{node}/commands?after={after}&waitMs=2000"
            )))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Posts a workspace event like a node.
    pub async fn event(
        &self,
        node: NodeId,
        token: &str,
        event: serde_json::Value,
    ) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/api/nodes/{node}/events")))
            .bearer_auth(token)
            .json(&event)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_task(&self, id: kiln_core::TaskId) -> Task {
        self.store.get_task(id).await.unwrap().unwrap()
    }
}

/// Reads an error body and checks its shape.
pub async fn error_code(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "status {status}: errors are JSON"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    (status, body)
}

/// Waits (up to 10 s) until `f` yields something.
pub async fn wait_for<T, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1000 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting");
}
