//! The server's `hetzner` provider ([`HetznerFleet`]) against the fake Hetzner API: each
//! owner's servers are made, listed and deleted with that owner's own stored (sealed) token;
//! provider ids carry the owner; an owner without a usable token is refused as unauthorized.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_backends::hetzner::HetznerSettings;
use kiln_backends::hetzner::fake::{FakeHetzner, FakeOptions};
use kiln_backends::vault::{Vault, VaultKey};
use kiln_core::memory::MemoryStore;
use kiln_core::{
    LifecycleClock, NodeBootstrap, NodeId, NodeProvider, NodeSpec, ProviderError, SecretKey,
    SecretKind, SecretStore, SystemClock, UserId, VmSize,
};
use kiln_server::credentials::{Credentials, HetznerFleet};

const TOKEN: &str = "hcloud-fleet-test-token-0123456789";

fn spec(owner: UserId) -> NodeSpec {
    NodeSpec {
        node_id: NodeId::new(),
        owner,
        size: VmSize::Small,
        location: None,
        bootstrap: NodeBootstrap {
            control_plane_url: "http://127.0.0.1:8080".into(),
            callback_token: "node-token".into(),
            env: BTreeMap::new(),
        },
    }
}

#[tokio::test]
async fn each_owners_servers_are_handled_with_the_owners_own_token() {
    let fake = FakeHetzner::start_with(FakeOptions {
        token: TOKEN.into(),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let clock: Arc<dyn LifecycleClock> = Arc::new(SystemClock);
    let credentials = Arc::new(
        Credentials::new(
            Vault::new(VaultKey::generate()),
            HetznerSettings {
                api_url: fake.api_url(),
                poll_interval: Duration::from_millis(10),
                ..HetznerSettings::default()
            },
            clock.clone(),
        )
        .unwrap(),
    );
    let store = Arc::new(MemoryStore::new());
    let fleet = HetznerFleet::new(store.clone(), credentials.clone());
    assert_eq!(fleet.name(), "hetzner");

    let (ann, bob, eve) = (UserId::new(), UserId::new(), UserId::new());
    for owner in [ann, bob] {
        store
            .put_secret(&credentials.seal(
                SecretKey::user(owner, SecretKind::HetznerToken),
                TOKEN,
                clock.now(),
            ))
            .await
            .unwrap();
    }
    // Eve's token is one Hetzner refuses.
    store
        .put_secret(&credentials.seal(
            SecretKey::user(eve, SecretKind::HetznerToken),
            "hcloud-revoked-token-000000000",
            clock.now(),
        ))
        .await
        .unwrap();

    let a = fleet.create(&spec(ann)).await.unwrap();
    let b = fleet.create(&spec(bob)).await.unwrap();
    let (owner, server) = a.provider_id.split_once('/').unwrap();
    assert_eq!(owner, ann.to_string(), "provider ids carry their owner");
    assert!(server.parse::<i64>().is_ok(), "{}", a.provider_id);
    assert_eq!(
        fleet
            .get(&a.provider_id)
            .await
            .unwrap()
            .unwrap()
            .provider_id,
        a.provider_id
    );

    // Listing: every owner with a token, each server under its own owner only (ann and bob
    // share one Hetzner project here), and a refused token does not stop the rest.
    let mut listed: Vec<String> = fleet
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.provider_id)
        .collect();
    listed.sort();
    let mut expected = vec![a.provider_id.clone(), b.provider_id.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    // No token, or a refused one: unauthorized, with the reason.
    let err = fleet.create(&spec(UserId::new())).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Unauthorized { message, .. } if message.contains("no Hetzner API token")),
        "{err}"
    );
    let err = fleet.create(&spec(eve)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unauthorized { .. }), "{err}");
    assert!(matches!(
        fleet.destroy("not-an-owner-id").await,
        Err(ProviderError::Invalid { .. })
    ));

    fleet.destroy(&a.provider_id).await.unwrap();
    fleet.destroy(&a.provider_id).await.unwrap();
    assert!(fleet.get(&a.provider_id).await.unwrap().is_none());
    assert_eq!(fake.servers().len(), 1);
    // Once bob's token is gone, his servers cannot be touched with anyone else's.
    store
        .delete_secret(&SecretKey::user(bob, SecretKind::HetznerToken))
        .await
        .unwrap();
    assert!(matches!(
        fleet.destroy(&b.provider_id).await,
        Err(ProviderError::Unauthorized { .. })
    ));
}
