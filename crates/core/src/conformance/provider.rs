use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ids::{NodeId, UserId};
use crate::model::VmSize;
use crate::provider::{NodeBootstrap, NodeProvider, NodeSpec};

fn spec() -> NodeSpec {
    NodeSpec {
        node_id: NodeId::new(),
        owner: UserId::new(),
        size: VmSize::Small,
        location: None,
        bootstrap: NodeBootstrap {
            control_plane_url: "http://127.0.0.1:9".into(),
            callback_token: "conformance-token".into(),
            env: BTreeMap::new(),
        },
    }
}

/// Create, get, list with labels read back, idempotent create per node id, idempotent destroy.
pub async fn provider_suite(provider: Arc<dyn NodeProvider>) {
    assert!(!provider.name().is_empty());
    let a = spec();
    let b = spec();
    let made_a = provider.create(&a).await.expect("create a");
    let made_b = provider.create(&b).await.expect("create b");
    assert_ne!(made_a.provider_id, made_b.provider_id);
    assert_eq!(
        (made_a.node_id, made_a.owner),
        (Some(a.node_id), Some(a.owner)),
        "labels read back"
    );
    let again = provider.create(&a).await.expect("create a again");
    assert_eq!(
        again.provider_id, made_a.provider_id,
        "creating one node id twice returns the same server"
    );

    let got = provider
        .get(&made_a.provider_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.node_id, Some(a.node_id));
    let listed = provider.list().await.expect("list");
    for made in [&made_a, &made_b] {
        assert_eq!(
            listed
                .iter()
                .filter(|n| n.provider_id == made.provider_id)
                .count(),
            1,
            "listed once"
        );
    }

    provider
        .destroy(&made_a.provider_id)
        .await
        .expect("destroy");
    provider
        .destroy(&made_a.provider_id)
        .await
        .expect("destroying a gone server succeeds");
    assert!(
        provider
            .get(&made_a.provider_id)
            .await
            .expect("get after destroy")
            .is_none()
    );
    let listed = provider.list().await.expect("list");
    assert!(
        listed.iter().all(|n| n.provider_id != made_a.provider_id),
        "destroyed servers are not listed"
    );
    provider
        .destroy(&made_b.provider_id)
        .await
        .expect("destroy b");
}
