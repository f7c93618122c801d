use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::ids::{NodeId, UserId};
use crate::provider::{NodeProvider, NodeSpec, ProviderError, ProviderNodeStatus, ProvisionedNode};

/// A [`NodeProvider`] that keeps its "servers" in memory, with failure injection for tests.
///
/// Servers are created `Running`. [`MemoryProvider::fail_next`] makes the next calls of one
/// operation fail with a chosen error; [`MemoryProvider::add_foreign_server`] plants a server
/// the store does not know (an orphan).
#[derive(Debug, Default)]
pub struct MemoryProvider {
    state: Mutex<ProviderState>,
}

#[derive(Debug, Default)]
struct ProviderState {
    next_id: u64,
    servers: BTreeMap<String, ProvisionedNode>,
    failures: BTreeMap<Operation, VecDeque<ProviderError>>,
    calls: BTreeMap<Operation, u64>,
}

/// A provider operation, for failure injection and call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// [`NodeProvider::create`].
    Create,
    /// [`NodeProvider::get`].
    Get,
    /// [`NodeProvider::destroy`].
    Destroy,
    /// [`NodeProvider::list`].
    List,
}

impl MemoryProvider {
    /// A provider with no servers.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProviderState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the next call of `op` fail with `error` (queued: call again for more failures).
    pub fn fail_next(&self, op: Operation, error: ProviderError) {
        self.lock().failures.entry(op).or_default().push_back(error);
    }

    /// How many times `op` was called (including failed calls).
    #[must_use]
    pub fn calls(&self, op: Operation) -> u64 {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// The servers that exist now.
    #[must_use]
    pub fn servers(&self) -> Vec<ProvisionedNode> {
        self.lock().servers.values().cloned().collect()
    }

    /// Plants a Kiln-labelled server that no store knows of; returns its provider id.
    pub fn add_foreign_server(
        &self,
        node_id: NodeId,
        owner: UserId,
        created_at: Option<Timestamp>,
    ) -> String {
        let mut s = self.lock();
        s.next_id += 1;
        let provider_id = format!("mem-{}", s.next_id);
        s.servers.insert(
            provider_id.clone(),
            ProvisionedNode {
                provider_id: provider_id.clone(),
                node_id: Some(node_id),
                owner: Some(owner),
                status: ProviderNodeStatus::Running,
                created_at,
            },
        );
        provider_id
    }

    fn enter(
        &self,
        op: Operation,
    ) -> Result<std::sync::MutexGuard<'_, ProviderState>, ProviderError> {
        let mut s = self.lock();
        *s.calls.entry(op).or_default() += 1;
        match s.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(error) => Err(error),
            None => Ok(s),
        }
    }
}

#[async_trait]
impl NodeProvider for MemoryProvider {
    fn name(&self) -> &str {
        "memory"
    }

    async fn create(&self, spec: &NodeSpec) -> Result<ProvisionedNode, ProviderError> {
        let mut s = self.enter(Operation::Create)?;
        if let Some(existing) = s.servers.values().find(|n| n.node_id == Some(spec.node_id)) {
            return Ok(existing.clone());
        }
        s.next_id += 1;
        let server = ProvisionedNode {
            provider_id: format!("mem-{}", s.next_id),
            node_id: Some(spec.node_id),
            owner: Some(spec.owner),
            status: ProviderNodeStatus::Running,
            created_at: None,
        };
        s.servers.insert(server.provider_id.clone(), server.clone());
        Ok(server)
    }

    async fn get(&self, provider_id: &str) -> Result<Option<ProvisionedNode>, ProviderError> {
        let s = self.enter(Operation::Get)?;
        Ok(s.servers.get(provider_id).cloned())
    }

    async fn destroy(&self, provider_id: &str) -> Result<(), ProviderError> {
        let mut s = self.enter(Operation::Destroy)?;
        s.servers.remove(provider_id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ProvisionedNode>, ProviderError> {
        let s = self.enter(Operation::List)?;
        Ok(s.servers.values().cloned().collect())
    }
}
