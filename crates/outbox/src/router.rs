//! Which sink delivers a route's batches: [`SinkRouter`], with [`SingleSink`] (one sink for
//! everything) and [`SinkMap`] (one sink per workspace, changeable at run time).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use kiln_core::{MessageSink, WorkspaceId};

/// Picks the sink for a workspace's batches. A batch never mixes workspaces.
pub trait SinkRouter: Send + Sync + fmt::Debug + 'static {
    /// The sink for `workspace`, or `None` when there is none (yet): its messages stay in
    /// the outbox and the flusher looks again every `MSG_BATCH_MAX_WAIT_MS` (or at once
    /// after [`FlusherHandle::wake`](crate::FlusherHandle::wake)).
    fn sink_for(&self, workspace: WorkspaceId) -> Option<Arc<dyn MessageSink>>;
}

impl<T: SinkRouter + ?Sized> SinkRouter for Arc<T> {
    fn sink_for(&self, workspace: WorkspaceId) -> Option<Arc<dyn MessageSink>> {
        (**self).sink_for(workspace)
    }
}

/// One sink for every route.
#[derive(Debug, Clone)]
pub struct SingleSink(pub Arc<dyn MessageSink>);

impl SinkRouter for SingleSink {
    fn sink_for(&self, _workspace: WorkspaceId) -> Option<Arc<dyn MessageSink>> {
        Some(self.0.clone())
    }
}

/// A sink per workspace, added and removed at run time (a node agent adds a workspace's
/// [`HttpMessageSink`](crate::HttpMessageSink) when it creates the workspace).
#[derive(Default)]
pub struct SinkMap {
    sinks: RwLock<HashMap<WorkspaceId, Arc<dyn MessageSink>>>,
}

impl fmt::Debug for SinkMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sinks = self
            .sinks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.debug_struct("SinkMap")
            .field("workspaces", &sinks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SinkMap {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `workspace` to `sink`, replacing any previous sink.
    pub fn insert(&self, workspace: WorkspaceId, sink: Arc<dyn MessageSink>) {
        self.sinks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(workspace, sink);
    }

    /// Forgets `workspace`'s sink; its pending messages wait until a sink is inserted again.
    pub fn remove(&self, workspace: WorkspaceId) -> Option<Arc<dyn MessageSink>> {
        self.sinks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&workspace)
    }
}

impl SinkRouter for SinkMap {
    fn sink_for(&self, workspace: WorkspaceId) -> Option<Arc<dyn MessageSink>> {
        self.sinks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&workspace)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_router_is_object_safe() {
        fn takes(_: Option<Arc<dyn SinkRouter>>) {}
        takes(None);
    }
}
