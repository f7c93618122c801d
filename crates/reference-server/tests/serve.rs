//! `server::serve` with its embedded defaults: a SQLite file and a generated secret key in
//! the data directory, the API over real HTTP, and a graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use kiln_core::memory::MemoryProvider;
use kiln_server::config::{Config, ServeArgs};
use kiln_server::server;
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_sqlite_by_default_and_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = Config::resolve(ServeArgs {
        data_dir: Some(dir.path().to_owned()),
        listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        login_link: Some(false),
        ..ServeArgs::default()
    })
    .unwrap();
    assert!(config.database_url.starts_with("sqlite://"));
    // An operator creates a token on the same database first (as `kiln user add` does).
    let token = {
        let store = server::open_store(&config).await.unwrap();
        let key = server::load_secret_key(&config).unwrap();
        let state = server::assemble(
            &config,
            store,
            Arc::new(MemoryProvider::new()),
            key,
            &config.public_url,
        )
        .await
        .unwrap()
        .state;
        let user = kiln_server::auth::ensure_user(&state, "ann").await.unwrap();
        kiln_server::auth::issue_token(&state, user.id, "cli", None)
            .await
            .unwrap()
            .1
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server::serve(
        config.clone(),
        Arc::new(MemoryProvider::new()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..200 {
        if http.get(format!("{base}/api/health")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "the server did not come up");
    let r = http
        .post(format!("{base}/api/projects"))
        .bearer_auth(&token)
        .json(&json!({"name": "demo", "repositoryUrl": "/tmp/repo", "defaultVmSize": "medium"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let p: Value = r.json().await.unwrap();
    let r = http
        .post(format!(
            "{base}/api/projects/{}/tasks",
            p["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .json(&json!({"description": "Write a README"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let html = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(html.status(), 200);
    let doc: Value = http
        .get(format!("{base}/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), handle)
        .await
        .expect("graceful shutdown within the grace")
        .unwrap()
        .unwrap();
    assert!(
        http.get(format!("{base}/api/health")).send().await.is_err(),
        "stopped listening"
    );
    assert!(dir.path().join("kiln.db").exists());
    assert!(dir.path().join("secret.key").exists());
    // The data persisted: a new server over the same directory sees the project.
    let store = server::open_store(&config).await.unwrap();
    let owner = store.get_user_by_name("ann").await.unwrap().unwrap();
    assert_eq!(store.list_projects(owner.id).await.unwrap().len(), 1);
}
