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

/// A browser opening a used login link got the raw JSON 401 as a page; it is now sent to the
/// sign-in page (which says why). Scripts still get the JSON 401.
#[tokio::test]
async fn a_browser_opening_a_used_login_link_is_sent_to_the_sign_in_page() {
    let s = TestServer::start().await;
    let (user, _) = s.user("ann").await;
    let link = s.login_token(user.id).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let open = |accept: &'static str| {
        http.get(s.url(&format!("/login?token={link}")))
            .header("accept", accept)
            .send()
    };
    let browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let first = open(browser_accept).await.unwrap();
    assert_eq!(first.status(), 303);
    assert_eq!(first.headers()["location"], "/", "the first use signs in");

    let again = open(browser_accept).await.unwrap();
    assert_eq!(again.status(), 303, "a browser is not shown JSON");
    assert_eq!(again.headers()["location"], "/?login=invalid");
    assert!(again.headers().get("set-cookie").is_none());
    let page = http
        .get(s.url("/?login=invalid"))
        .header("accept", browser_accept)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the redirect lands on the web UI");

    let (status, body) = error_code(open("application/json").await.unwrap()).await;
    assert_eq!(status, 401, "scripts keep the JSON error");
    assert_eq!(body["error"], "unauthorized");
}

/// Deleting a draft left its session `pending` for ever, with no task to run it (the web UI
/// then offered "Close chat" on it, which answered 409). The session is closed instead, and
/// its conversation can still be read.
#[tokio::test]
async fn deleting_a_draft_closes_its_session_and_keeps_its_conversation() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let project = s.project(&token).await;
    let draft = s.task(&token, &project, false).await;
    let session_id = draft.session_id.expect("a task has a session");
    let r = s
        .http
        .delete(s.url(&format!("/api/tasks/{}", draft.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let session: Value = s
        .http
        .get(s.url(&format!("/api/sessions/{session_id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["status"], "closed", "{session}");
    let page: Value = s
        .http
        .get(s.url(&format!("/api/sessions/{session_id}/messages")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "the prompt is still there: {page}");
    assert_eq!(messages[0]["content"], draft.description);
    let r = s
        .http
        .post(s.url(&format!("/api/sessions/{session_id}/prompt")))
        .bearer_auth(&token)
        .json(&json!({"text": "anyone there?"}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_code(r).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
}
