//! Conformance suites: plain async functions every backend calls on itself, so the memory,
//! SQLite and PostgreSQL stores (and every node provider) keep exactly the same semantics.
//!
//! Each check creates its own owner and project, so all checks can share one store (and a
//! store shared by parallel tests). They panic with a message naming the broken rule.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use kiln_core::memory::{MemoryProvider, MemoryStore};
//! kiln_core::conformance::store_suite(Arc::new(MemoryStore::new())).await;
//! kiln_core::conformance::provider_suite(Arc::new(MemoryProvider::new())).await;
//! # });
//! ```

mod edges;
mod fixtures;
mod nodes;
mod provider;
mod secrets;
mod sessions;
mod tasks;
mod users;

use std::sync::Arc;

use crate::store::Store;

pub use edges::*;
pub use fixtures::Fixture;
pub use nodes::*;
pub use provider::provider_suite;
pub use secrets::*;
pub use sessions::*;
pub use tasks::*;
pub use users::*;

/// Runs every store check in turn against `store`.
pub async fn store_suite(store: Arc<dyn Store>) {
    projects_are_scoped_to_their_owner(store.clone()).await;
    deleting_a_project_removes_its_tasks_sessions_and_messages(store.clone()).await;
    sessions_list_newest_first_and_filter_by_task(store.clone()).await;
    chats_list_by_status_across_projects(store.clone()).await;
    chats_keep_their_agent_hint_and_vm_size(store.clone()).await;
    session_patches_change_only_what_they_name(store.clone()).await;
    message_inserts_are_idempotent_and_move_the_session(store.clone()).await;
    messages_into_an_unknown_session_store_nothing(store.clone()).await;
    message_pages_read_latest_before_and_after(store.clone()).await;
    concurrent_duplicate_inserts_store_each_message_once(store.clone()).await;
    updating_a_message_changes_its_content(store.clone()).await;
    the_change_feed_announces_stored_and_published_changes(store.clone()).await;
    tasks_list_by_priority_and_filter_by_status(store.clone()).await;
    task_updates_are_compare_and_set_on_status(store.clone()).await;
    tasks_list_by_status_across_projects(store.clone()).await;
    workspaces_are_stored_updated_and_filtered(store.clone()).await;
    a_claim_takes_the_oldest_warm_node_of_the_same_owner_and_size(store.clone()).await;
    an_expired_warm_node_is_never_claimed(store.clone()).await;
    concurrent_claimers_of_one_warm_node_have_exactly_one_winner(store.clone()).await;
    node_transitions_are_guarded(store.clone()).await;
    node_queries_serve_the_sweeps(store.clone()).await;
    users_have_unique_names_and_hashed_tokens(store.clone()).await;
    a_batch_spanning_sessions_numbers_each_session_on_its_own(store.clone()).await;
    a_batch_larger_than_one_statement_is_stored_whole(store.clone()).await;
    ties_in_order_break_by_id(store.clone()).await;
    deleting_a_task_keeps_its_session(store.clone()).await;
    editing_a_message_moves_its_session(store.clone()).await;
    workspace_listing_by_owner_excludes_other_owners(store.clone()).await;
    creates_reject_duplicates_and_unknown_parents(store.clone()).await;
    a_batch_of_duplicates_announces_nothing(store.clone()).await;
    secrets_are_keyed_replaced_and_deleted(store.clone()).await;
    project_secrets_override_and_go_with_their_project(store.clone()).await;
    secret_owners_are_listed_once_and_racing_puts_leave_one(store).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::memory::{MemoryProvider, MemoryStore};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_store_passes_the_store_suite() {
        super::store_suite(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn memory_provider_passes_the_provider_suite() {
        super::provider_suite(Arc::new(MemoryProvider::new())).await;
    }
}
