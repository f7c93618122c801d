//! The Hetzner provider against the fake Hetzner API on 127.0.0.1: the provider
//! conformance suite, every error class, pagination, idempotency and action following.
#![cfg(feature = "hetzner-fake")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_backends::hetzner::fake::{Endpoint, FakeFailure, FakeHetzner, FakeOptions};
use kiln_backends::hetzner::{HetznerProvider, HetznerSettings};
use kiln_core::{
    NodeBootstrap, NodeId, NodeProvider, NodeSpec, ProviderError, ProviderNodeStatus, SystemClock,
    UserId, VmSize,
};

fn settings(fake: &FakeHetzner) -> HetznerSettings {
    HetznerSettings {
        api_url: fake.api_url(),
        poll_interval: Duration::from_millis(5),
        request_timeout: Duration::from_millis(1_000),
        create_timeout: Duration::from_secs(5),
        delete_timeout: Duration::from_secs(5),
        ..HetznerSettings::default()
    }
}

async fn setup_with(options: FakeOptions) -> (FakeHetzner, HetznerProvider) {
    let fake = FakeHetzner::start_with(options).await.expect("fake starts");
    let provider =
        HetznerProvider::new(settings(&fake), fake.token(), Arc::new(SystemClock)).unwrap();
    (fake, provider)
}

fn provider_with(fake: &FakeHetzner, settings: HetznerSettings) -> HetznerProvider {
    HetznerProvider::new(settings, fake.token(), Arc::new(SystemClock)).unwrap()
}

async fn setup() -> (FakeHetzner, HetznerProvider) {
    setup_with(FakeOptions::default()).await
}

fn spec() -> NodeSpec {
    NodeSpec {
        node_id: NodeId::new(),
        owner: UserId::new(),
        size: VmSize::Small,
        location: None,
        bootstrap: NodeBootstrap {
            control_plane_url: "http://127.0.0.1:8080".into(),
            callback_token: "node-token-1".into(),
            env: BTreeMap::from([("PROJECT_ID".to_owned(), "p-1".to_owned())]),
        },
    }
}

fn kiln_labels(node: NodeId) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("managed-by".to_owned(), "kiln".to_owned()),
        ("kiln-node-id".to_owned(), node.to_string()),
        ("kiln-owner".to_owned(), UserId::new().to_string()),
    ])
}

#[tokio::test]
async fn the_provider_passes_the_conformance_suite_against_the_fake() {
    let (_fake, provider) = setup().await;
    kiln_core::conformance::provider_suite(Arc::new(provider)).await;
}

#[tokio::test]
async fn create_sends_the_documented_request_and_follows_the_action_until_running() {
    let (fake, provider) = setup().await;
    let booted = Arc::new(Mutex::new(Vec::new()));
    let seen = booted.clone();
    fake.on_create(move |server| {
        seen.lock()
            .unwrap()
            .push(server.node_env().expect("kiln user data"))
    });
    let mut spec = spec();
    spec.size = VmSize::Medium;
    spec.location = Some("fsn1".into());

    let started = std::time::Instant::now();
    let node = provider.create(&spec).await.expect("create");
    eprintln!(
        "create against the fake (boot 80 ms, poll 5 ms): {:?}, {} API calls",
        started.elapsed(),
        [
            Endpoint::ListServers,
            Endpoint::CreateServer,
            Endpoint::GetAction,
            Endpoint::GetServer
        ]
        .map(|e| fake.calls(e))
        .iter()
        .sum::<u64>()
    );
    assert_eq!(
        node.status,
        ProviderNodeStatus::Running,
        "create returns once the server runs"
    );
    assert_eq!(
        (node.node_id, node.owner),
        (Some(spec.node_id), Some(spec.owner))
    );
    assert!(node.created_at.is_some());
    assert!(
        fake.calls(Endpoint::GetAction) >= 2,
        "followed create_server and start_server"
    );

    let [request] = fake
        .create_requests()
        .try_into()
        .expect("one POST /servers");
    assert_eq!(request.name, format!("kiln-{}", spec.node_id));
    assert_eq!(
        (request.server_type.as_str(), request.image.as_str()),
        ("cx33", "debian-12")
    );
    assert_eq!(request.location.as_deref(), Some("fsn1"));
    assert_eq!(request.labels["managed-by"], "kiln");
    assert_eq!(request.labels["kiln-node-id"], spec.node_id.to_string());
    assert_eq!(request.labels["kiln-owner"], spec.owner.to_string());
    assert!(request.start_after_create);
    assert!(
        request
            .user_data
            .as_deref()
            .unwrap()
            .starts_with("#cloud-config\n")
    );

    let env = booted
        .lock()
        .unwrap()
        .pop()
        .expect("the create hook saw the server");
    assert_eq!(env["NODE_ID"], spec.node_id.to_string());
    assert_eq!(env["CALLBACK_TOKEN"], "node-token-1");
    assert_eq!(env["PROJECT_ID"], "p-1");
    let [server] = fake.servers().try_into().expect("one server");
    assert_eq!(server.status, "running");
}

#[tokio::test]
async fn the_default_location_and_size_mapping_apply() {
    let (fake, provider) = setup().await;
    let mut large = spec();
    large.size = VmSize::Large;
    provider.create(&large).await.unwrap();
    let [request] = fake.create_requests().try_into().unwrap();
    assert_eq!(request.server_type, "cx43");
    assert_eq!(request.location.as_deref(), Some("nbg1"));
}

#[tokio::test]
async fn concurrent_creates_for_one_node_make_one_server() {
    let (fake, provider) = setup().await;
    let spec = spec();
    let (a, b, c) = tokio::join!(
        provider.create(&spec),
        provider.create(&spec),
        provider.create(&spec)
    );
    let ids: Vec<String> = [a, b, c]
        .into_iter()
        .map(|r| r.expect("create").provider_id)
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(fake.servers().len(), 1);
}

#[tokio::test]
async fn a_create_that_timed_out_is_resumed_by_the_next_create_without_a_second_server() {
    let (fake, provider) = setup_with(FakeOptions {
        boot_delay: Duration::from_millis(400),
        ..FakeOptions::default()
    })
    .await;
    let impatient = HetznerProvider::new(
        HetznerSettings {
            create_timeout: Duration::from_millis(50),
            ..settings(&fake)
        },
        fake.token(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let spec = spec();
    let error = impatient.create(&spec).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("not done in time"), "{error}");
    let node = provider.create(&spec).await.expect("resumed");
    assert_eq!(node.status, ProviderNodeStatus::Running);
    assert_eq!(fake.create_requests().len(), 1, "no second POST /servers");
}

#[tokio::test]
async fn rate_limits_are_retryable_and_carry_the_reset() {
    let (fake, provider) = setup().await;
    fake.fail_next(
        Endpoint::CreateServer,
        1,
        FakeFailure::RateLimited {
            reset_in: Duration::from_secs(30),
        },
    );
    let error = provider.create(&spec()).await.unwrap_err();
    let ProviderError::RateLimited {
        retry_after: Some(after),
    } = error
    else {
        panic!("expected a rate limit with a reset, got {error:?}");
    };
    assert!(
        (Duration::from_secs(29)..=Duration::from_secs(31)).contains(&after),
        "{after:?}"
    );
    provider
        .create(&spec())
        .await
        .expect("the limit was for one call");
}

#[tokio::test]
async fn server_errors_are_retryable() {
    let (fake, provider) = setup().await;
    fake.fail_next(Endpoint::ListServers, 1, FakeFailure::server_error());
    let error = provider.list().await.unwrap_err();
    assert!(
        matches!(error, ProviderError::Unavailable { ref message } if message.contains("service_error")),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert!(provider.list().await.is_ok());
}

#[tokio::test]
async fn invalid_requests_pass_hetzners_code_and_message_through() {
    let (fake, provider) = setup().await;
    fake.fail_next(
        Endpoint::CreateServer,
        1,
        FakeFailure::unprocessable("unsupported_error", "server type is deprecated"),
    );
    assert_eq!(
        provider.create(&spec()).await.unwrap_err(),
        ProviderError::Invalid {
            code: "unsupported_error".into(),
            message: "server type is deprecated".into()
        }
    );

    let unknown_type = HetznerProvider::new(
        HetznerSettings {
            server_type_small: "cx9000".into(),
            ..settings(&fake)
        },
        fake.token(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let error = unknown_type.create(&spec()).await.unwrap_err();
    assert_eq!(
        error,
        ProviderError::Invalid {
            code: "invalid_input".into(),
            message: "invalid input in field 'server_type'".into()
        }
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn refused_credentials_are_unauthorized() {
    let (fake, provider) = setup().await;
    fake.fail_next(Endpoint::GetServer, 1, FakeFailure::forbidden());
    assert_eq!(
        provider.get("1").await.unwrap_err(),
        ProviderError::Unauthorized {
            code: "forbidden".into(),
            message: "insufficient permissions for this request".into()
        }
    );

    let wrong_token =
        HetznerProvider::new(settings(&fake), "not-the-token", Arc::new(SystemClock)).unwrap();
    let error = wrong_token.verify_token().await.unwrap_err();
    assert!(
        matches!(error, ProviderError::Unauthorized { ref code, .. } if code == "unauthorized"),
        "{error:?}"
    );
    provider
        .verify_token()
        .await
        .expect("the right token is accepted");
    wrong_token
        .for_token(fake.token())
        .verify_token()
        .await
        .expect("a provider derived for the right token is accepted");
}

#[tokio::test]
async fn the_server_limit_is_a_quota_error() {
    let (fake, provider) = setup_with(FakeOptions {
        max_servers: 1,
        ..FakeOptions::default()
    })
    .await;
    provider.create(&spec()).await.expect("first server");
    let error = provider.create(&spec()).await.unwrap_err();
    assert_eq!(
        error,
        ProviderError::Quota {
            code: "resource_limit_exceeded".into(),
            message: "server limit exceeded for this project".into()
        }
    );
    assert!(!error.is_retryable());
    fake.fail_next(Endpoint::ListServers, 1, FakeFailure::resource_limit());
    assert!(matches!(
        provider.list().await,
        Err(ProviderError::Quota { .. })
    ));
}

#[tokio::test]
async fn a_hanging_api_is_a_retryable_timeout() {
    let (fake, _) = setup().await;
    let provider = HetznerProvider::new(
        HetznerSettings {
            request_timeout: Duration::from_millis(150),
            ..settings(&fake)
        },
        fake.token(),
        Arc::new(SystemClock),
    )
    .unwrap();
    fake.fail_next(
        Endpoint::GetServer,
        1,
        FakeFailure::Hang(Duration::from_secs(5)),
    );
    let error = provider.get("1001").await.unwrap_err();
    assert!(
        matches!(error, ProviderError::Unavailable { ref message } if message.contains("timed out")),
        "{error:?}"
    );
}

#[tokio::test]
async fn list_pages_through_every_kiln_server_and_skips_foreign_ones() {
    let (fake, provider) = setup().await;
    let provider = HetznerProvider::new(
        HetznerSettings {
            page_size: 3,
            ..provider.settings().clone()
        },
        fake.token(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let mine: Vec<i64> = (0..8)
        .map(|i| fake.insert_server(&format!("kiln-{i}"), kiln_labels(NodeId::new())))
        .collect();
    fake.insert_server(
        "web-1",
        BTreeMap::from([("managed-by".to_owned(), "terraform".to_owned())]),
    );
    fake.insert_server("db-1", BTreeMap::new());

    let before = fake.calls(Endpoint::ListServers);
    let listed = provider.list().await.unwrap();
    let mut ids: Vec<i64> = listed
        .iter()
        .map(|n| n.provider_id.parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, mine, "every Kiln server once, no foreign server");
    assert_eq!(
        fake.calls(Endpoint::ListServers) - before,
        3,
        "8 servers at 3 per page"
    );
    assert!(
        listed
            .iter()
            .all(|n| n.node_id.is_some() && n.status == ProviderNodeStatus::Running)
    );
}

#[tokio::test]
async fn destroy_follows_the_delete_action_and_a_gone_server_is_success() {
    let (fake, provider) = setup().await;
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let seen = deleted.clone();
    fake.on_delete(move |server| seen.lock().unwrap().push(server.id));
    let node = provider.create(&spec()).await.unwrap();
    let actions_before = fake.calls(Endpoint::GetAction);

    provider.destroy(&node.provider_id).await.expect("destroy");
    assert!(
        fake.calls(Endpoint::GetAction) > actions_before,
        "followed delete_server"
    );
    assert!(fake.servers().is_empty(), "gone once destroy returns");
    assert_eq!(
        *deleted.lock().unwrap(),
        vec![node.provider_id.parse::<i64>().unwrap()]
    );

    let deletes = fake.calls(Endpoint::DeleteServer);
    provider
        .destroy(&node.provider_id)
        .await
        .expect("404 is success");
    assert_eq!(
        fake.calls(Endpoint::DeleteServer),
        deletes + 1,
        "asked Hetzner, got 404"
    );
    provider.destroy("999999").await.expect("never existed");
    assert_eq!(provider.get(&node.provider_id).await.unwrap(), None);
}

#[tokio::test]
async fn a_failed_create_action_is_reported_and_the_server_removed() {
    let (fake, provider) = setup().await;
    fake.fail_next_action(
        "create_server",
        "placement_error",
        "no capacity for cx23 in nbg1",
    );
    let error = provider.create(&spec()).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(
        error.to_string().contains("no capacity for cx23 in nbg1"),
        "{error}"
    );
    // The delete the provider issued completes after the fake's action delay.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(fake.servers().is_empty(), "the failed server was deleted");
}

#[tokio::test]
async fn transient_failures_while_polling_are_waited_out() {
    let (fake, provider) = setup().await;
    fake.fail_next(Endpoint::GetAction, 2, FakeFailure::server_error());
    fake.fail_next(
        Endpoint::GetServer,
        1,
        FakeFailure::status(503, "unavailable", "try again"),
    );
    let node = provider
        .create(&spec())
        .await
        .expect("create survives flaky polling");
    assert_eq!(node.status, ProviderNodeStatus::Running);
    assert_eq!(fake.create_requests().len(), 1);
}

#[tokio::test]
async fn a_permanent_failure_while_polling_ends_create() {
    let (fake, provider) = setup().await;
    fake.fail_next(Endpoint::GetAction, 1, FakeFailure::forbidden());
    assert!(matches!(
        provider.create(&spec()).await,
        Err(ProviderError::Unauthorized { .. })
    ));
}

#[tokio::test]
async fn a_rate_limit_while_polling_past_the_deadline_ends_create_with_the_reset() {
    let (fake, _) = setup().await;
    let provider = provider_with(
        &fake,
        HetznerSettings {
            create_timeout: Duration::from_secs(2),
            ..settings(&fake)
        },
    );
    fake.fail_next(
        Endpoint::GetAction,
        1,
        FakeFailure::RateLimited {
            reset_in: Duration::from_secs(60),
        },
    );
    let spec = spec();
    let error = provider.create(&spec).await.unwrap_err();
    assert!(
        matches!(error, ProviderError::RateLimited { retry_after: Some(after) } if after > Duration::from_secs(50)),
        "{error:?}"
    );
    // The server is kept: the next create for the node picks it up.
    let node = setup_provider_for(&fake)
        .create(&spec)
        .await
        .expect("resumed");
    assert_eq!(fake.create_requests().len(), 1);
    assert_eq!(node.node_id, Some(spec.node_id));
}

fn setup_provider_for(fake: &FakeHetzner) -> HetznerProvider {
    provider_with(fake, settings(fake))
}

#[tokio::test]
async fn a_slow_delete_is_retryable_and_the_next_destroy_finishes_it() {
    let (fake, _) = setup_with(FakeOptions {
        action_delay: Duration::from_millis(300),
        ..FakeOptions::default()
    })
    .await;
    let impatient = provider_with(
        &fake,
        HetznerSettings {
            delete_timeout: Duration::from_millis(40),
            ..settings(&fake)
        },
    );
    let id = fake
        .insert_server("kiln-slow", kiln_labels(NodeId::new()))
        .to_string();
    let error = impatient.destroy(&id).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(fake.servers()[0].status, "deleting");
    setup_provider_for(&fake)
        .destroy(&id)
        .await
        .expect("the delete completes");
    assert!(fake.servers().is_empty());
}

#[tokio::test]
async fn the_journal_limit_setting_reaches_the_user_data() {
    let (fake, _) = setup().await;
    let provider = provider_with(
        &fake,
        HetznerSettings {
            journal_max_use: "321M".into(),
            server_name_prefix: "k".into(),
            ..settings(&fake)
        },
    );
    let spec = spec();
    provider.create(&spec).await.unwrap();
    let [request] = fake.create_requests().try_into().unwrap();
    assert!(request.user_data.unwrap().contains("SystemMaxUse=321M"));
    assert_eq!(request.name, format!("k-{}", spec.node_id));
}

#[tokio::test]
async fn a_server_left_off_by_a_failed_create_is_deleted_and_the_create_starts_over() {
    let (fake, provider) = setup().await;
    fake.fail_next_action("create_server", "action_failed", "disk image unavailable");
    fake.fail_next(Endpoint::DeleteServer, 1, FakeFailure::server_error());
    let spec = spec();
    let error = provider.create(&spec).await.unwrap_err();
    assert!(
        error.to_string().contains("disk image unavailable"),
        "{error}"
    );
    assert_eq!(fake.servers()[0].status, "off", "the cleanup delete failed");

    let error = provider.create(&spec).await.unwrap_err();
    assert!(
        error.is_retryable() && error.to_string().contains("left off"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let node = provider.create(&spec).await.expect("a fresh server");
    assert_eq!(node.status, ProviderNodeStatus::Running);
    assert_eq!(fake.create_requests().len(), 2);
    assert_eq!(fake.servers().len(), 1);
}
