//! End to end through the fake Hetzner API: a real `kiln serve` with `KILN_PROVIDER=hetzner`
//! pointed at [`FakeHetzner`]; when the fake creates a server, this test "boots" it the way
//! cloud-init would: it downloads `kiln-node` from the server's `/api/nodes/{id}/binary` with
//! the node's callback token and runs it with the environment from the server's user data.
//! A Run Now on a Hetzner project goes to completed, the node goes warm, and after the (short)
//! warm timeout the server is deleted at the fake. Also: Run Now without a stored token is
//! refused, an invalid token is refused when saved, and the token appears in no API response
//! and no server log line.
#![allow(clippy::disallowed_methods)] // Tests wait on wall-clock time.

mod e2e_support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_support::{Kiln, bin_dir, git_repo};
use kiln_backends::hetzner::fake::{FakeHetzner, FakeOptions, FakeServer};
use serde_json::{Value, json};

const TOKEN: &str = "hcloud-e2e-token-0123456789abcdefWXYZ";
const LIMIT: Duration = Duration::from_secs(180);

/// Every response body the test saw, to search for the token at the end.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    seen: Seen,
}

impl Client {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        self.seen.0.lock().unwrap().push(text.clone());
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
        };
        (status, value)
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        value
    }
}

/// The `kiln-node` processes this test booted, by fake server id; each in its own process
/// group, killed (group included) while the child is still unreaped, so its pid is ours.
#[derive(Clone, Default)]
struct Machines(Arc<Mutex<HashMap<i64, Child>>>);

impl Machines {
    fn power_off(&self, id: i64) {
        if let Some(mut child) = self.0.lock().unwrap().remove(&id) {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
            }
            let _ = child.wait();
        }
    }

    fn running(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        if Arc::strong_count(&self.0) == 1 {
            let ids: Vec<i64> = self.0.lock().unwrap().keys().copied().collect();
            for id in ids {
                self.power_off(id);
            }
        }
    }
}

/// What cloud-init does on a new server: download `kiln-node` with the node's token, then
/// run it with the environment file's variables (data directory moved into `root`).
async fn boot(server: FakeServer, root: std::path::PathBuf, machines: Machines) {
    assert!(
        !server
            .user_data
            .as_deref()
            .unwrap_or_default()
            .contains(TOKEN),
        "the Hetzner token never goes to a node"
    );
    let mut env = server.node_env().expect("Kiln user data");
    let dir = root.join(format!("server-{}", server.id));
    std::fs::create_dir_all(&dir).unwrap();
    env.insert(
        "KILN_NODE_DATA_DIR".into(),
        dir.join("data").display().to_string(),
    );
    let url = format!(
        "{}/api/nodes/{}/binary?arch={}",
        env["CONTROL_PLANE_URL"],
        env["NODE_ID"],
        std::env::consts::ARCH
    );
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&env["CALLBACK_TOKEN"])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "binary download: {}", resp.status());
    let bytes = resp.bytes().await.unwrap();
    let expected = std::fs::read(bin_dir().join("kiln-node")).unwrap();
    assert!(
        bytes[..] == expected[..],
        "the served binary is the server's kiln-node"
    );
    let exe = dir.join("kiln-node");
    std::fs::write(&exe, &bytes).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let log = std::fs::File::create(dir.join("node.log")).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &dir)
        .env("KILN_LOG", "info")
        .envs(&env)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("start the downloaded kiln-node");
    machines.0.lock().unwrap().insert(server.id, child);
}

async fn poll<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(started.elapsed() < LIMIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hetzner_project_runs_on_a_server_booted_from_cloud_init_which_is_deleted_when_its_warm_time_ends()
 {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHetzner::start_with(FakeOptions {
        token: TOKEN.into(),
        // Long enough that "provisioning node…" is observable, short enough for a test.
        boot_delay: Duration::from_millis(1500),
        action_delay: Duration::from_millis(50),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let machines = Machines::default();
    let (booted_tx, mut booted_rx) = tokio::sync::mpsc::unbounded_channel::<FakeServer>();
    fake.on_create(move |server| {
        let _ = booted_tx.send(server.clone());
    });
    let (deleted_tx, mut deleted_rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
    fake.on_delete(move |server| {
        let _ = deleted_tx.send(server.id);
    });
    let boot_task = tokio::spawn({
        let root = dir.path().join("servers");
        let machines = machines.clone();
        async move {
            while let Some(server) = booted_rx.recv().await {
                boot(server, root.clone(), machines.clone()).await;
            }
        }
    });
    let power_task = tokio::spawn({
        let machines = machines.clone();
        async move {
            while let Some(id) = deleted_rx.recv().await {
                machines.power_off(id);
            }
        }
    });

    let api_url = fake.api_url();
    let agent = bin_dir().join("kiln-demo-agent").display().to_string();
    let kiln = Kiln::start(
        &dir.path().join("data"),
        None,
        &[
            ("KILN_PROVIDER", "hetzner"),
            ("KILN_HETZNER_API_URL", &api_url),
            ("KILN_HETZNER_POLL_INTERVAL_MS", "50"),
            ("KILN_AGENT_COMMAND", &agent),
            ("NODE_WARM_TIMEOUT_MS", "4000"),
            ("NODE_READY_POLL_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let seen = Seen::default();
    let ann = Client {
        base: kiln.base.clone(),
        token: kiln.user_token("ann"),
        http: reqwest::Client::new(),
        seen: seen.clone(),
    };
    let repo = git_repo(&dir.path().join("ann"));

    // A project on Hetzner (the server's only provider, so also the default).
    let project = ann
        .ok(
            "POST",
            "/api/projects",
            Some(
                json!({"name": "cloud", "repositoryUrl": repo.display().to_string(),
                "provider": "hetzner"}),
            ),
        )
        .await;
    assert_eq!(project["provider"], "hetzner");
    let pid = project["id"].as_str().unwrap().to_owned();
    let (status, refused) = ann
        .call(
            "POST",
            "/api/projects",
            Some(json!({"name": "x", "repositoryUrl": "/tmp/x", "provider": "local"})),
        )
        .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (422, Some("invalid_body")),
        "{refused}"
    );

    // Run Now without a token: refused, nothing stored.
    let tasks_path = format!("/api/projects/{pid}/tasks");
    let (status, refused) = ann
        .call(
            "POST",
            &tasks_path,
            Some(json!({"description": "Say hello", "runNow": true})),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "no_provider_credentials");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("no Hetzner API token: set one in Settings")
    );
    assert_eq!(ann.ok("GET", &tasks_path, None).await, json!([]));
    let sessions_path = format!("/api/projects/{pid}/sessions");
    let (status, refused) = ann
        .call("POST", &sessions_path, Some(json!({"prompt": "hi"})))
        .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (409, Some("no_provider_credentials")),
        "a chat needs the token too: {refused}"
    );
    assert_eq!(ann.ok("GET", &sessions_path, None).await, json!([]));

    // An invalid token is refused by the Hetzner API when saved; nothing is stored.
    let token_path = "/api/account/hetzner-token";
    let (status, refused) = ann
        .call(
            "PUT",
            token_path,
            Some(json!({"token": "hcloud-wrong-token-000000000"})),
        )
        .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (422, Some("invalid_token")),
        "{refused}"
    );
    let (status, refused) = ann
        .call("PUT", token_path, Some(json!({"token": "  "})))
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        ann.ok("GET", token_path, None).await,
        json!({"set": false, "hint": null, "setAt": null})
    );

    // The real token: checked, stored sealed, shown only as a hint.
    let saved = ann
        .ok("PUT", token_path, Some(json!({"token": TOKEN})))
        .await;
    assert_eq!(
        (saved["set"].clone(), saved["hint"].clone()),
        (json!(true), json!("…WXYZ"))
    );
    let shown = ann.ok("GET", token_path, None).await;
    assert_eq!(shown["hint"], "…WXYZ");
    assert!(shown["setAt"].is_string());

    // A project's git token: stored, shown as a hint only, cleared.
    let git_path = format!("/api/projects/{pid}/git-token");
    let git = ann
        .ok(
            "PUT",
            &git_path,
            Some(json!({"token": format!("git-{TOKEN}")})),
        )
        .await;
    assert_eq!(git["hint"], "…WXYZ");
    assert_eq!(ann.ok("GET", &git_path, None).await["set"], true);
    let (status, _) = ann.call("DELETE", &git_path, None).await;
    assert_eq!(status, 204);
    assert_eq!(ann.ok("GET", &git_path, None).await["set"], false);

    // Run Now: a cold start on a new Hetzner server.
    let run_now = Instant::now();
    let task = ann
        .ok(
            "POST",
            &tasks_path,
            Some(json!({"description": "Say hello from the cloud", "runNow": true})),
        )
        .await;
    let tid = task["id"].as_str().unwrap().to_owned();
    let task_path = format!("/api/tasks/{tid}");
    let detail = poll("the provisioning note", async || {
        let t = ann.ok("GET", &task_path, None).await;
        t["statusDetail"].as_str().map(str::to_owned)
    })
    .await;
    assert_eq!(detail, "provisioning node…");
    poll("the task to leave the queue", async || {
        let t = ann.ok("GET", &task_path, None).await;
        (t["status"] != "queued").then_some(())
    })
    .await;
    let cold_start = run_now.elapsed();
    let done = poll("the task to end", async || {
        let t = ann.ok("GET", &task_path, None).await;
        ["completed", "failed", "cancelled"]
            .contains(&t["status"].as_str().unwrap())
            .then_some(t)
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}\n{}", kiln.log_text());
    assert!(
        done["statusDetail"].is_null(),
        "the note went with the status"
    );
    let node_path = format!("/api/nodes/{}", done["nodeId"].as_str().unwrap());
    let node = ann.ok("GET", &node_path, None).await;
    assert_eq!(node["provider"], "hetzner");
    let servers = fake.servers();
    assert_eq!(servers.len(), 1, "one server for the one cold start");
    assert_eq!(
        servers[0].labels["kiln-node-id"],
        done["nodeId"].as_str().unwrap()
    );
    assert_eq!(machines.running(), 1);

    // Warm, then deleted at the fake once the warm timeout (4 s here) has passed.
    poll("the node to go warm", async || {
        let n = ann.ok("GET", &node_path, None).await;
        (n["state"] == "warm" || n["state"] == "destroying" || n["state"] == "destroyed")
            .then_some(())
    })
    .await;
    let warm_at = Instant::now();
    poll("the server to be deleted at the fake", async || {
        fake.servers().is_empty().then_some(())
    })
    .await;
    let deleted_after = warm_at.elapsed();
    println!(
        "hetzner e2e: cold start (Run Now to delegated, fake boot 1.5 s) {} ms; \
         warm to deleted at the fake (warm timeout 4 s) {} ms",
        cold_start.as_millis(),
        deleted_after.as_millis()
    );
    let node = poll("the node to be destroyed", async || {
        let n = ann.ok("GET", &node_path, None).await;
        (n["state"] == "destroyed").then_some(n)
    })
    .await;
    assert!(node["warmUntil"].is_null());
    poll("the machine to power off", async || {
        (machines.running() == 0).then_some(())
    })
    .await;

    // Clearing the token: the hint goes, and Run Now is refused again.
    let (status, _) = ann.call("DELETE", token_path, None).await;
    assert_eq!(status, 204);
    let (status, _) = ann
        .call(
            "POST",
            &tasks_path,
            Some(json!({"description": "Again", "runNow": true})),
        )
        .await;
    assert_eq!(status, 409);

    // The token never came back in any response, nor into the server's log.
    for path in [
        "/api/me".to_owned(),
        "/api/projects".to_owned(),
        format!("/api/projects/{pid}"),
        tasks_path.clone(),
        task_path.clone(),
        "/api/nodes".to_owned(),
        node_path.clone(),
        "/api/workspaces".to_owned(),
        format!(
            "/api/sessions/{}/messages",
            done["sessionId"].as_str().unwrap()
        ),
    ] {
        ann.ok("GET", &path, None).await;
    }
    for body in seen.0.lock().unwrap().iter() {
        assert!(
            !body.contains(TOKEN),
            "a response carried the token: {body}"
        );
    }
    assert!(
        !kiln.log_text().contains(TOKEN),
        "the server logged the token"
    );
    boot_task.abort();
    power_task.abort();
}
