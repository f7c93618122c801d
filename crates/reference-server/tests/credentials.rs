//! Stored credentials over real HTTP: the project git token and the Hetzner token endpoints
//! (set, hint, clear; never the token), the project's provider field, and another user's
//! project being a 404.

mod common;

use common::{TestServer, error_code};
use kiln_core::{SecretKey, SecretKind, SecretStore, SessionStore};
use serde_json::{Value, json};

const GIT_TOKEN: &str = "ghp_credentialTestToken0123456789abcd";

#[tokio::test]
async fn a_project_git_token_is_stored_sealed_and_only_its_hint_comes_back() {
    let s = TestServer::start().await;
    let (ann, token) = s.user("ann").await;
    let (_, bob) = s.user("bob").await;
    let p = s.project(&token).await;
    let path = s.url(&format!("/api/projects/{}/git-token", p.id));
    let mut bodies = Vec::new();

    let r = s.http.get(&path).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let status: Value = r.json().await.unwrap();
    assert_eq!(status, json!({"set": false, "hint": null, "setAt": null}));

    let r = s
        .http
        .put(&path)
        .bearer_auth(&token)
        .json(&json!({"token": GIT_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    bodies.push(text.clone());
    let set: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (set["set"].clone(), set["hint"].clone()),
        (json!(true), json!("…abcd"))
    );

    // Stored sealed: the bytes are not the token, and the vault opens them to it.
    let stored = s
        .store
        .get_secret(&SecretKey::project(ann.id, p.id, SecretKind::GitToken))
        .await
        .unwrap()
        .expect("stored");
    assert!(
        !stored
            .sealed
            .windows(GIT_TOKEN.len())
            .any(|w| w == GIT_TOKEN.as_bytes()),
        "sealed, not plain"
    );
    assert_eq!(s.state.credentials.open(&stored).unwrap(), GIT_TOKEN);

    // Another user: 404 on every method, and nothing changes.
    for method in ["GET", "PUT", "DELETE"] {
        let mut req = s
            .http
            .request(method.parse().unwrap(), &path)
            .bearer_auth(&bob);
        if method == "PUT" {
            req = req.json(&json!({"token": "bobs-token-0123456789"}));
        }
        let (status, err) = error_code(req.send().await.unwrap()).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (404, Some("not_found")),
            "{method}"
        );
    }
    // Malformed bodies are precise 422s.
    for body in [
        json!({"token": ""}),
        json!({"token": " \n "}),
        json!({"token": "a", "x": 1}),
    ] {
        let r = s
            .http
            .put(&path)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, err) = error_code(r).await;
        assert_eq!(status, 422, "{body}: {err}");
    }

    let r = s.http.get(&path).bearer_auth(&token).send().await.unwrap();
    let text = r.text().await.unwrap();
    bodies.push(text.clone());
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["hint"], "…abcd");
    assert_eq!(shown["setAt"], set["setAt"]);
    for path in [
        "/api/projects".to_owned(),
        format!("/api/projects/{}", p.id),
    ] {
        let r = s
            .http
            .get(s.url(&path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        bodies.push(r.text().await.unwrap());
    }
    for body in &bodies {
        assert!(
            !body.contains(GIT_TOKEN),
            "a response carried the token: {body}"
        );
    }

    let r = s
        .http
        .delete(&path)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .http
        .delete(&path)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "clearing twice is fine");
    let status: Value = s
        .http
        .get(&path)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["set"], false);
}

#[tokio::test]
async fn a_hetzner_token_that_cannot_be_checked_is_not_stored() {
    let s = TestServer::start().await;
    let (ann, token) = s.user("ann").await;
    let path = s.url("/api/account/hetzner-token");
    // The test server's Hetzner API URL has nothing listening: the check cannot be made.
    let r = s
        .http
        .put(&path)
        .bearer_auth(&token)
        .json(&json!({"token": "hcloud-unverifiable-token-0123"}))
        .send()
        .await
        .unwrap();
    let (status, err) = error_code(r).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (502, Some("hetzner_unavailable")),
        "{err}"
    );
    assert!(
        s.store
            .get_secret(&SecretKey::user(ann.id, SecretKind::HetznerToken))
            .await
            .unwrap()
            .is_none()
    );
    let r = s.http.get(&path).send().await.unwrap();
    assert_eq!(r.status(), 401, "needs a user");
}

#[tokio::test]
async fn a_project_provider_must_be_one_the_server_enables() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let p = s.project(&token).await;
    assert_eq!(p.provider, "memory", "the server's default");
    for (method, path, body) in [
        (
            "POST",
            "/api/projects".to_owned(),
            json!({"name": "x", "repositoryUrl": "/tmp/x", "provider": "hetzner"}),
        ),
        (
            "PATCH",
            format!("/api/projects/{}", p.id),
            json!({"provider": "aws"}),
        ),
    ] {
        let r = s
            .http
            .request(method.parse().unwrap(), s.url(&path))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, err) = error_code(r).await;
        assert_eq!(status, 422, "{method} {path}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains("not enabled"),
            "{err}"
        );
    }
    let r = s
        .http
        .patch(s.url(&format!("/api/projects/{}", p.id)))
        .bearer_auth(&token)
        .json(&json!({"provider": "memory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A project whose provider this server does not enable (made under another
    // configuration) runs nothing: Run Now is refused and nothing is stored.
    let stale = kiln_core::Project {
        id: kiln_core::ProjectId::new(),
        provider: "hetzner".into(),
        ..p.clone()
    };
    s.store.create_project(&stale).await.unwrap();
    let r = s
        .http
        .post(s.url(&format!("/api/projects/{}/tasks", stale.id)))
        .bearer_auth(&token)
        .json(&json!({"description": "go", "runNow": true}))
        .send()
        .await
        .unwrap();
    let (status, err) = error_code(r).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (409, Some("provider_disabled")),
        "{err}"
    );
    let tasks: Value = s
        .http
        .get(s.url(&format!("/api/projects/{}/tasks", stale.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tasks, json!([]));
}

#[tokio::test]
async fn the_node_binary_is_refused_for_another_arch_and_missing_binaries_are_a_503() {
    let s = TestServer::start().await;
    let (ann, _) = s.user("ann").await;
    let (node, node_token) = s.node(ann.id).await;
    let url = |query: &str| s.url(&format!("/api/nodes/{}/binary{query}", node.id));
    let r = s
        .http
        .get(url("?arch=sparc64"))
        .bearer_auth(&node_token)
        .send()
        .await
        .unwrap();
    let (status, err) = error_code(r).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (422, Some("unsupported_arch")),
        "{err}"
    );
    // The test binary has no kiln-node next to it (and none is configured).
    let r = s
        .http
        .get(url(&format!("?arch={}", std::env::consts::ARCH)))
        .bearer_auth(&node_token)
        .send()
        .await
        .unwrap();
    let (status, err) = error_code(r).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (503, Some("node_binary_missing")),
        "{err}"
    );
}
