//! End to end on PostgreSQL with two server replicas: a task created through replica A runs
//! on a real node, and a viewer connected to replica B receives every message and status
//! change stored through A (LISTEN/NOTIFY).

mod e2e_support;

use std::time::Duration;

use e2e_support::{Api, Kiln, check_messages, drain, git, git_repo, statuses_of};
use kiln_core::{MessageId, TaskId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_run_a_task_and_share_live_updates() {
    let Some((url, name)) = e2e_support::pg_database("e2e postgres two replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());
    {
        // Replicas share the token signing key (a node may be bootstrapped by one replica
        // and handed workspace tokens by another).
        // The demo agent streams at a visible pace, so live text has time to reach B.
        let key = [
            ("KILN_SECRET_KEY", "e2e-shared-secret-key-of-both-replicas"),
            ("KILN_DEMO_PACE_MS", "20"),
        ];
        let a = Kiln::start(&dir.path().join("a"), Some(&url), &key).await;
        let b = Kiln::start(&dir.path().join("b"), Some(&url), &key).await;
        let token = a.user_token("carol");
        let api_a = Api::new(&a.base, &token);
        let api_b = Api::new(&b.base, &token);
        let project = api_a.project(&repo).await;
        // The viewer is on replica B; everything is created through replica A.
        let mut viewer = api_b.watch(&project).await;
        let task = api_a.run_now(&project, "Write a file from replica A").await;
        let done = api_a.wait_terminal(&task, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let branch = done["outputBranch"].as_str().unwrap();
        assert!(
            git(&repo, &["rev-parse", branch]).is_some(),
            "branch {branch} pushed"
        );
        api_a
            .wait_for("/api/nodes", Duration::from_secs(60), |v| {
                v[0]["state"] == "warm"
            })
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let frames = drain(&mut viewer);
        let id = task["id"].as_str().unwrap();
        let statuses = statuses_of(&frames, id);
        assert!(
            statuses.contains(&"in_progress".to_owned())
                && statuses.last().map(String::as_str) == Some("completed"),
            "replica B's viewer saw {statuses:?}"
        );
        let session = task["sessionId"].as_str().unwrap();
        let stored = api_b.messages(session).await;
        let task_id: TaskId = id.parse().unwrap();
        check_messages(
            &stored,
            &frames,
            session,
            &MessageId::for_task_prompt(task_id).to_string(),
        );
        assert!(
            frames.iter().any(|f| f["type"] == "node.updated"),
            "node changes reach replica B's viewer too"
        );
        // The agent's text streamed through replica A (its node's replica) grew on replica
        // B's page too, and each segment's text so far is the start of its stored message.
        let deltas: Vec<&serde_json::Value> = frames
            .iter()
            .filter(|f| f["type"] == "message.delta" && f["data"]["sessionId"] == session)
            .collect();
        assert!(
            deltas.len() >= 3,
            "live text reaches replica B's viewer: {} deltas",
            deltas.len()
        );
        for d in &deltas {
            let so_far = d["data"]["textSoFar"].as_str().unwrap();
            let segment = d["data"]["segmentId"].as_str().unwrap();
            if let Some(m) = stored.iter().find(|m| m["id"] == segment) {
                assert!(
                    m["content"].as_str().unwrap().starts_with(so_far),
                    "segment {segment}: {so_far:?} is not the start of {}",
                    m["content"]
                );
            }
        }
        // The second replica serves the same data.
        assert_eq!(
            api_b.get(&format!("/api/tasks/{id}")).await["status"],
            "completed"
        );

        // A task created through replica B claims the warm node (which talks to replica A):
        // B's runner's commands reach the node through the change feed, and the workspace
        // token B signed is accepted by A (the replicas share KILN_SECRET_KEY).
        let node = done["nodeId"].clone();
        let second = api_b.run_now(&project, "Write a file from replica B").await;
        let done2 = api_b.wait_terminal(&second, Duration::from_secs(120)).await;
        assert_eq!(done2["status"], "completed", "{done2}");
        assert_eq!(
            done2["nodeId"], node,
            "the warm node was reused across replicas"
        );
        api_a
            .wait_for("/api/nodes", Duration::from_secs(60), |v| {
                v[0]["state"] == "warm"
            })
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let frames = drain(&mut viewer);
        let session2 = second["sessionId"].as_str().unwrap();
        let stored2 = api_a.messages(session2).await;
        let second_id: TaskId = second["id"].as_str().unwrap().parse().unwrap();
        check_messages(
            &stored2,
            &frames,
            session2,
            &MessageId::for_task_prompt(second_id).to_string(),
        );

        // A cancel through replica B stops an agent on a node that talks to replica A.
        let hanging = api_a.run_now(&project, "Wait\nkiln-demo: hang").await;
        api_a
            .wait_task(&hanging, Duration::from_secs(120), |s| s == "in_progress")
            .await;
        let hid = hanging["id"].as_str().unwrap();
        api_b
            .post(&format!("/api/tasks/{hid}/cancel"), serde_json::json!({}))
            .await;
        api_a
            .wait_for(
                &format!("/api/workspaces?taskId={hid}"),
                Duration::from_secs(60),
                |v| v[0]["status"] == "stopped",
            )
            .await;
        assert_eq!(
            api_a.get(&format!("/api/tasks/{hid}")).await["status"],
            "cancelled"
        );
    }
    e2e_support::drop_pg_database(&name).await;
}
