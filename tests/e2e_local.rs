//! End to end on the embedded default (SQLite, local provider), every process real: the
//! `kiln` server, `kiln-node` processes started by the local provider, `kiln-demo-agent`, git.
#![allow(clippy::disallowed_methods)] // Measures real start times.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::{Api, Kiln, check_messages, drain, git, git_repo, statuses_of};
use kiln_core::{MessageId, TaskId};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

fn prompt_id(task: &Value) -> String {
    let id: TaskId = task["id"].as_str().unwrap().parse().unwrap();
    MessageId::for_task_prompt(id).to_string()
}

/// From `task.updated` frames: how long after its creation the task was delegated (had its
/// node) and in progress (its agent started), on the server's clock.
fn phase_times(frames: &[Value], task: &Value) -> (Duration, Duration) {
    let created =
        chrono::DateTime::parse_from_rfc3339(task["createdAt"].as_str().unwrap()).unwrap();
    let at = |status: &str| {
        let f = frames
            .iter()
            .find(|f| {
                f["type"] == "task.updated"
                    && f["data"]["id"] == task["id"]
                    && f["data"]["status"] == status
            })
            .unwrap_or_else(|| panic!("no {status} frame for {}", task["id"]));
        let t =
            chrono::DateTime::parse_from_rfc3339(f["data"]["statusChangedAt"].as_str().unwrap())
                .unwrap();
        (t - created).to_std().unwrap_or_default()
    };
    (at("delegated"), at("in_progress"))
}

/// How long until the task's agent started (it reached in_progress or beyond).
async fn time_to_start(api: &Api, task: &Value, since: Instant) -> Duration {
    api.wait_task(task, LIMIT, |s| s != "queued" && s != "delegated")
        .await;
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_completes_then_a_warm_node_is_reused_failures_keep_workspaces_and_cancel_works() {
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());
    let mut kiln = Kiln::start(&dir.path().join("data"), None, &[]).await;
    let api = Api::new(&kiln.base, &kiln.user_token("ann"));
    let project = api.project(&repo).await;
    let mut viewer = api.watch(&project).await;

    // 1. Run Now on a cold pool: queued → delegated → in_progress → completed.
    let started = Instant::now();
    let first = api.run_now(&project, "Write a greeting file").await;
    assert_eq!(first["status"], "queued");
    let first_start = time_to_start(&api, &first, started).await;
    let done = api.wait_terminal(&first, LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    let id = first["id"].as_str().unwrap();
    let session = first["sessionId"].as_str().unwrap();
    // The branch with the agent's commit exists in the repository.
    let branch = done["outputBranch"].as_str().expect("a branch").to_owned();
    assert!(branch.starts_with(&format!("task/{id}")), "{branch}");
    let tip = git(&repo, &["rev-parse", &branch]).expect("the task branch was pushed");
    let main = git(&repo, &["rev-parse", "main"]).unwrap();
    assert_ne!(tip, main, "the agent's work is a new commit");
    assert_eq!(
        git(&repo, &["rev-parse", &format!("{tip}^")]).unwrap(),
        main
    );
    // Workspace destroyed, node warm.
    let workspaces = api
        .wait_for(&format!("/api/workspaces?taskId={id}"), LIMIT, |v| {
            v[0]["status"] == "destroyed"
        })
        .await;
    let node_id = done["nodeId"].as_str().unwrap().to_owned();
    assert_eq!(workspaces[0]["nodeId"], node_id.as_str());
    let nodes = api
        .wait_for("/api/nodes", LIMIT, |v| v[0]["state"] == "warm")
        .await;
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert!(nodes[0]["warmUntil"].is_string());
    // Every message stored, in order, and seen live in the same order.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frames = drain(&mut viewer);
    let statuses = statuses_of(&frames, id);
    let expected = ["queued", "delegated", "in_progress", "completed"];
    let mut positions = expected
        .iter()
        .map(|s| statuses.iter().position(|x| x == s));
    assert!(
        positions.all(|p| p.is_some()),
        "viewer saw {statuses:?}, expected each of {expected:?}"
    );
    let seen: Vec<&str> = statuses
        .iter()
        .map(String::as_str)
        .filter(|s| expected.contains(s))
        .collect();
    assert_eq!(seen, expected, "in order");
    let stored = api.messages(session).await;
    check_messages(&stored, &frames, session, &prompt_id(&first));

    // 2. A second task within the warm timeout reuses the same node and starts faster.
    let started = Instant::now();
    let second = api.run_now(&project, "Write another file").await;
    let second_start = time_to_start(&api, &second, started).await;
    let done2 = api.wait_terminal(&second, LIMIT).await;
    assert_eq!(done2["status"], "completed", "{done2}");
    assert_eq!(
        done2["nodeId"],
        node_id.as_str(),
        "the warm node was reused"
    );
    println!(
        "time to agent start: cold (provisioned node) {:.0} ms, warm (claimed node) {:.0} ms",
        first_start.as_secs_f64() * 1e3,
        second_start.as_secs_f64() * 1e3
    );
    // Precisely, on the server's clock: how long each task waited for its node (queued →
    // delegated) and for its agent (→ in_progress), from the viewer's task.updated frames.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frames2 = drain(&mut viewer);
    let all: Vec<Value> = frames.iter().chain(frames2.iter()).cloned().collect();
    let (cold_node, cold_agent) = phase_times(&all, &first);
    let (warm_node, warm_agent) = phase_times(&all, &second);
    println!(
        "server clock: node acquired cold {cold_node:?} vs warm {warm_node:?}; agent started cold {cold_agent:?} vs warm {warm_agent:?}"
    );
    // Printed, not asserted: a timing comparison fails on a loaded machine for reasons that
    // are not Kiln's (the reuse itself is asserted above).

    // 3. A failing agent: failed, the workspace kept.
    api.wait_for("/api/nodes", LIMIT, |v| v[0]["state"] == "warm")
        .await;
    let failing = api
        .run_now(&project, "Break please\nkiln-demo: fail error")
        .await;
    let failed = api.wait_terminal(&failing, LIMIT).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["errorMessage"].is_string());
    let fid = failing["id"].as_str().unwrap();
    let ws = api.get(&format!("/api/workspaces?taskId={fid}")).await;
    assert_eq!(ws[0]["status"], "stopped", "the workspace is kept: {ws}");

    // 4. Cancel a running task: cancelled, the workspace kept.
    let hanging = api.run_now(&project, "Wait for me\nkiln-demo: hang").await;
    api.wait_task(&hanging, LIMIT, |s| s == "in_progress").await;
    let hid = hanging["id"].as_str().unwrap();
    let cancelled = api
        .post(&format!("/api/tasks/{hid}/cancel"), serde_json::json!({}))
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    let ws = api
        .wait_for(&format!("/api/workspaces?taskId={hid}"), LIMIT, |v| {
            v[0]["status"] == "stopped"
        })
        .await;
    assert_eq!(ws.as_array().unwrap().len(), 1);
    assert_eq!(
        api.get(&format!("/api/tasks/{hid}")).await["status"],
        "cancelled"
    );

    // 5. Graceful shutdown: SIGTERM, exit 0, state consistent for the next start.
    let stopping = Instant::now();
    let status = kiln.stop();
    assert!(status.success(), "exit status {status:?}");
    println!(
        "graceful shutdown with a node long-polling: {:.0} ms",
        stopping.elapsed().as_secs_f64() * 1e3
    );
    let kiln2 = Kiln::start(&dir.path().join("data"), None, &[]).await;
    let api2 = Api::new(&kiln2.base, &kiln2.user_token("ann"));
    let t = api2.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(t["status"], "completed");
    drop(kiln);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_run_now_tasks_all_complete_with_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());
    let kiln = Kiln::start(&dir.path().join("data"), None, &[]).await;
    let token = kiln.user_token("bob");
    let api = Api::new(&kiln.base, &token);
    let project = api.project(&repo).await;
    let mut viewer = api.watch(&project).await;
    let descriptions: Vec<String> = (0..5)
        .map(|i| format!("Task number {i}\nkiln-demo: messages 3"))
        .collect();
    let tasks =
        futures::future::join_all(descriptions.iter().map(|d| api.run_now(&project, d))).await;
    for t in &tasks {
        let done = api.wait_terminal(t, LIMIT).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frames = drain(&mut viewer);
    for t in &tasks {
        let session = t["sessionId"].as_str().unwrap();
        let stored = api.messages(session).await;
        check_messages(&stored, &frames, session, &prompt_id(t));
        let answers = stored.iter().filter(|m| m["role"] == "assistant").count();
        assert!(answers >= 3, "three answer messages per turn: {stored:?}");
    }
    let nodes = api.get("/api/nodes").await;
    println!(
        "5 concurrent tasks ran on {} node(s)",
        nodes.as_array().unwrap().len()
    );

    // The operator CLI against the same server.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(e2e_support::bin_dir().join("kiln"))
            .args(args)
            .env("KILN_SERVER_URL", &kiln.base)
            .env("KILN_TOKEN", &token)
            .env("KILN_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (status, out) = cli(&["task", "run", "demo", "Write via the CLI"]);
    println!("kiln task run:\n{out}");
    assert!(status.success(), "kiln task run: {status:?}\n{out}");
    for expected in [
        "queued",
        "in_progress",
        "completed",
        "[user] Write via the CLI",
        "[assistant]",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let (status, out) = cli(&["task", "list", "--status", "completed"]);
    assert!(status.success());
    assert_eq!(
        out.lines().count(),
        1 + 6,
        "header and six completed tasks:\n{out}"
    );
    api.wait_for("/api/nodes?state=warm", LIMIT, |v| {
        !v.as_array().unwrap().is_empty()
    })
    .await;
    let (status, out) = cli(&["node", "list"]);
    assert!(status.success());
    assert!(out.contains("warm") && out.contains("local"), "{out}");
    let (status, _) = cli(&["task", "run", "no-such-project", "x"]);
    assert_eq!(status.code(), Some(2), "an unknown project is an error");
}
