//! Defects a new user met walking the HTTP API, each pinned by the answer they should get.

mod common;

use common::{TestServer, error_code};
use serde_json::{Value, json};

/// `expiresInSecs: 0` issued a token that was already expired (201, then 401 on first use);
/// it is refused with the range instead, and the smallest lifetime still works.
#[tokio::test]
async fn a_token_that_would_expire_at_once_is_refused() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let r = s
        .http
        .post(s.url("/api/tokens"))
        .bearer_auth(&token)
        .json(&json!({"name": "ci", "expiresInSecs": 0}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_code(r).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "invalid_body");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("expiresInSecs must be from 1"),
        "{message}"
    );
    let listed: Vec<Value> = s
        .http
        .get(s.url("/api/tokens"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed.iter().all(|t| t["name"] != "ci"),
        "nothing was issued: {listed:?}"
    );

    let r = s
        .http
        .post(s.url("/api/tokens"))
        .bearer_auth(&token)
        .json(&json!({"name": "ci", "expiresInSecs": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let issued: Value = r.json().await.unwrap();
    let me = s
        .http
        .get(s.url("/api/me"))
        .bearer_auth(issued["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "a one-minute token works at once");
}
