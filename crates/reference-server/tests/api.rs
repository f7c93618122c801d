//! The user-facing API over real HTTP: projects, tasks, sessions, nodes, workspaces,
//! accounts, errors, and the rule that another user's objects are a 404 everywhere.

mod common;

use common::{TestServer, error_code};
use kiln_core::{MessageId, SessionStore, TaskStatus};
use serde_json::{Value, json};

#[tokio::test]
async fn projects_crud_with_default_vm_size() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let p = s.project(&token).await;
    assert_eq!(p.default_vm_size, kiln_core::VmSize::Small);
    let r = s
        .http
        .patch(s.url(&format!("/api/projects/{}", p.id)))
        .bearer_auth(&token)
        .json(&json!({"defaultVmSize": "large", "name": "renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = s
        .http
        .get(s.url(&format!("/api/projects/{}", p.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["defaultVmSize"], "large");
    assert_eq!(got["name"], "renamed");
    let list: Vec<Value> = s
        .http
        .get(s.url("/api/projects"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    // Bad size → 422; empty name → 422.
    let r = s
        .http
        .patch(s.url(&format!("/api/projects/{}", p.id)))
        .bearer_auth(&token)
        .json(&json!({"defaultVmSize": "huge"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 422);
    let r = s
        .http
        .post(s.url("/api/projects"))
        .bearer_auth(&token)
        .json(&json!({"name": " ", "repositoryUrl": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 422);
    // A running task blocks deletion; then it goes.
    let t = s.task(&token, &p, true).await;
    let r = s
        .http
        .delete(s.url(&format!("/api/projects/{}", p.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 409);
    s.http
        .post(s.url(&format!("/api/tasks/{}/cancel", t.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let r = s
        .http
        .delete(s.url(&format!("/api/projects/{}", p.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .http
        .get(s.url(&format!("/api/projects/{}", p.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 404);
}

#[tokio::test]
async fn creating_a_task_creates_its_session_and_first_message() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let p = s.project(&token).await;
    let draft = s.task(&token, &p, false).await;
    assert_eq!(draft.status, TaskStatus::Draft);
    assert_eq!(draft.title, "Fix the bug");
    assert!(
        kiln_core::NodeStore::list_nodes(&*s.store, &Default::default())
            .await
            .unwrap()
            .is_empty(),
        "a draft does not run"
    );
    let session = draft.session_id.expect("a session");
    let page: Value = s
        .http
        .get(s.url(&format!("/api/sessions/{session}/messages")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[0]["content"], "Fix the bug\nin login");
    assert_eq!(msgs[0]["id"], json!(MessageId::for_task_prompt(draft.id)));
    let run_now = s.task(&token, &p, true).await;
    assert_eq!(run_now.status, TaskStatus::Queued);
    assert_eq!(run_now.attempt, 1);
    // The runner asks for a node; once it says hello, the workspace command waits for it.
    let (node, node_token) = s.boot_node(run_now.owner).await;
    let batch = s.poll(node, &node_token, 0).await;
    match &batch.commands[0].command {
        kiln_core::protocol::NodeCommand::CreateWorkspace {
            task_id,
            prompt,
            branch,
            ..
        } => {
            assert_eq!(*task_id, Some(run_now.id));
            assert_eq!(
                prompt.as_ref().unwrap().message_id,
                MessageId::for_task_prompt(run_now.id)
            );
            assert_eq!(
                branch.as_deref(),
                Some(format!("task/{}", run_now.id).as_str())
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(s.get_task(run_now.id).await.status, TaskStatus::Delegated);
}

#[tokio::test]
async fn tasks_edit_only_while_draft_or_ready_and_move_by_run_cancel_rerun() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let p = s.project(&token).await;
    let t = s.task(&token, &p, false).await;
    let patch = |body: Value| {
        s.http
            .patch(s.url(&format!("/api/tasks/{}", t.id)))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let r = patch(json!({"description": "New text", "status": "ready", "vmSize": "medium"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let edited: Value = r.json().await.unwrap();
    assert_eq!(edited["status"], "ready");
    assert_eq!(edited["vmSizeOverride"], "medium");
    // The prompt message follows the description.
    let msgs = s
        .store
        .list_messages(
            t.session_id.unwrap(),
            kiln_core::MessagePage::Latest { limit: 10 },
        )
        .await
        .unwrap();
    assert_eq!(msgs[0].message.content, "New text");
    let r = patch(json!({"status": "completed"})).await.unwrap();
    assert_eq!(error_code(r).await.0, 422);
    let post = |verb: &str| {
        s.http
            .post(s.url(&format!("/api/tasks/{}/{verb}", t.id)))
            .bearer_auth(&token)
            .send()
    };
    let r = post("rerun").await.unwrap();
    assert_eq!(error_code(r).await.1["error"], "invalid_transition");
    let r = post("run").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.get_task(t.id).await.status, TaskStatus::Queued);
    let r = patch(json!({"title": "too late"})).await.unwrap();
    assert_eq!(error_code(r).await.0, 409);
    let r = post("cancel").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.get_task(t.id).await.status, TaskStatus::Cancelled);
    let r = post("rerun").await.unwrap();
    assert_eq!(r.status(), 200);
    let again = s.get_task(t.id).await;
    assert_eq!((again.status, again.attempt), (TaskStatus::Queued, 2));
    // Status filter.
    let other = s.task(&token, &p, false).await;
    let list: Vec<Value> = s
        .http
        .get(s.url(&format!("/api/projects/{}/tasks?status=draft,ready", p.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], json!(other.id));
    let r = s
        .http
        .get(s.url(&format!("/api/projects/{}/tasks?status=bogus", p.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 400);
}

#[tokio::test]
async fn sessions_list_newest_first_and_page_messages_by_cursor() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let p = s.project(&token).await;
    let a = s.task(&token, &p, false).await;
    let b = s.task(&token, &p, false).await;
    let list: Vec<Value> = s
        .http
        .get(s.url(&format!("/api/projects/{}/sessions", p.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], json!(b.session_id.unwrap()), "newest first");
    let filtered: Vec<Value> = s
        .http
        .get(s.url(&format!("/api/projects/{}/sessions?taskId={}", p.id, a.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["taskId"], json!(a.id));
    // 30 more messages, then page through them.
    let session = a.session_id.unwrap();
    let now = s.state.clock.now();
    let msgs: Vec<_> = (0..30)
        .map(|i| kiln_core::ChatMessage {
            id: MessageId::new(),
            session_id: session,
            role: kiln_core::Role::Assistant,
            content: format!("m{i}"),
            tool: None,
            seq: Some(i),
            created_at: now,
        })
        .collect();
    s.store.insert_messages(&msgs, now).await.unwrap();
    let get = |q: &str| {
        s.http
            .get(s.url(&format!("/api/sessions/{session}/messages{q}")))
            .bearer_auth(&token)
            .send()
    };
    let latest: Value = get("?limit=10").await.unwrap().json().await.unwrap();
    let cursors = |v: &Value| {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["cursor"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(cursors(&latest), (22..=31).collect::<Vec<_>>());
    assert_eq!(latest["hasMore"], true);
    let before: Value = get("?before=22&limit=25")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cursors(&before), (1..=21).collect::<Vec<_>>());
    assert_eq!(before["hasMore"], false);
    let after: Value = get("?after=29&limit=5")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cursors(&after), vec![30, 31]);
    assert_eq!(after["hasMore"], false);
    let after: Value = get("?after=1&limit=5").await.unwrap().json().await.unwrap();
    assert_eq!(after["hasMore"], true);
    assert_eq!(
        error_code(get("?before=2&after=1").await.unwrap()).await.0,
        400
    );
    assert_eq!(error_code(get("?limit=0").await.unwrap()).await.0, 400);
    assert_eq!(error_code(get("?limit=x").await.unwrap()).await.0, 400);
}

#[tokio::test]
async fn a_follow_up_prompt_reaches_the_node_of_an_active_session() {
    let s = TestServer::start().await;
    let (user, token) = s.user("ann").await;
    let p = s.project(&token).await;
    let t = s.task(&token, &p, true).await;
    let session = t.session_id.unwrap();
    let prompt = |text: &str| {
        s.http
            .post(s.url(&format!("/api/sessions/{session}/prompt")))
            .bearer_auth(&token)
            .json(&json!({"text": text}))
            .send()
    };
    // No agent yet.
    assert_eq!(error_code(prompt("more").await.unwrap()).await.0, 409);
    let (node, _) = s.node(user.id).await;
    let (ws, _) = s.workspace(&node, &t).await;
    s.attach(&t, &ws).await;
    assert_eq!(error_code(prompt("  ").await.unwrap()).await.0, 422);
    let r = prompt("Also add a test").await.unwrap();
    assert_eq!(r.status(), 202);
    let msg: Value = r.json().await.unwrap();
    let pending = common::wait_for(|| async {
        Some(s.state.commands.pending(node.id)).filter(|p| !p.is_empty())
    })
    .await;
    assert_eq!(pending.len(), 1);
    match &pending[0].command {
        kiln_core::protocol::NodeCommand::Prompt {
            workspace_id,
            prompt,
        } => {
            assert_eq!(*workspace_id, ws.id);
            assert_eq!(prompt.text, "Also add a test");
            assert_eq!(json!(prompt.message_id), msg["id"]);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn another_users_objects_are_not_found_everywhere() {
    let s = TestServer::start().await;
    let (ann, ann_token) = s.user("ann").await;
    let (_, bob_token) = s.user("bob").await;
    let p = s.project(&ann_token).await;
    let t = s.task(&ann_token, &p, true).await;
    let (node, _) = s.node(ann.id).await;
    let (ws, _) = s.workspace(&node, &t).await;
    let session = t.session_id.unwrap();
    let cases: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            "GET".parse().unwrap(),
            format!("/api/projects/{}", p.id),
            None,
        ),
        (
            "PATCH".parse().unwrap(),
            format!("/api/projects/{}", p.id),
            Some(json!({"name": "x"})),
        ),
        (
            "DELETE".parse().unwrap(),
            format!("/api/projects/{}", p.id),
            None,
        ),
        (
            "GET".parse().unwrap(),
            format!("/api/projects/{}/tasks", p.id),
            None,
        ),
        (
            "POST".parse().unwrap(),
            format!("/api/projects/{}/tasks", p.id),
            Some(json!({"description": "x"})),
        ),
        (
            "GET".parse().unwrap(),
            format!("/api/projects/{}/sessions", p.id),
            None,
        ),
        (
            "GET".parse().unwrap(),
            format!("/api/projects/{}/ws", p.id),
            None,
        ),
        ("GET".parse().unwrap(), format!("/api/tasks/{}", t.id), None),
        (
            "PATCH".parse().unwrap(),
            format!("/api/tasks/{}", t.id),
            Some(json!({"title": "x"})),
        ),
        (
            "DELETE".parse().unwrap(),
            format!("/api/tasks/{}", t.id),
            None,
        ),
        (
            "POST".parse().unwrap(),
            format!("/api/tasks/{}/run", t.id),
            None,
        ),
        (
            "POST".parse().unwrap(),
            format!("/api/tasks/{}/cancel", t.id),
            None,
        ),
        (
            "POST".parse().unwrap(),
            format!("/api/tasks/{}/rerun", t.id),
            None,
        ),
        (
            "GET".parse().unwrap(),
            format!("/api/sessions/{session}"),
            None,
        ),
        (
            "GET".parse().unwrap(),
            format!("/api/sessions/{session}/messages"),
            None,
        ),
        (
            "POST".parse().unwrap(),
            format!("/api/sessions/{session}/prompt"),
            Some(json!({"text": "x"})),
        ),
        (
            "GET".parse().unwrap(),
            format!("/api/nodes/{}", node.id),
            None,
        ),
        (
            "GET".parse().unwrap(),
            format!("/api/workspaces/{}", ws.id),
            None,
        ),
    ];
    for (method, path, body) in cases {
        let mut req = s
            .http
            .request(method.clone(), s.url(&path))
            .bearer_auth(&bob_token);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let r = req.send().await.unwrap();
        let (status, body) = error_code(r).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        // And without credentials: 401.
        let req = s.http.request(method.clone(), s.url(&path));
        let (status, _) = error_code(req.send().await.unwrap()).await;
        assert_eq!(status, 401, "{method} {path} without a token");
    }
    // Lists hold only one's own.
    for path in ["/api/projects", "/api/nodes", "/api/workspaces"] {
        let list: Vec<Value> = s
            .http
            .get(s.url(path))
            .bearer_auth(&bob_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(list.is_empty(), "{path}: {list:?}");
    }
    // Nothing of Ann's moved.
    assert_eq!(s.get_task(t.id).await.status, TaskStatus::Queued);
}

#[tokio::test]
async fn nodes_list_with_state_and_warm_until() {
    let s = TestServer::start().await;
    let (ann, token) = s.user("ann").await;
    let (node, _) = s.node(ann.id).await;
    let now = s.state.clock.now();
    let warm_until = now + chrono::Duration::minutes(30);
    kiln_core::NodeStore::release_node(&*s.store, node.id, warm_until, now)
        .await
        .unwrap();
    let list: Vec<Value> = s
        .http
        .get(s.url("/api/nodes?state=warm"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "warm");
    assert!(list[0]["warmUntil"].is_string());
    let list: Vec<Value> = s
        .http
        .get(s.url("/api/nodes?state=active"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.is_empty());
}

#[tokio::test]
async fn errors_are_json_with_precise_statuses() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let post = |body: &'static str, ct: Option<&'static str>| {
        let mut r = s
            .http
            .post(s.url("/api/projects"))
            .bearer_auth(&token)
            .body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r.send()
    };
    let (st, b) = error_code(post("{nope", Some("application/json")).await.unwrap()).await;
    assert_eq!((st, b["error"].as_str().unwrap()), (400, "invalid_json"));
    let (st, _) = error_code(post("{}", None).await.unwrap()).await;
    assert_eq!(st, 415);
    let (st, b) = error_code(
        post("{\"name\": 1}", Some("application/json"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((st, b["error"].as_str().unwrap()), (422, "invalid_body"));
    let big = Box::leak("x".repeat(2 * 1024 * 1024).into_boxed_str());
    let (st, _) = error_code(post(big, Some("application/json")).await.unwrap()).await;
    assert_eq!(st, 413);
    let (st, _) = error_code(s.http.get(s.url("/api/nowhere")).send().await.unwrap()).await;
    assert_eq!(st, 404);
    let (st, _) = error_code(s.http.put(s.url("/api/projects")).send().await.unwrap()).await;
    assert_eq!(st, 405);
    let (st, _) = error_code(
        s.http
            .get(s.url("/api/projects"))
            .bearer_auth("kiln_forged")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn a_login_link_works_once_and_sets_a_session_cookie() {
    let s = TestServer::start().await;
    let (ann, api_token) = s.user("ann").await;
    let login = s.login_token(ann.id).await;
    // A login token is not an API token.
    let r = s
        .http
        .get(s.url("/api/me"))
        .bearer_auth(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 401);
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .get(s.url(&format!("/login?token={login}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let me: Value = s
        .http
        .get(s.url("/api/me"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "ann");
    let r = no_redirect
        .get(s.url(&format!("/login?token={login}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 401, "one time only");
    // Logout ends the cookie session, not the API token.
    let r = s
        .http
        .post(s.url("/api/logout"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .http
        .get(s.url("/api/me"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 401);
    // New API tokens work; their secret is shown once.
    let r = s
        .http
        .post(s.url("/api/tokens"))
        .bearer_auth(&api_token)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let new: Value = r.json().await.unwrap();
    let r = s
        .http
        .get(s.url("/api/me"))
        .bearer_auth(new["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn expired_api_tokens_are_refused() {
    let s = TestServer::start().await;
    let (ann, _) = s.user("ann").await;
    let past = s.state.clock.now() - chrono::Duration::seconds(1);
    let (_, secret) = kiln_server::auth::issue_token(&s.state, ann.id, "old", Some(past))
        .await
        .unwrap();
    let r = s
        .http
        .get(s.url("/api/me"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 401);
}

#[tokio::test]
async fn tokens_are_listed_without_secrets_and_revoked_at_once() {
    let s = TestServer::start().await;
    let (_, ann) = s.user("ann").await;
    let (_, bob) = s.user("bob").await;
    let r = s
        .http
        .post(s.url("/api/tokens"))
        .bearer_auth(&ann)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ci: Value = r.json().await.unwrap();
    let ci_secret = ci["token"].as_str().unwrap().to_owned();
    let ci_id = ci["id"].as_str().unwrap().to_owned();
    let revoke = |token: &str, id: &str| {
        s.http
            .delete(s.url(&format!("/api/tokens/{id}")))
            .bearer_auth(token)
            .send()
    };

    let list = |token: String| {
        let s = &s;
        async move {
            let r = s
                .http
                .get(s.url("/api/tokens"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let text = list(ann.clone()).await;
    assert!(
        !text.contains(&ci_secret) && !text.contains(&ann),
        "no secret in a listing"
    );
    assert!(!text.contains("tokenHash"), "no hash in a listing");
    let tokens: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_eq!(tokens[0]["id"], ci_id.as_str(), "newest first");
    assert_eq!(tokens[0]["name"], "ci");
    assert_eq!(tokens[0]["current"], false);
    assert_eq!(tokens[1]["current"], true, "the token of this request");
    assert!(
        !list(bob.clone()).await.contains(&ci_id),
        "bob sees his own"
    );

    // Bob cannot revoke ann's token; it still works.
    let r = revoke(&bob, &ci_id).await.unwrap();
    assert_eq!(error_code(r).await.0, 404);
    let me = |token: String| {
        let s = &s;
        async move {
            s.http
                .get(s.url("/api/me"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(me(ci_secret.clone()).await, 200);

    // Ann revokes it: refused at once, and gone from the list.
    let r = revoke(&ann, &ci_id).await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(me(ci_secret).await, 401);
    assert!(!list(ann.clone()).await.contains(&ci_id));
    let r = revoke(&ann, &ci_id).await.unwrap();
    assert_eq!(error_code(r).await.0, 404);
    let r = revoke(&ann, "not-a-uuid").await.unwrap();
    let (status, body) = error_code(r).await;
    assert_eq!(
        status, 404,
        "a malformed id is not found, like other ids: {body}"
    );
}
